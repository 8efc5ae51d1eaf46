"""DAO-P: the exponential energy loss learns the intermediate energy; masking; standardisation;
symmetries; checkpoint round trip; `dao train energy`."""
from __future__ import annotations

import json
import math

import pytest
import torch

from dao.crystal import Crystal, CrystalBatch
from dao.errors import CheckpointError, DAOError
from dao.models.energy import DAOEnergyModel, exponential_energy_loss, label_statistics
from tests.conftest import small_structures, tiny_energy_config


def labelled_crystals(labels):
    return [Crystal.from_structure(s, meta={"e_above_hull": e}) for s, e in zip(small_structures().values(), labels)]


def test_exponential_loss_learns_the_intermediate_energy():
    """1-D toy with a closed-form intermediate energy. x_0 ~ N(0, 1), x_t = √ᾱ x_0 + √(1−ᾱ) ε and
    E(x_0) = a x_0²/2: q(x_0 | x_t) = N(√ᾱ x_t, 1 − ᾱ), so
    −log E[exp(−E(x_0)) | x_t] = ½ log(1 + a v) + a m² / (2 (1 + a v)),  m = √ᾱ x_t, v = 1 − ᾱ.
    An MLP f(x_t, ᾱ) trained with DAO-P's loss function must approach it (and not the MSE answer E[E | x_t])."""
    torch.manual_seed(0)
    a = 1.0
    net = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.SiLU(), torch.nn.Linear(64, 64), torch.nn.SiLU(),
                              torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    steps = 3000
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        x0 = torch.randn(1024)
        ab = torch.rand(1024) * 0.9 + 0.05
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn(1024)
        loss = exponential_energy_loss(net(torch.stack([xt, ab], 1)).squeeze(1), a * x0**2 / 2, beta=1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    xt = torch.linspace(-1.5, 1.5, 31)
    for abv in (0.2, 0.5, 0.8):
        ab = torch.full_like(xt, abv)
        m, v = ab.sqrt() * xt, 1 - ab
        exact = 0.5 * torch.log1p(a * v) + a * m**2 / (2 * (1 + a * v))
        mse_answer = a * (m**2 + v) / 2
        with torch.no_grad():
            f = net(torch.stack([xt, ab], 1)).squeeze(1)
        err = (f - exact).abs()
        assert float(err.max()) < 0.08 and float(err.mean()) < 0.03, (abv, float(err.max()), float(err.mean()))
        assert float(err.mean()) < 0.3 * float((mse_answer - exact).abs().mean())


def test_exponential_loss_values_and_masking():
    pred = torch.tensor([0.0, 1.0, 2.0, -1.0], requires_grad=True)
    target = torch.tensor([0.5, math.nan, 2.0, 0.0])
    loss = exponential_energy_loss(pred, target, beta=1.0)
    expected = ((1 - math.exp(-0.5)) ** 2 + 0.0 + (math.e - 1) ** 2) / 3  # NaN entry left out of the mean
    assert abs(loss.item() - expected) < 1e-6
    (grad,) = torch.autograd.grad(loss, pred)
    assert torch.isfinite(grad).all() and float(grad[1]) == 0.0 and float(grad[2]) == 0.0
    masked = exponential_energy_loss(pred, target, mask=torch.tensor([True, True, True, False]))
    assert abs(masked.item() - (1 - math.exp(-0.5)) ** 2 / 2) < 1e-6
    # β scales the label: exp(−β·E)
    assert abs(float(exponential_energy_loss(torch.tensor([1.0]), torch.tensor([0.5]), beta=2.0))) < 1e-12
    none = exponential_energy_loss(pred, torch.full((4,), math.nan))
    assert none.item() == 0.0
    (grad,) = torch.autograd.grad(none, pred)
    assert float(grad.abs().sum()) == 0.0


def test_unlabelled_crystals_do_not_train_the_energy_head():
    model = DAOEnergyModel(tiny_energy_config()).train()
    head = list(model.backbone.energy_head.parameters())
    batch = CrystalBatch.from_crystals(labelled_crystals([math.nan] * 5), energy_key="e_above_hull")
    torch.manual_seed(0)
    losses = model.loss(batch)
    assert losses["loss_energy"].item() == 0.0
    grads = torch.autograd.grad(losses["loss_energy"], head, allow_unused=True, retain_graph=True)
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads)
    grads = torch.autograd.grad(losses["loss"], head, allow_unused=True)  # the total loss neither
    assert all(g is None or float(g.abs().sum()) == 0.0 for g in grads)
    # one labelled crystal is enough to give the head a gradient; labels above max_label (1 eV/atom) don't count
    batch = CrystalBatch.from_crystals(labelled_crystals([math.nan, 0.02, math.nan, 5.0, math.nan]), energy_key="e_above_hull")
    y = model.standardised_labels(batch)
    assert torch.isfinite(y).tolist() == [False, True, False, False, False]
    torch.manual_seed(0)
    grads = torch.autograd.grad(model.loss(batch)["loss_energy"], head)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_energy_loss_is_the_exponential_loss_on_the_noisy_structure():
    model = DAOEnergyModel(tiny_energy_config()).train()
    batch = CrystalBatch.from_crystals(labelled_crystals([0.0, 0.1, math.nan, 0.05, 0.3]), energy_key="e_above_hull")
    torch.manual_seed(7)
    losses = model.loss(batch)
    torch.manual_seed(7)  # replay the same noise
    noisy, t, _ = model.process.training_sample(batch)
    f = model.energy(noisy, t)
    y = (batch.energy - 0.05) / 0.04
    expected = exponential_energy_loss(f, y)
    torch.testing.assert_close(losses["loss_energy"], expected)
    torch.testing.assert_close(losses["loss"], losses["loss_lattice"] + losses["loss_coord"] + expected)
    assert "energy_mae_t0" not in losses  # only computed in eval mode (validation)
    model.eval()
    mae = model.loss(batch)["energy_mae_t0"]
    pred = model.energy_per_atom(batch)
    lab = torch.isfinite(batch.energy)
    torch.testing.assert_close(mae, (pred - batch.energy)[lab].abs().mean())


