"""Sampling throughput of DAO-G: structures/s at the default step count, and seconds per network evaluation.

    python bench/bench_sampling.py [--model default] [--batch 64] [--steps 1000] [--device auto]

Uses the compositions (and atom counts) of the first --batch MP-20 val crystals. Prints JSON.
Run it alone: other CPU load slows torch's threads several-fold.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's full schedule)")
    ap.add_argument("--evals", type=int, default=50, help="network evaluations timed for the per-eval figure")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from dao.crystal import CrystalBatch
    from dao.models.checkpoint import load_generator
    from dao.runtime import resolve_device

    device = resolve_device(args.device)
    model = load_generator(args.model, device)
    crystals = mp20_crystals("val", args.batch)
    template = CrystalBatch.from_compositions([c.atomic_numbers.tolist() for c in crystals], device=device)
    batch = CrystalBatch.from_crystals(crystals).to(device)
    t = torch.full((len(crystals),), 0.5, device=device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with torch.no_grad():
        for _ in range(3):
            model.network(batch, t)
        sync()
        t0 = time.perf_counter()
        for _ in range(args.evals):
            model.network(batch, t)
        sync()
        per_eval = (time.perf_counter() - t0) / args.evals

    steps = model.process.resolve_steps(args.steps)
    calls = []
    network = model.network

    def counted(b, tt):
        calls.append(1)
        return network(b, tt)

    model.network = counted  # count network evaluations (2 per diffusion step: corrector + predictor)
    sync()
    t0 = time.perf_counter()
    model.sample(template, num_steps=steps, generator=torch.Generator().manual_seed(args.seed))
    sync()
    total = time.perf_counter() - t0
    n_evals = len(calls)
    print(json.dumps({
        "benchmark": "sampling", "model": model.checkpoint_path, "method": model.method,
        "parameters": sum(p.numel() for p in model.parameters()),
        "batch_crystals": len(crystals), "mean_atoms": float(template.num_atoms.float().mean()),
        "steps": steps, "network_evals_per_sample": n_evals,
        "seconds_per_network_eval_batch": round(per_eval, 5),
        "seconds_per_network_eval_per_crystal": round(per_eval / len(crystals), 6),
        "sampling_seconds_batch": round(total, 2),
        "structures_per_second": round(len(crystals) / total, 4),
        "seconds_per_structure": round(total / len(crystals), 3),
        **environment(device),
    }, indent=2))


if __name__ == "__main__":
    main()
