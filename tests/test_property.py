"""`dao train property` (k-fold and splits, --init from DAO-P, skipped rows with reasons) and
`dao predict-property` (the fold ensemble)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import small_structures

TINY = ("model: {hidden: 32, layers: 2, heads: 4, num_freqs: 8, time_dim: 16}\n"
        "train: {batch_size: 4, max_epochs: 3, warmup_steps: 1, lr: 1.0e-3, max_atoms: 24}\n")


def write_task(path, n_copies=3):
    from pymatgen.core import Lattice, Structure

    rows = []
    for k in range(n_copies):
        for name, s in small_structures().items():
            s = s.copy()
            s.scale_lattice(s.volume * (1 + 0.1 * k))
            rows.append({"material_id": f"{name}-{k}", "cif": s.to(fmt="cif"), "vpa": s.volume / len(s)})
    rows.append({"material_id": "nan-row", "cif": small_structures()["Si"].to(fmt="cif"), "vpa": "nan"})
    rows.append({"material_id": "bad-cif", "cif": "data_x\n_cell_length_a 3\nnonsense", "vpa": 1.0})
    heavy = Structure(Lattice.cubic(5.0), ["Og", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    rows.append({"material_id": "heavy", "cif": heavy.to(fmt="cif"), "vpa": 3.0})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "cif", "vpa"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.mark.slow
def test_kfold_training_with_init_skips_bad_rows_and_predicts_with_the_ensemble(tmp_path, tiny_energy_checkpoint, capsys):
    from dao.cli import main

    data = write_task(tmp_path / "task.csv")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "prop"
    main(["train", "property", "--data", str(data), "--target", "vpa", "--folds", "3", "--config", str(cfg),
          "--init", str(tiny_energy_checkpoint), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert "skipped 3 rows" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "3-fold" and summary["n_used"] == 15 and summary["skipped"]["data"]["count"] == 3
    reasons = " ".join(summary["skipped"]["data"]["examples"])
    assert "finite" in reasons and "malformed CIF" in reasons and "Z = 118" in reasons
    s = summary["scores"]
    assert len(s["mae_per_fold"]) == 3 and all(np.isfinite(s["mae_per_fold"]))
    assert np.isfinite(s["mae_composition_baseline"]) and np.isfinite(s["mae_mean_predictor"])
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert sorted(r["id"] for r in preds) == sorted(f"{n}-{k}" for n in small_structures() for k in range(3))
    folds = json.loads((out / "folds.json").read_text())["folds"]
    assert sorted(sum(folds, [])) == sorted(r["id"] for r in preds) and (out / "parity.png").is_file()
    # every fold model starts from the DAO-P backbone
    for k in range(3):
        assert json.loads((out / f"fold{k}" / "run.json").read_text())["init"] == str(tiny_energy_checkpoint)

    cif = tmp_path / "NaCl.cif"
    cif.write_text(small_structures()["NaCl"].to(fmt="cif"))
    main(["predict-property", str(cif), "--model", str(out)])
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["models"] == 3 and np.isfinite(line["vpa"]) and line["ensemble_std"] >= 0


def test_composition_baseline_learns_a_composition_property():
    from dao.crystal import Crystal
    from dao.property import composition_baseline

    rng = np.random.default_rng(0)
    crystals = []
    for name, s in list(small_structures().items()) * 8:
        c = Crystal.from_structure(s)
        c.meta["target"] = float(np.mean(c.atomic_numbers)) + 0.01 * rng.standard_normal()
        crystals.append(c)
    pred = composition_baseline(crystals[:30], crystals[30:])
    y = np.array([c.meta["target"] for c in crystals[30:]])
    assert np.abs(pred - y).mean() < 0.1 * np.abs(y - y.mean()).mean()


def test_missing_target_column_is_one_clear_error(tmp_path):
    from dao.cli import main

    data = write_task(tmp_path / "task.csv")
    with pytest.raises(SystemExit) as exc:
        main(["train", "property", "--data", str(data), "--target", "band_gap", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2


def test_training_seed_governs_initial_weights(monkeypatch, tmp_path):
    """The same train.seed builds the same initial model whatever ran before; another seed another one."""
    import torch

    import dao.train
    from dao.crystal import Crystal
    from dao.property import _train_one

    class Built(Exception):
        pass

    def capture(model, *args, **kwargs):
        raise Built({k: v.clone() for k, v in model.state_dict().items()})

    monkeypatch.setattr(dao.train, "fit", capture)

    crystals = []
    for i, s in enumerate(small_structures().values()):
        c = Crystal.from_structure(s)
        c.meta.update(target=float(i), id=str(i))
        crystals.append(c)
    cfg = {"model": {"hidden": 16, "layers": 1, "heads": 2, "num_freqs": 4, "time_dim": 8}, "train": {"seed": 3}}

    def initial(seed):
        cfg["train"]["seed"] = seed
        torch.rand(7)  # whatever the global RNG went through before must not matter
        with pytest.raises(Built) as exc:
            _train_one(cfg, crystals, [], "target", None, tmp_path / f"s{seed}", "cpu", False)
        return exc.value.args[0]

    a, b, c = initial(3), initial(3), initial(4)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_property_model_learns_its_target():
    """Not only finite: a tiny property model fitted to a per-crystal target (the mean atomic number, on
    scaled copies of five crystals) ends far below the mean predictor's error, and far below where it started."""
    import torch

    from dao.crystal import Crystal, CrystalBatch
    from dao.models.property import DAOPropertyModel
    from dao.nn.crysformer import CrysformerConfig

    crystals = []
    for k in range(4):
        for s in small_structures().values():
            s = s.copy()
            s.scale_lattice(s.volume * (1 + 0.15 * k))
            c = Crystal.from_structure(s)
            c.meta["target"] = float(c.atomic_numbers.mean())
            crystals.append(c)
    torch.manual_seed(0)
    model = DAOPropertyModel.from_training_data(
        {"model": CrysformerConfig(hidden=32, layers=1, heads=4, num_freqs=8, time_dim=16).to_dict()}, crystals)
    batch = CrystalBatch.from_crystals(crystals, energy_key="target")
    y = batch.energy.double()
    mean_mae = float((y - y.mean()).abs().mean())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    start = float(model.loss(batch)["mae"])
    for _ in range(100):
        opt.zero_grad()
        model.loss(batch)["loss"].backward()
        opt.step()
    end = float(model.loss(batch)["mae"])
    assert end < 0.2 * mean_mae and end < 0.2 * start
