"""The official training recipe (configs/official, docs/official.md): the configs parse to the official
values, the per-epoch schedule equals torch's LinearLR → CosineAnnealingWarmRestarts, a tiny CPU run clips
by value and warms up per epoch, and the official dataset relaxation (torch L-BFGS, no step cap)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dao.errors import ConfigError
from dao.nn.crysformer import OFFICIAL_ARCHITECTURE
from dao.train_config import TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = ROOT / "configs" / "official"

#: the official values (GLAD-RUC/DAO run_pretrain.sh, finetune_csp.sh, conf/optim, conf/train), per config:
#: lr, epochs, effective batch per device-step, weight decay
EXPECTED = {"dao_g_stage1.yaml": (3e-4, 800, 3 * 1024, 0.0), "dao_g_stage2.yaml": (1e-4, 500, 3 * 1024, 0.0),
            "dao_p.yaml": (2e-4, 800, 2 * 1024, 0.0), "finetune_csp.yaml": (2e-5, 1000, 400, 1e-5)}


def test_official_configs_hold_the_official_recipe():
    assert sorted(p.name for p in OFFICIAL.glob("*.yaml")) == sorted(EXPECTED)
    for name, (lr, epochs, batch, wd) in EXPECTED.items():
        cfg = load_config(OFFICIAL / name)
        t = TrainConfig.from_dict(cfg["train"])
        assert (t.lr, t.max_epochs, t.batch_size * t.accumulate_grad_batches, t.weight_decay) == (lr, epochs, batch, wd)
        assert (t.schedule, t.warmup_epochs, t.warmup_start_factor, t.lr_min) == ("epochs", 50, 0.001, 1e-6)
        assert t.cosine_epochs == epochs  # T_0 = the number of epochs in the official scripts
        assert (t.grad_clip, t.grad_clip_algorithm, t.precision, t.ema_decay) == (0.5, "value", "32-true", 0.0)
        if "model" in cfg:  # from-scratch stages carry the published size; the others take it from --init
            from dao.models.energy import EnergyConfig

            m = EnergyConfig.from_dict({k: cfg[k] for k in ("model", "diffusion", "energy") if k in cfg}).model
            assert (m.hidden, m.layers, m.heads, m.num_freqs, m.time_dim) == (384, 12, 8, 128, 256)
            assert {k: getattr(m, k) for k in OFFICIAL_ARCHITECTURE} == OFFICIAL_ARCHITECTURE


def test_defaults_keep_todays_recipe_and_bad_values_are_named():
    t = TrainConfig()
    assert (t.schedule, t.grad_clip_algorithm, t.accumulate_grad_batches, t.precision) == ("steps", "norm", 1, "32-true")
    for key, value in [("grad_clip_algorithm", "l2"), ("schedule", "cosine"), ("warmup_start_factor", 0.0),
                       ("accumulate_grad_batches", 0), ("precision", "fp32"), ("warmup_epochs", -1)]:
        with pytest.raises(ConfigError, match=f"train.{key}"):
            TrainConfig.from_dict({key: value})
    with pytest.raises(ConfigError, match="train.cosine_epochs"):
        TrainConfig.from_dict({"schedule": "epochs", "max_epochs": -1})


def _torch_official_lrs(lr: float, warmup: int, start: float, period: int, lr_min: float, epochs: int) -> list[float]:
    """The learning rate of each epoch under torch's own schedulers, combined as the official code does."""
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=lr)
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=start, end_factor=1.0, total_iters=warmup)
    cos = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=period, T_mult=1, eta_min=lr_min)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[warmup])
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("name", ["dao_g_stage1.yaml", "finetune_csp.yaml"])
def test_epoch_schedule_equals_torchs_warmup_then_cosine(name):
    from dao.train import epoch_lr_lambda

    t = TrainConfig.from_dict(load_config(OFFICIAL / name)["train"])
    ours = [t.lr * epoch_lr_lambda(t)(e) for e in range(t.max_epochs)]
    ref = _torch_official_lrs(t.lr, t.warmup_epochs, t.warmup_start_factor, t.cosine_epochs, t.lr_min, t.max_epochs)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-15)
    assert ours[0] == pytest.approx(t.lr * 1e-3) and ours[50] == pytest.approx(t.lr)
    # short restart period: warm restarts, as CosineAnnealingWarmRestarts does
    short = TrainConfig(lr=1e-3, lr_min=1e-5, schedule="epochs", warmup_epochs=3, warmup_start_factor=0.1,
                        cosine_epochs=4, max_epochs=15)
    np.testing.assert_allclose([short.lr * epoch_lr_lambda(short)(e) for e in range(15)],
                               _torch_official_lrs(1e-3, 3, 0.1, 4, 1e-5, 15), rtol=1e-9)


