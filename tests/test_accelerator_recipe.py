"""The accelerator recipe (recipes/accelerator, issue 15) dry-run on CPU: prepare → train_on_device (a
subprocess with OUT set, as on the device machine) → reassemble → load and sample."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import small_structures, write_csv

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "accelerator"
#: imported at start-up (as sitecustomize) by the dry run: the packages the device machine lacks cannot be imported
NO_PYMATGEN = """import importlib.abc, sys
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in ("pymatgen", "ase", "spglib", "smact", "chgnet"):
            raise ImportError("not on the device machine: " + name)
sys.meta_path.insert(0, Absent())
"""


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"accel_{name}", RECIPE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tensors(data_dir, tmp_path_factory):
    """The tensor file of ``data_dir`` and the card ``prepare`` returned."""
    out = tmp_path_factory.mktemp("accel") / "train_set.npz"
    return out, _load("prepare_data").prepare(data_dir, out)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data folder in the shared layout: MP-20 train (NaCl, Si, TiO2, CsCl, ZnO: ids test-0..test-4),
    MP-20 val (held out: NaCl test-0, ZnO test-1), a pretrain file with Si under the held-out id test-0."""
    structures = small_structures()
    root = tmp_path_factory.mktemp("accel") / "data"
    (root / "csp" / "mp_20").mkdir(parents=True)
    (root / "pretrain").mkdir()
    write_csv(root / "csp" / "mp_20" / "train.csv.gz", structures)  # ids test-0..test-4
    write_csv(root / "csp" / "mp_20" / "val.csv.gz", {"NaCl": structures["NaCl"], "ZnO": structures["ZnO"]})
    write_csv(root / "pretrain" / "extra.csv.gz", {"Si": structures["Si"]})
    return root


def test_prepare_writes_tensors_without_held_out(tensors):
    out, card = tensors
    with np.load(out) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["numbers"].dtype == np.int8 and arrays["frac"].dtype == np.float32
    assert arrays["lattices"].shape == (card["crystals"], 3, 3) and arrays["lattices"].dtype == np.float32
    assert arrays["offsets"][-1] == len(arrays["numbers"]) == len(arrays["frac"]) == card["atoms"]
    # by id: train NaCl (test-0), train Si (test-1), pretrain Si (test-0); by structure: train ZnO (test-4);
    # TiO2 and CsCl remain
    kept = sorted(tuple(sorted(arrays["numbers"][a:b].tolist())) for a, b in zip(arrays["offsets"][:-1],
                                                                                  arrays["offsets"][1:]))
    assert kept == [(8, 8, 8, 8, 22, 22), (17, 55)]
    assert card["removed_matching_held_out"] == 4
    saved = json.loads(out.with_suffix(".json").read_text())
    assert [h["path"] for h in saved["held_out"]] == ["csp/mp_20/val.csv.gz"]
    assert len(saved["held_out"][0]["sha256"]) == 64 and saved["sha256"] == card["sha256"]


def test_choose_plan_takes_the_largest_size_that_fits():
    train = _load("train_on_device")
    probes = [{"size": "S", "batch_size": 256, "params": 6_000_000, "seconds_per_step": 0.05, "crystals_per_second": 5120},
              {"size": "M", "batch_size": 256, "params": 12_000_000, "seconds_per_step": 0.1, "crystals_per_second": 2560},
              {"size": "M", "batch_size": 512, "oom": True},
              {"size": "L", "batch_size": 512, "error": "an op failed"},
              {"size": "L", "batch_size": 256, "params": 25_000_000, "seconds_per_step": 0.4, "crystals_per_second": 640}]
    # 30k crystals, 400 s: S 68 epochs, M 34, L 8.5 → M; half the time gives M 17 < 20: diffusion only
    plan = train.choose_plan(probes, 30_000, 400.0, min_epochs=20)
    assert (plan["size"], plan["batch_size"], plan["methods"]) == ("M", 256, ["diffusion"])
    # 10 epochs suffice: L fits alone, but two L models cannot come back (4 × 25 M bytes > 62 MiB)
    plan = train.choose_plan(probes, 30_000, 400.0, min_epochs=4)
    assert (plan["size"], plan["methods"]) == ("L", ["diffusion"])
    plan = train.choose_plan(probes, 30_000, 800.0, min_epochs=20)
    assert (plan["size"], plan["methods"]) == ("M", ["diffusion", "flow"])