def test_energy_invariant_to_rotation_and_permutation():
    torch.manual_seed(0)
    model = DAOEnergyModel(tiny_energy_config()).double().eval()
    crystals = labelled_crystals([0.0] * 5)
    batch = CrystalBatch.from_crystals(crystals)
    batch = batch.replace(frac=batch.frac.double(), lattice=batch.lattice.double())
    t = torch.tensor([0.0, 0.3, 0.7, 1.0, 0.01], dtype=torch.float64)
    e = model.energy(batch, t)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3)))
    torch.testing.assert_close(model.energy(batch.replace(lattice=batch.lattice @ q.T), t), e, rtol=1e-9, atol=1e-9)
    perm = torch.cat([torch.randperm(int(n), generator=torch.Generator().manual_seed(int(i))) + int(o)
                      for i, (n, o) in enumerate(zip(batch.num_atoms, torch.cumsum(batch.num_atoms, 0) - batch.num_atoms))])
    permuted = batch.replace(atom_types=batch.atom_types[perm], frac=batch.frac[perm])
    torch.testing.assert_close(model.energy(permuted, t), e, rtol=1e-9, atol=1e-9)


def test_standardisation_from_training_labels_and_checkpoint_round_trip(tmp_path):
    from dao.models.checkpoint import load_energy_model, load_generator, save_model

    labels = [0.0, 0.1, math.nan, 0.05, 2.0]  # NaN and > 1 eV/atom are not labels
    cfg = {"model": {"hidden": 32, "layers": 1, "heads": 2, "num_freqs": 8, "time_dim": 16},
           "diffusion": {"num_steps": 50}, "energy": {"beta": 1.0}}
    model = DAOEnergyModel.from_training_data(cfg, labelled_crystals(labels)).eval()
    e = model.config.energy
    assert (e.mean, e.num_labels) == (pytest.approx(0.05), 3) and e.std == pytest.approx(math.sqrt(2 / 3) * 0.05)
    assert label_statistics([0.2, 0.2]) == (pytest.approx(0.2), 1.0, 2)  # constant labels: std falls back to 1
    batch = CrystalBatch.from_crystals(labelled_crystals(labels))
    with torch.no_grad():
        pred = model.energy_per_atom(batch)
        raw = model.energy(batch, torch.zeros(5))
    torch.testing.assert_close(pred, raw * e.std + e.mean)
    path = tmp_path / "p.pt"
    save_model(path, model, {"note": "test"})
    loaded = load_energy_model(path)
    assert loaded.kind == "energy" and loaded.config.to_dict() == model.config.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(loaded.energy_per_atom(batch), pred)
    with pytest.raises(CheckpointError, match="holds a 'energy' model, expected 'generator'"):
        load_generator(path)
    with pytest.raises(DAOError, match="no training structure carries"):
        DAOEnergyModel.from_training_data(cfg, labelled_crystals([math.nan] * 5))
    with pytest.raises(DAOError, match="unknown energy config key"):
        DAOEnergyModel.from_training_data({**cfg, "energy": {"betta": 1}}, labelled_crystals(labels))


