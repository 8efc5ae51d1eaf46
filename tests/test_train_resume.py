"""Training killed mid-epoch and resumed from its last checkpoint ends exactly where an uninterrupted run
ends (CPU, fixed seed): same weights, same EMA, same validation loss."""
from __future__ import annotations

import pytest
import torch


class Killed(Exception):
    pass


def _train(tmp_path, name, crystals, resume=False, kill_at=None):
    import lightning as L

    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig
    from dao.train import TrainConfig, fit

    torch.manual_seed(0)
    model = DAOGenerator(GeneratorConfig(model=CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8),
                                         max_atoms=12))
    cfg = TrainConfig(batch_size=2, lr=1e-3, warmup_steps=2, max_epochs=3, max_steps=9, ckpt_every_n_steps=1,
                      seed=3, max_atoms=12, ema_decay=0.9)
    callbacks = []
    if kill_at is not None:
        class Kill(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == kill_at:
                    raise Killed()
        callbacks.append(Kill())
    fit(model, crystals, crystals[:2], cfg, tmp_path / name, resume=resume, device="cpu", devices=1, progress=False,
        callbacks=callbacks)
    return torch.load(tmp_path / name / "model.pt", weights_only=True)


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [5, 3])  # inside the second epoch; right after the first epoch ended
def test_resume_mid_epoch_is_exact(tmp_path, tiny_csv, kill_at):
    from dao.data.readers import read_csv

    crystals, _ = read_csv(tiny_csv, use_cache=False)
    assert len(crystals) == 5  # 3 batches of ≤ 2 per epoch: step 5 is inside the second epoch
    full = _train(tmp_path, "full", crystals)
    with pytest.raises(Killed):
        _train(tmp_path, "killed", crystals, kill_at=kill_at)
    resumed = _train(tmp_path, "killed", crystals, resume=True)
    assert resumed["meta"]["global_step"] == full["meta"]["global_step"] == 9
    assert resumed["meta"]["started_at_step"] == kill_at
    for k, v in full["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=0, atol=1e-7, msg=k)
    assert resumed["meta"]["val"] == pytest.approx(full["meta"]["val"], rel=1e-6)
