"""The official sampler details on a real split: the last corrector step with and without Langevin noise,
and corrector step sizes (docs/official.md). Same seed for every setting, so the runs share every random
number except the last corrector's noise (or differ only in the step size).

    python bench/bench_official_sampler.py [--model default-diffusion] [--dataset mp_20] [--n 100]
        [--steps 1000] [--step-lr 1e-5 ...] [--seed 0] [--device auto]

Uses the first --n rows of the dataset's val split (DAO_DATA_DIR). Match = the CSP protocol's
StructureMatcher on the validity-gated sample (dao.evaluate.canon). Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, environment  # noqa: E402


def _score(samples, refs) -> list[float | None]:
    """Per row: the RMS distance of a valid, matching sample, else None."""
    from dao.evaluate.canon import canonicalize, is_valid, rms

    out = []
    for s, ref in zip(samples, refs):
        if s is None or not is_valid(s)[0]:
            out.append(None)
            continue
        out.append(rms(canonicalize(s), canonicalize(ref))[0])
    return out


def _run(model, crystals, steps, seed, step_lr, final_noise, device) -> tuple[list, float]:
    from dao.crystal import CrystalBatch
    from dao.prediction import finalize_structure

    model.process.config.final_corrector_noise = final_noise
    template = CrystalBatch.from_compositions([c.atomic_numbers.tolist() for c in crystals], device=device)
    t0 = time.time()
    out = model.sample(template, num_steps=steps, generator=torch.Generator().manual_seed(seed), step_lr=step_lr)
    seconds = time.time() - t0
    return [finalize_structure(c.atomic_numbers, c.frac_coords, c.lattice)[0] for c in out.crystals()], seconds


def _summary(rmses: list[float | None]) -> dict:
    hit = [r for r in rmses if r is not None]
    return {"match_rate": round(len(hit) / len(rmses), 4), "rmse": round(float(np.mean(hit)), 4) if hit else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default-diffusion")
    ap.add_argument("--dataset", default="mp_20")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the model's full schedule)")
    ap.add_argument("--step-lr", type=float, nargs="*", default=[], help="extra step sizes to compare")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from dao.data.readers import read_csv
    from dao.models.checkpoint import load_generator
    from dao.runtime import resolve_device

    device = resolve_device(args.device)
    model = load_generator(args.model, device)
    path = data_dir() / "csp" / args.dataset / "val.csv.gz"
    if not path.is_file():
        raise SystemExit(f"{args.dataset} val split not found at {path}; set DAO_DATA_DIR")
    crystals = read_csv(path)[0][: args.n]
    refs = [c.to_structure() for c in crystals]
    base_lr = model.process.config.step_lr
    settings = [("final_noise", base_lr, True), ("noise_free_last_step", base_lr, False)]
    settings += [(f"step_lr_{lr:g}", lr, False) for lr in args.step_lr]
    results, rmses = {}, {}
    for name, lr, noise in settings:
        samples, seconds = _run(model, crystals, args.steps, args.seed, lr, noise, device)
        rmses[name] = _score(samples, refs)
        results[name] = {"step_lr": lr, "final_corrector_noise": noise, "seconds": round(seconds, 1),
                         **_summary(rmses[name])}
        print(json.dumps({name: results[name]}), file=sys.stderr, flush=True)  # progress
    both = [i for i in range(len(refs)) if rmses["final_noise"][i] is not None
            and rmses["noise_free_last_step"][i] is not None]
    paired = {"rows_matched_by_both": len(both),
              "rmse_final_noise": round(float(np.mean([rmses["final_noise"][i] for i in both])), 5) if both else None,
              "rmse_noise_free": round(float(np.mean([rmses["noise_free_last_step"][i] for i in both])), 5)
              if both else None}
    print(json.dumps({"model": args.model, "dataset": args.dataset, "rows": len(refs), "seed": args.seed,
                      "steps": model.process.resolve_steps(args.steps), "settings": results, "paired": paired,
                      "env": environment(device)}, indent=2))


if __name__ == "__main__":
    main()
