"""Does DAO-G refinement of a template candidate (noised to a strength t, then denoised: img2img / SDEdit)
beat plain substitution? Per val row: the first ``--k`` template candidates in the learned order (novel
mode; the bundled index minus the whole split, or with ``--guard rows`` minus the evaluated rows only), each
refined by ``default-flow`` at every strength of ``--strengths`` (one sample, seed = row), and matched to
the row's structure by the CSP protocol's matcher before and after (a refined structure that fails the
validity gate does not match). Writes one JSON line per row to ``--out`` (appends; rows already there are
skipped) and, with ``--summarise``, prints as JSON per strength: MR@1 of the refined first candidate, the
rows it gains and loses against plain substitution, and the rows with a right one among the k.

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_template_refine.py --split mp20 \\
        --rows 500:933 --out refine_mp20.jsonl
    python bench/bench_template_refine.py --summarise refine_mp20.jsonl
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench_relax_rerank import matches, parse_row_bench, resume_and_guard, row_bench_parser
from dao.constants import TEMPLATE_GUARDS
from dao.evaluate.canon import canonicalize
from dao.formula import CellComposition
from dao.models.checkpoint import bundled_generator_for, load_generator
from dao.prediction import refine
from dao.ranking import validity_flags


def label_rows(split: str, start: int, stop: int, k: int, strengths: list[float], guard: str, out: Path) -> None:
    done, everything, index = resume_and_guard(split, out, slice(start, stop) if guard == "rows" else slice(None))
    gen = load_generator(bundled_generator_for("default-flow", None), torch.device("cpu"))
    with out.open("a") as fh:
        for row in range(start, min(stop, len(everything))):
            if row in done:
                continue
            t0 = time.perf_counter()
            ref = canonicalize(everything[row])
            cands = [c.structure for c in index.propose(CellComposition.of_structure(everything[row]), limit=k,
                                                         novel=True)]
            rec = {"row": row, "atoms": len(everything[row]), "plain": [matches(c, ref) for c in cands],
                   "refined": {}}
            for t in strengths:
                samples = refine(gen, cands, t, seed=row)
                rec["refined"][f"{t:g}"] = [s.structure is not None and validity_flags(s.structure)["valid"]
                                            and matches(s.structure, ref) for s in samples]
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()


def summarise(paths: list[Path]) -> dict:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    n = max(len(rows), 1)
    out = {"rows": len(rows), "rows_with_candidates": sum(bool(r["plain"]) for r in rows),
           "seconds_per_row": round(sum(r["seconds"] for r in rows) / n, 2),
           "plain": {"mr@1": round(sum(bool(r["plain"]) and r["plain"][0] for r in rows) / n, 4),
                     "right_among_k": round(sum(any(r["plain"]) for r in rows) / n, 4)}}
    for t in (rows[0]["refined"] if rows else {}):
        first = [(bool(r["plain"]) and r["plain"][0], bool(r["refined"][t]) and r["refined"][t][0]) for r in rows]
        out[f"strength_{t}"] = {"mr@1": round(sum(b for _, b in first) / n, 4),
                                "gained": sum(b and not a for a, b in first), "lost": sum(a and not b for a, b in first),
                                "right_among_k": round(sum(any(r["refined"][t]) for r in rows) / n, 4),
                                "right_among_k_plain_or_refined": round(
                                    sum(any(r["plain"]) or any(r["refined"][t]) for r in rows) / n, 4)}
    return out


def main() -> None:
    p = row_bench_parser(__doc__, "500:933")
    p.add_argument("--k", type=int, default=5, help="template candidates refined per row")
    p.add_argument("--strengths", default="0.3,0.15,0.05", help="comma-separated refinement strengths in (0, 1]")
    p.add_argument("--guard", choices=TEMPLATE_GUARDS, default="split")
    parsed = parse_row_bench(p, lambda a: summarise(a.summarise))
    if parsed:
        a, start, stop = parsed
        label_rows(a.split, start, stop, a.k, [float(x) for x in a.strengths.split(",")], a.guard, a.out)


if __name__ == "__main__":
    main()