def _crystals():
    """Small crystals built directly (no symmetry search): CsCl, cubic SrTiO3, rutile TiO2, a NaCl pair."""
    from dao.crystal import Crystal

    return [Crystal([55, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], 4.12 * np.eye(3)),
            Crystal([38, 22, 8, 8, 8], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
                    3.905 * np.eye(3)),
            Crystal([22, 22, 8, 8, 8, 8], [[0, 0, 0], [0.5, 0.5, 0.5], [0.305, 0.305, 0], [0.695, 0.695, 0],
                                           [0.805, 0.195, 0.5], [0.195, 0.805, 0.5]], np.diag([4.59, 4.59, 2.96])),
            Crystal([11, 17], [[0, 0, 0], [0.5, 0.5, 0.5]], 2.82 * (np.ones((3, 3)) - np.eye(3)))]


class _Probe:
    """Records the learning rate at each batch and the largest |gradient| and gradient norm after each
    optimiser step (the clipped gradients stay in .grad until the next step zeroes them)."""

    def __init__(self) -> None:
        self.lrs: list[tuple[int, float]] = []
        self.grads: list[tuple[float, float]] = []

    def make(self):
        from lightning.pytorch.callbacks import Callback

        probe = self

        class Hook(Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                probe.lrs.append((trainer.current_epoch, trainer.optimizers[0].param_groups[0]["lr"]))

            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                g = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])
                probe.grads.append((float(g.abs().max()), float(g.norm())))

        return Hook()


def test_tiny_cpu_run_clips_by_value_and_warms_up_per_epoch(tmp_path, tiny_generator):
    from dao.train import fit

    crystals = _crystals() + _crystals()[:1]
    clip = 1e-4
    cfg = TrainConfig(batch_size=2, lr=1e-3, lr_min=1e-5, schedule="epochs", warmup_epochs=2, warmup_start_factor=0.1,
                      max_epochs=2, grad_clip=clip, grad_clip_algorithm="value", ema_decay=0.0, max_atoms=12,
                      ckpt_every_n_steps=100)
    probe = _Probe()
    fit(tiny_generator.train(), crystals, [], cfg, tmp_path / "run", device="cpu", devices=1, progress=False,
        callbacks=[probe.make()])
    by_epoch = {e: [lr for ep, lr in probe.lrs if ep == e] for e in (0, 1)}
    assert by_epoch == {0: [pytest.approx(1e-4)] * 3, 1: [pytest.approx(1e-3 * (0.1 + 0.9 / 2))] * 3}
    for gmax, gnorm in probe.grads:  # value clipping: every entry in [-clip, clip], the norm far above clip
        assert gmax == pytest.approx(clip, rel=1e-6) and gnorm > 10 * clip


class _Quadratic(torch.nn.Module):
    """A stand-in energy model: E = Σ (L − 6 Å·I)², minimised by a cubic 6 Å cell, far from any start."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def energy(self, batch, t):
        return self.scale * ((batch.lattice - 6.0 * torch.eye(3, dtype=batch.lattice.dtype)) ** 2).sum((1, 2))

    def energy_per_atom(self, batch):
        return self.energy(batch, None)


def test_official_relaxation_takes_uncapped_lbfgs_steps():
    from dao.relaxation import relax_official

    cscl = _crystals()[0]  # cubic 4.12 Å
    model = _Quadratic()
    out, before, after = relax_official(model, [cscl], lr=1.0, max_iter=5)
    assert before[0] == pytest.approx(3 * 1.88**2)
    # the minimum, 1.88 Å away per lattice vector, reached in 5 iterations: no 0.2 Å cap (the capped mode's)
    np.testing.assert_allclose(np.sort(np.linalg.norm(out[0].lattice, axis=1)), [6.0, 6.0, 6.0], atol=1e-4)
    assert after[0] < 1e-6 and model.scale.requires_grad  # the model's own gradients are left as they were


def test_official_relaxation_lowers_a_tiny_dao_p_energy(tiny_energy_model):
    from dao.relaxation import relax_official

    crystals = _crystals()
    out, before, after = relax_official(tiny_energy_model, crystals)
    assert all(c is not None for c in out) and np.isfinite(after).all()
    assert after.mean() < before.mean()  # the batch-mean objective goes down
    assert any(not np.allclose(c.lattice, o.lattice) for c, o in zip(crystals, out))


def test_data_relax_official_mode_relabels_the_window(tmp_path, tiny_energy_checkpoint):
    from dao.cli import main
    from dao.data.crysdb import BuildConfig, build_crysdb, iter_crysdb
    from tests.conftest import write_csv

    db, out = tmp_path / "db", tmp_path / "relaxed"
    structures = {"SrTiO3": _crystals()[1].to_structure(), "TiO2": _crystals()[2].to_structure()}
    build_crysdb([write_csv(tmp_path / "s.csv", structures, ehull=0.3)], db, [],
                 BuildConfig(partitions=1))
    main(["data", "relax", "--model", str(tiny_energy_checkpoint), "--in", str(db), "--out", str(out),
          "--mode", "official", "--device", "cpu", "--no-progress"])
    rows = list(iter_crysdb(out))
    assert len(rows) == 2 and all("official L-BFGS, 5 iterations" in r["relaxed_by"] for r in rows)
    assert all(r["e_above_hull_original"] == 0.3 and r["e_above_hull"] != 0.3 for r in rows)