def test_dry_run_prepare_train_reassemble(tensors, tmp_path):
    reassemble, tensors = _load("reassemble"), tensors[0]
    out = tmp_path / "device_out"
    out.mkdir()
    blocker = tmp_path / "device_site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(NO_PYMATGEN)
    env = {**os.environ, "OUT": str(out), "OMP_NUM_THREADS": "1", "PY": sys.executable, "DATA": str(tensors),
           "BUDGET": "4", "PYTHONPATH": str(blocker)}
    blocked = subprocess.run([sys.executable, "-c", "import pymatgen.core"], env=env, capture_output=True, text=True)
    assert "not on the device machine: pymatgen" in blocked.stderr  # the blocker is in force
    cmd = ["bash", str(RECIPE / "run.sh"), "--sizes", "tiny", "--batch-sizes", "2", "--probe-seconds", "0.5",
           "--reserve-seconds", "0.5", "--min-epochs", "1", "--methods", "diffusion", "--sample-steps", "2",
           "--val-every", "1"]
    run = subprocess.run(cmd, env=env, cwd=RECIPE.parents[1], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["dao_g_diffusion.pt.part0", "run_log.json"]
    log = json.loads((out / "run_log.json").read_text())
    assert log["plan"]["size"] == "tiny" and log["train_diffusion"]["steps"] >= 1
    assert log["train_diffusion"]["val_loss"] and log["train_diffusion"]["sampling"]["seconds_per_structure"] > 0

    report = reassemble.reassemble(out, "dao_g_diffusion", tmp_path / "model.pt")
    from dao.models.checkpoint import load_generator

    model = load_generator(tmp_path / "model.pt")
    assert all(v.dtype == torch.float32 for v in model.state_dict().values() if v.is_floating_point())
    assert model.meta["steps"] == log["train_diffusion"]["steps"] == report["steps_trained"]
    assert model.meta["data"]["sha256"] == json.loads(tensors.with_suffix(".json").read_text())["sha256"]
    from dao.crystal import CrystalBatch

    crystal = model.sample(CrystalBatch.from_compositions([[14, 14]]), num_steps=2,
                           generator=torch.Generator().manual_seed(1)).crystals()[0]
    assert crystal.num_atoms == 2 and np.isfinite(crystal.lattice).all()

    chunk = out / "dao_g_diffusion.pt.part0"  # a damaged transfer is refused and writes nothing
    damaged = bytearray(chunk.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    chunk.write_bytes(bytes(damaged))
    from dao.errors import CheckpointError

    with pytest.raises(CheckpointError, match="damaged"):
        reassemble.reassemble(out, "dao_g_diffusion", tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()


def test_a_nonfinite_step_leaves_the_weights_alone(tensors):
    train = _load("train_on_device")
    data = train.DeviceData(train.load_tensor_file(tensors[0]), torch.device("cpu"))
    model = train.make_model("tiny", "diffusion", 12, data.device)
    ema = train.make_model("tiny", "diffusion", 12, data.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = train.schedule(opt, 1, 10, 1e-5)
    args = train.parse_args(["--out", "unused"])
    batch = data.batch([0, 1])
    before = [p.detach().clone() for p in model.parameters()]
    _, bad = train._step(model, ema, opt, sched, batch.replace(lattice=batch.lattice * float("nan")), False, args, 0)
    assert bool(bad) and all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    _, bad = train._step(model, ema, opt, sched, batch, False, args, 1)
    assert not bool(bad) and not all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_train_on_device_refuses_a_missing_tensor_file(tmp_path, capsys):
    train = _load("train_on_device")
    assert train.main(["--data", str(tmp_path / "none.npz"), "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().startswith("dao: error: no tensor file")
