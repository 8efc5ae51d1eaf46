"""End to end on CPU: tiny training run → exported checkpoint → resume → sampling with the CLI."""
from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import small_structures, write_csv

pytestmark = pytest.mark.slow

CONFIG = """
model: {hidden: 32, layers: 1, heads: 2, num_freqs: 8, time_dim: 16}
diffusion: {num_steps: 100}
train: {batch_size: 2, max_steps: STEPS, warmup_steps: 2, lr: 1.0e-3, ckpt_every_n_steps: 2, max_atoms: 12, seed: 3}
"""


def test_train_resume_export_and_predict(tmp_path):
    from dao.cli import main
    from dao.models.checkpoint import load_checkpoint, load_generator

    data = write_csv(tmp_path / "train.csv", small_structures())
    cfg = tmp_path / "cfg.yaml"
    out = tmp_path / "run"

    def train(steps: int) -> None:
        cfg.write_text(CONFIG.replace("STEPS", str(steps)))
        main(["train", "generator", "--data", str(data), "--val", str(data), "--config", str(cfg),
              "--out", str(out), "--device", "cpu"])

    train(4)
    first = load_checkpoint(out / "model.pt")
    assert first["meta"]["global_step"] == 4 and first["config"]["max_atoms"] == 6  # largest training cell (TiO2)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    train(8)  # resumes from last.ckpt: continues at step 4 rather than starting over
    second = load_checkpoint(out / "model.pt")
    assert second["meta"]["global_step"] == 8 and second["meta"]["started_at_step"] == 4
    assert "val/loss" in second["meta"]["val"] and torch.isfinite(torch.tensor(second["meta"]["val"]["val/loss"]))
    model = load_generator(out / "model.pt")
    assert model.config.process.num_steps == 100 and model.default_steps == 100

    pred = tmp_path / "pred"
    main(["predict", "TiO2", "-n", "3", "--model", str(out / "model.pt"), "--out", str(pred), "--no-progress"])
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["steps"] == 100 and summary["num_requested"] == 3
    assert len(list(pred.glob("TiO2_*.cif"))) >= summary["num_written"] >= 1


def test_benchmark_generates_and_scores_every_row(tmp_path, tiny_checkpoint):
    from dao.cli import main

    split = write_csv(tmp_path / "split.csv", small_structures())
    out = tmp_path / "bench"
    main(["benchmark", "--split", str(split), "--model", str(tiny_checkpoint), "-k", "2", "--steps", "5",
          "--out", str(out), "--no-progress"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_references"] == 5 and summary["k"] == 2
    assert 0.0 <= summary["match_rate_unfiltered"] <= 1.0
    assert summary["generation"]["rows_generated_this_run"] == 5
    assert len(list((out / "predictions").glob("*_*.cif"))) <= 10
    assert (out / "per_structure.csv").is_file() and (out / "match_rate_vs_k.png").is_file()
    # a rerun resumes: nothing is generated again
    main(["benchmark", "--split", str(split), "--model", str(tiny_checkpoint), "-k", "2", "--steps", "5",
          "--out", str(out), "--no-progress"])
    again = json.loads((out / "summary.json").read_text())
    assert again["generation"]["rows_generated_this_run"] == 0
    assert again["match_rate_unfiltered"] == summary["match_rate_unfiltered"]


def test_flow_generator_trains_exports_and_predicts(tmp_path):
    from dao.cli import main
    from dao.models.checkpoint import load_generator

    data = write_csv(tmp_path / "train.csv", small_structures())
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("STEPS", "3") + "flow: {num_steps: 6, integrator: heun}\n")
    out = tmp_path / "run"
    main(["train", "generator", "--method", "flow", "--data", str(data), "--config", str(cfg), "--out", str(out),
          "--device", "cpu"])
    model = load_generator(out / "model.pt")
    assert model.method == "flow" and model.default_steps == 6
    pred = tmp_path / "pred"
    main(["predict", "ZnO", "-n", "2", "--model", str(out / "model.pt"), "--method", "flow", "--out", str(pred),
          "--no-progress"])
    summary = json.loads((pred / "summary.json").read_text())
    assert summary["method"] == "flow" and summary["steps"] == 6 and summary["num_requested"] == 2
    with pytest.raises(SystemExit) as exc:
        main(["predict", "ZnO", "--model", str(out / "model.pt"), "--method", "diffusion", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and not (tmp_path / "x").exists()


def test_train_exclude_removes_every_excluded_structure_before_training(tmp_path):
    """``dao train --exclude SPLIT``: training crystals matching an excluded one (by StructureMatcher, here a
    rotated and translated copy under another id) never reach the model; the report counts them."""
    import numpy as np
    from pymatgen.core import Lattice, Structure

    from dao.cli import main
    from dao.models.checkpoint import load_checkpoint

    structures = small_structures()
    data = write_csv(tmp_path / "train.csv", structures)
    nacl = structures["NaCl"]
    rot = Lattice(nacl.lattice.matrix @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))
    moved = Structure(rot, nacl.species, (nacl.frac_coords + 0.3) % 1.0)
    excluded = write_csv(tmp_path / "val.csv", {"NaCl-moved": moved, "ZnO": structures["ZnO"]})
    excluded.write_text(excluded.read_text().replace("test-0", "val-0").replace("test-1", "val-1"))  # no shared ids
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG.replace("STEPS", "1"))
    out = tmp_path / "run"
    main(["train", "generator", "--data", str(data), "--exclude", str(excluded), "--config", str(cfg),
          "--out", str(out), "--device", "cpu"])
    report = load_checkpoint(out / "model.pt")["meta"]["data_report"]
    assert report["removed_overlapping_excluded"] == 2
    with pytest.raises(SystemExit):  # excluding everything leaves nothing to train on: one clean error
        main(["train", "generator", "--data", str(excluded), "--exclude", str(data), "--config", str(cfg),
              "--out", str(tmp_path / "none"), "--device", "cpu"])
    assert not (tmp_path / "none").exists()
