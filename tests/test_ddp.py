"""Lightning DDP on 2 CPU processes (gloo), through the CLI as a user runs it: `dao train ... --devices 2`.
Each rank trains on its own share of every epoch's batches (half the optimizer steps of one process) and
rank 0 exports the model."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tmp_path, tiny_csv):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text("model: {hidden: 16, layers: 1, heads: 2, num_freqs: 4, time_dim: 8}\n"
                   "train: {batch_size: 1, max_epochs: 2, warmup_steps: 1, max_atoms: 12, ckpt_every_n_steps: 2}\n")
    out = tmp_path / "run"
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "DAO_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "dao", "train", "generator", "--data", str(tiny_csv), "--val",
                           str(tiny_csv), "--config", str(cfg), "--out", str(out), "--device", "cpu", "--devices", "2",
                           "--no-resume"], capture_output=True, text=True, timeout=300, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "distributed_backend=gloo" in log and "Starting with 2 processes" in log
    ckpt = torch.load(out / "model.pt", weights_only=True)
    # 5 crystals, batch 1: 5 batches per epoch, trimmed to 4 and split over 2 ranks -> 2 steps per epoch
    assert ckpt["meta"]["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
