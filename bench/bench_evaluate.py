"""Throughput of ``dao.evaluate.evaluate`` (prediction/reference pairs per second) with 1 and 2 workers.

Predictions are MP-20 val references with Gaussian Cartesian noise (two samples per reference,
sigma 0.05 and 0.3 Å, fixed seeds), so the matcher does its full work on matches and misses alike.
Timing is end to end (canonicalisation, validity, matching, aggregation; pool start-up included),
without cache. Prints one JSON object.

    python bench/bench_evaluate.py [--rows 933] [--workers 1 2]

Data: $DAO_DATA_DIR/csp/mp_20/val.csv.gz (DAO_DATA_DIR defaults to ../shared/data, relative to the
current directory).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np


def _data_file() -> Path:
    return Path(os.environ.get("DAO_DATA_DIR", "../shared/data")) / "csp" / "mp_20" / "val.csv.gz"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=933, help="reference rows (default: all 933)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()

    from pymatgen.core import Structure

    from dao.evaluate import evaluate, load_references

    path = _data_file()
    if not path.is_file():
        print(f"bench_evaluate: data not found: {path} (set DAO_DATA_DIR)", file=sys.stderr)
        return 1
    refs, ids = load_references(path)
    refs, ids = refs[: args.rows], ids[: args.rows]
    rng = np.random.default_rng(0)
    preds = {}
    for i, s in enumerate(refs):
        samples = []
        for sigma in (0.05, 0.3):
            cart = s.cart_coords + rng.normal(0.0, sigma, size=(len(s), 3))
            samples.append(Structure(s.lattice, s.species, cart, coords_are_cartesian=True))
        preds[i] = samples
    n_pairs = sum(len(v) for v in preds.values())

    results = {}
    records = None
    for w in args.workers:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
        t0 = time.perf_counter()
        res = evaluate(preds, refs, workers=w, progress=False, reference_ids=ids)
        dt = time.perf_counter() - t0
        if records is None:
            records = res.records
        elif res.records != records:
            print("bench_evaluate: results differ between worker counts", file=sys.stderr)
            return 2
        results[str(w)] = {"seconds": round(dt, 3), "pairs_per_s": round(n_pairs / dt, 2),
                           "load_avg_1m_before": load}  # other work on the machine skews multi-worker runs
    out = {
        "bench": "evaluate",
        "data": str(path),
        "references": len(refs),
        "pairs": n_pairs,
        "match_rate_unfiltered_k2": res.summary["match_rate_unfiltered"],
        "workers": results,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
