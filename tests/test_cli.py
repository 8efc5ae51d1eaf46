"""The `dao` command: bad input gives one clear line and a non-zero exit, never a traceback or partial output."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def run_dao(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dao", *args], capture_output=True, text=True, cwd=cwd,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})


def assert_clean_failure(proc, needle: str) -> None:
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert needle in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("formula,needle", [("Xx2O", "unknown element 'Xx'"), ("", "empty formula"),
                                            ("Fe1000", "too many atoms")])
def test_bad_formulas(tmp_path, tiny_checkpoint, formula, needle):
    out = tmp_path / "out"
    proc = run_dao("predict", formula, "--model", str(tiny_checkpoint), "--out", str(out), "--steps", "4")
    assert_clean_failure(proc, needle)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == [tiny_checkpoint.name]  # no temp folders left behind


def test_missing_and_corrupt_checkpoints(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    assert_clean_failure(run_dao("predict", "NaCl", "--model", str(tmp_path / "nope.pt"), "--out", str(out)),
                         "checkpoint not found")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:500])
    assert_clean_failure(run_dao("predict", "NaCl", "--model", str(bad), "--out", str(out)), "corrupt")
    notdao = tmp_path / "other.pt"
    import torch

    torch.save({"weights": torch.zeros(2)}, notdao)
    assert_clean_failure(run_dao("predict", "NaCl", "--model", str(notdao), "--out", str(out)), "not a DAO model")
    assert not out.exists()


def test_malformed_cif_in_training_data(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("garbage\n")
    proc = run_dao("train", "generator", "--data", str(bad), "--out", str(tmp_path / "run"))
    assert_clean_failure(proc, "bad.cif")


def test_predict_writes_cifs_extxyz_and_summary(tmp_path, tiny_checkpoint):
    from ase.io import read
    from pymatgen.core import Structure

    out = tmp_path / "pred"
    proc = run_dao("predict", "SrTiO3", "-n", "2", "--max-atoms", "10", "--model", str(tiny_checkpoint),
                   "--out", str(out), "--steps", "5", "--seed", "7", "--no-progress", "--no-rank")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [c["z"] for c in summary["cells"]] == [1, 2] and summary["seed"] == 7
    assert summary["num_written"] == len(read(out / "samples.extxyz", index=":"))
    for rec in summary["samples"]:
        if "cif" in rec:
            s = Structure.from_file(out / rec["cif"])
            assert s.composition.reduced_formula == "SrTiO3" and len(s) == rec["atoms_per_cell"]
            assert rec["space_group"]["number"] >= 1 and rec["lattice"]["volume"] > 0
    # the same seed reproduces the same structures
    out2 = tmp_path / "pred2"
    run_dao("predict", "SrTiO3", "-n", "2", "--max-atoms", "10", "--model", str(tiny_checkpoint),
            "--out", str(out2), "--steps", "5", "--seed", "7", "--no-progress", "--no-rank")
    assert (out / "SrTiO3_000.cif").read_text() == (out2 / "SrTiO3_000.cif").read_text()


def test_python_api_returns_structures(tiny_checkpoint):
    import dao

    structures = dao.predict("NaCl", n=2, model=tiny_checkpoint, steps=4, device="cpu", rank=False)
    assert len(structures) == 2 and all(s.composition.reduced_formula == "NaCl" for s in structures)


@pytest.mark.slow
def test_train_init_continues_from_a_checkpoint(tmp_path, tiny_csv):
    """`--init` starts from a checkpoint's weights and config: with a zero learning rate nothing moves; the
    largest cell it generates grows to the largest cell it is finetuned on (here 6 atoms, first stage ≤ 4)."""
    import torch

    from dao.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("model: {hidden: 16, layers: 1, heads: 2, num_freqs: 4, time_dim: 8}\n"
                   "train: {batch_size: 2, max_epochs: 1, warmup_steps: 1, max_atoms: 4}\n")
    frozen = tmp_path / "frozen.yaml"
    frozen.write_text("train: {batch_size: 2, max_epochs: 1, warmup_steps: 1, max_atoms: 12, lr: 0.0, lr_min: 0.0}\n")
    main(["train", "generator", "--method", "flow", "--data", str(tiny_csv), "--config", str(cfg),
          "--out", str(tmp_path / "a"), "--device", "cpu"])
    main(["train", "generator", "--data", str(tiny_csv), "--config", str(frozen), "--init",
          str(tmp_path / "a" / "model.pt"), "--out", str(tmp_path / "b"), "--device", "cpu"])
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert b["meta"]["init"] == str(tmp_path / "a" / "model.pt")
    assert a["config"]["max_atoms"] == 4 and b["config"] == {**a["config"], "max_atoms": 6}
    for k, v in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][k], v)


def test_threads_option_sets_torch_threads():
    """`dao --threads N` (or DAO_NUM_THREADS) fixes torch's CPU threads for any subcommand; 0 is refused."""
    import torch
    from click.testing import CliRunner

    from dao.cli import cli

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert CliRunner().invoke(cli, ["--threads", "1", "energy", "--help"]).exit_code == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert CliRunner().invoke(cli, ["energy", "--help"], env={"DAO_NUM_THREADS": "1"}).exit_code == 0
        assert torch.get_num_threads() == 1
        res = CliRunner().invoke(cli, ["--threads", "0", "energy", "--help"])
        assert res.exit_code != 0 and "--threads" in res.output
    finally:
        torch.set_num_threads(before)


def test_bad_train_config_fails_before_reading_data_or_creating_the_run(tmp_path, tiny_csv):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train: {batch_size: 0}\n")
    out = tmp_path / "run"
    assert_clean_failure(run_dao("train", "generator", "--data", str(tiny_csv), "--config", str(cfg), "--out", str(out)),
                         "train.batch_size")
    cfg.write_text("model: {hidden: 16}\ntrain: {batch_size: 2}\nflow_matching: {num_steps: 4}\n")
    assert_clean_failure(run_dao("train", "energy", "--data", str(tiny_csv), "--config", str(cfg), "--out", str(out)),
                         "unknown config section(s): flow_matching")
    assert_clean_failure(run_dao("train", "generator", "--data", str(tiny_csv), "--out", str(out), "--devices", "two"),
                         "--devices")
    assert not out.exists()


def test_cli_import_and_help_do_not_import_torch():
    code = ("import sys, dao.cli; from dao.cli import cli, main; "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'heavy import'; "
            "assert {'predict', 'train', 'energy', 'relax', 'tc', 'predict-property', 'data', 'evaluate'} <= set(cli.commands)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    help_ = run_dao("train", "--help")
    assert help_.returncode == 0 and "generator" in help_.stdout and "property" in help_.stdout