@pytest.mark.slow
def test_train_energy_cli_exports_a_dao_p(tmp_path):
    from dao.cli import main
    from dao.models.checkpoint import load_checkpoint, load_energy_model
    from tests.conftest import write_csv

    structures = small_structures()
    data = write_csv(tmp_path / "train.csv", structures)
    # varied labels (write_csv gives them all 0): rewrite the e_above_hull column
    import csv

    rows = list(csv.DictReader(open(data, newline="")))
    for row, e in zip(rows, ["0.0", "0.12", "", "0.04", "0.3"]):
        row["e_above_hull"] = e
    with open(data, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {hidden: 32, layers: 1, heads: 2, num_freqs: 8, time_dim: 16}\n"
                   "diffusion: {num_steps: 100}\n"
                   "train: {batch_size: 3, max_steps: 2, warmup_steps: 1, max_atoms: 12, seed: 0}\n")
    out = tmp_path / "run"
    main(["train", "energy", "--data", str(data), "--val", str(data), "--config", str(cfg), "--out", str(out),
          "--device", "cpu"])
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt["kind"] == "energy" and ckpt["meta"]["global_step"] == 2
    assert ckpt["config"]["energy"]["num_labels"] == 4
    assert ckpt["config"]["energy"]["mean"] == pytest.approx(0.115)
    val = ckpt["meta"]["val"]
    assert {"val/loss_energy", "val/energy_mae_t0", "val/loss_lattice"} <= set(val) and math.isfinite(val["val/loss"])
    model = load_energy_model(out / "model.pt")
    assert "energy" in model.backbone.cfg.heads_out
    run = json.loads((out / "run.json").read_text())
    assert run["num_train"] == 5


def test_dao_p_pairs_with_any_process():
    """DAO-P is a DAO-G of any registered method plus the energy head: a flow-trained DAO-P trains, guides a
    flow generator (at t = 0 on the endpoint), and is refused by a diffusion generator, whose t it cannot read."""
    from dao.diffusion.flow_matching import FlowConfig
    from dao.diffusion.guidance import energy_guidance
    from dao.models.energy import EnergyConfig, EnergyHeadConfig
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    small = CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8)
    torch.manual_seed(0)
    p_flow = DAOEnergyModel(EnergyConfig(model=small, method="flow", process=FlowConfig(num_steps=3),
                                         energy=EnergyHeadConfig(mean=0.05, std=0.04, num_labels=5)))
    batch = CrystalBatch.from_crystals(labelled_crystals([0.0, 0.1, 0.05]), energy_key="e_above_hull")
    losses = p_flow.loss(batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss_energy"]) and float(losses["loss_energy"]) > 0
    assert {"loss_lattice", "loss_coord"} <= set(losses)
    flow_gen = DAOGenerator(GeneratorConfig(small, method="flow", process=FlowConfig(num_steps=3))).eval()
    template = CrystalBatch.from_compositions([[11, 17]])
    guided = flow_gen.sample(template, guidance=energy_guidance(flow_gen, p_flow.eval(), 5.0),
                             generator=torch.Generator().manual_seed(0))
    plain = flow_gen.sample(template, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(guided.lattice, plain.lattice)
    diffusion_gen = DAOGenerator(GeneratorConfig(small)).eval()
    with pytest.raises(DAOError, match="not trained with a diffusion schedule"):
        energy_guidance(diffusion_gen, p_flow)
