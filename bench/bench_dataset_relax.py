"""Dataset relaxation, both modes of ``dao data relax`` on the same entries (docs/official.md):
"capped" (ours: L-BFGS in Cartesian/strain space, 0.2 Å step cap, volume guard, float64) and "official"
(torch L-BFGS, lr 1, 5 iterations, no step cap, on F and L of DAO-P's standardised energy, batches of 100).

    python bench/bench_dataset_relax.py [--model default] [--n 200] [--steps 20] [--max-atoms 20]

Entries: the first --n MPTS-52 val rows (MP-20 holds no entry in the window) with at most --max-atoms
atoms and 0.08 < E_hull <= 0.5 eV/atom (the relaxation window).
Reports DAO-P's E_hull before/after (eV/atom), volume changes and time per mode. Prints JSON.
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


def _stats(before: np.ndarray, after: np.ndarray, v0: np.ndarray, v1: np.ndarray, seconds: float) -> dict:
    ok = np.isfinite(after) & np.isfinite(v1)
    dv = np.abs(np.log(v1[ok] / v0[ok]))
    return {"usable": int(ok.sum()), "e_before": round(float(before[ok].mean()), 4),
            "e_after": round(float(after[ok].mean()), 4), "share_lowered": round(float((after[ok] < before[ok]).mean()), 3),
            "median_abs_log_volume_change": round(float(np.median(dv)), 4),
            "share_volume_change_over_20pct": round(float((dv > np.log(1.2)).mean()), 3),
            "max_volume_ratio": round(float(np.exp(dv.max())), 3), "seconds": round(seconds, 1)}


def capped(model, crystals, steps: int) -> dict:
    from dao.potentials import DAOPotential
    from dao.relaxation import relax_batch

    pot, t0 = DAOPotential(model), time.time()
    recs = []
    for lo in range(0, len(crystals), 64):
        recs += [r.record for r in relax_batch([c.to_atoms() for c in crystals[lo:lo + 64]], pot, steps=steps,
                                               fmax=0.05, optimizer="lbfgs")]
    good = [r.get("energy_final") is not None for r in recs]
    out = _stats(np.array([r.get("energy_initial", np.nan) for r in recs]),
                 np.array([r["energy_final"] if g else np.nan for r, g in zip(recs, good)]),
                 np.array([r["volume_initial"] for r in recs]),
                 np.array([r["volume_final"] if g else np.nan for r, g in zip(recs, good)]), time.time() - t0)
    out["statuses"] = {s: sum(r["status"] == s for r in recs) for s in sorted({r["status"] for r in recs})}
    return out


def official(model, crystals, steps: int) -> dict:
    from dao.relaxation import relax_official

    t0, before, after, v1 = time.time(), [], [], []
    for lo in range(0, len(crystals), 100):
        chunk = crystals[lo:lo + 100]
        out, b, a = relax_official(model, chunk, max_iter=steps)
        before += b.tolist()
        after += a.tolist()
        v1 += [np.nan if c is None else c.volume for c in out]
    return _stats(np.array(before), np.array(after), np.array([c.volume for c in crystals]), np.array(v1),
                  time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=20, help="capped mode's steps (official: 5 iterations)")
    ap.add_argument("--max-atoms", type=int, default=20, help="the bundled DAO-P was trained on <= 20 atoms")
    ap.add_argument("--official-only", action="store_true", help="skip the (slower) capped mode")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from dao.data.readers import read_csv
    from dao.models.checkpoint import load_energy_model

    model = load_energy_model(args.model, "cpu")
    path = data_dir() / "csp" / "mpts_52" / "val.csv.gz"
    if not path.is_file():
        raise SystemExit(f"MPTS-52 val split not found at {path}; set DAO_DATA_DIR")
    crystals = [c for c in read_csv(path)[0] if c.num_atoms <= args.max_atoms
                and 0.08 < c.meta.get("e_above_hull", np.nan) <= 0.5][: args.n]
    result = {"model": args.model, "entries": len(crystals),
              "label_mean": round(float(np.mean([c.meta["e_above_hull"] for c in crystals])), 4),
              "capped": None if args.official_only else capped(model, crystals, args.steps),
              "official": official(model, crystals, 5),
              "env": environment(torch.device("cpu"))}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
