"""Training throughput of DAO-G (crystals/s: forward + backward + Adam step) on MP-20 train crystals.

    python bench/bench_training.py [--config configs/dao_g_cpu.yaml] [--batch 64] [--steps 30] [--device auto]

Batches are size-bucketed as in `dao train`. Prints JSON. Run it alone.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, mp20_crystals  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(ROOT / "configs" / "dao_g_cpu.yaml"))
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from dao.data.dataset import BucketBatchSampler, collate
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.runtime import resolve_device
    from dao.train import load_config

    device = resolve_device(args.device)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    model = DAOGenerator(GeneratorConfig.from_dict({k: v for k, v in cfg.items() if k != "train"})).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    crystals = mp20_crystals("train", 100000)
    sampler = BucketBatchSampler([c.num_atoms for c in crystals], args.batch, seed=0)
    batches = [collate([crystals[i] for i in b]) for b in list(sampler)[: args.steps + args.warmup]]
    n_cryst, n_atoms, elapsed = 0, 0, 0.0
    for i, b in enumerate(batches):
        b = b.to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = model.loss(b)["loss"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            elapsed += time.perf_counter() - t0
            n_cryst += b.num_crystals
            n_atoms += int(b.num_atoms.sum())
    print(json.dumps({
        "benchmark": "training", "config": args.config,
        "parameters": sum(p.numel() for p in model.parameters()), "batch_size": args.batch,
        "steps_timed": args.steps, "crystals_per_second": round(n_cryst / elapsed, 1),
        "atoms_per_second": round(n_atoms / elapsed, 1), "seconds_per_step": round(elapsed / args.steps, 4),
        **environment(device),
    }, indent=2))


if __name__ == "__main__":
    main()
