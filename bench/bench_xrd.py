"""Pattern matching on real polymorphs: for reduced formulas with 2–6 entries in an MP-20 split, each entry's
simulated "measurement" (tests/test_xrd.py's model: strained cell, broadened peaks, preferred orientation,
background, zero shift, counting noise; strain, width and texture drawn at random per case) is ranked
against every entry of that formula with :func:`dao.xrd.compare`. Reports top-1 accuracy, how often the
truth matches (score ≥ threshold), the score margin to the best decoy, and — for a pattern of another
formula's structure against the same candidates — how often "no candidate matches" is correctly said.

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_xrd.py [--split val --groups 40]
    OMP_NUM_THREADS=1 python bench/bench_xrd.py --known-case     # docs/xrd.md's TiO2 table (no data needed)

Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import mp20_crystals  # noqa: E402
from dao.xrd import MATCH_THRESHOLD, check_pattern, compare  # noqa: E402
from tests.conftest import small_structures  # noqa: E402
from tests.test_xrd import measured, nacl, tio2_polymorphs  # noqa: E402

KNOWN_VARIANTS = {"default": {}, "weak": dict(counts=500.0), "strong_orientation": dict(po=0.6, seed=1),
                  "broad_small_cell": dict(fwhm=0.4, strain=(0.97, 0.98, 0.975), seed=2)}


def known_case() -> dict:
    """TiO2 rutile/anatase/brookite against measurements of each under four distortion sets, and the best
    score of unrelated patterns against the three (docs/xrd.md, 'Known case')."""
    poly = tio2_polymorphs()
    out: dict = {}
    for label, kw in KNOWN_VARIANTS.items():
        for truth in poly:
            ranked = compare(check_pattern(*measured(poly[truth], **kw), 1.54184, truth), list(poly.items()))
            out[f"{label}/{truth}"] = [[m.name, m.score, m.scale] for m in ranked]
    others = {"NaCl": nacl(), **{k: v for k, v in small_structures().items() if k != "TiO2"}}
    for name, st in others.items():
        best = compare(check_pattern(*measured(st), 1.54184, name), list(poly.items()))[0]
        out[f"unrelated/{name}"] = [best.name, best.score]
    return out


def groups_of(split: str, limit: int, max_size: int = 6) -> list[list]:
    by_formula = defaultdict(list)
    for c in mp20_crystals(split, 10**9):
        s = c.to_structure()
        by_formula[s.composition.reduced_formula].append((str(c.meta.get("id") or len(by_formula)), s))
    groups = [g for _, g in sorted(by_formula.items()) if 2 <= len(g) <= max_size]
    return groups[:limit]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--split", default="val")
    ap.add_argument("--groups", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--known-case", action="store_true", help="Only the TiO2 known case of docs/xrd.md.")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.known_case:
        print(json.dumps(known_case(), indent=1))
        return
    rng = np.random.default_rng(args.seed)
    groups = groups_of(args.split, args.groups)
    t0 = time.time()
    top1, matched, margins, no_match_ok, cases, failures = 0, 0, [], 0, 0, []
    for gi, group in enumerate(groups):
        cands = [(name, s) for name, s in group]
        other = groups[(gi + 1) % len(groups)][0][1]
        for name, s in group:
            kw = dict(strain=tuple(1 + rng.uniform(-0.03, 0.03, 3)), fwhm=float(rng.uniform(0.08, 0.4)),
                      po=float(rng.uniform(0.7, 1.3)), seed=int(rng.integers(1 << 30)),
                      shift=float(rng.uniform(-0.05, 0.05)))
            ranked = compare(check_pattern(*measured(s, **kw), 1.54184, name), cands)
            cases += 1
            top1 += ranked[0].name == name
            truth = next(m for m in ranked if m.name == name)
            matched += truth.matched
            margins.append(truth.score - max((m.score for m in ranked if m.name != name), default=0.0))
            if ranked[0].name != name:
                failures.append({"formula": s.composition.reduced_formula, "truth": name, "truth_score": truth.score,
                                 "top": ranked[0].name, "top_score": ranked[0].score})
        unrelated = compare(check_pattern(*measured(other, seed=gi), 1.54184, "other"), cands)
        no_match_ok += not unrelated[0].matched
    print(json.dumps({
        "split": args.split, "formulas": len(groups), "cases": cases, "threshold": MATCH_THRESHOLD,
        "top1_accuracy": round(top1 / max(cases, 1), 4), "truth_matched_rate": round(matched / max(cases, 1), 4),
        "median_margin_to_best_decoy": round(float(np.median(margins)), 4) if margins else None,
        "unrelated_reported_no_match_rate": round(no_match_ok / max(len(groups), 1), 4),
        "seconds": round(time.time() - t0, 1), "failures": failures[:20]}, indent=1))


if __name__ == "__main__":
    main()
