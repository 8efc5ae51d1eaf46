"""Do flow samples vote for the right template? Per val row: the first 16 template candidates in the learned
order (the bundled index minus the whole split, novel mode), ``--samples`` flow samples of the row's cell
(``default-flow``), which samples match which candidate and the truth (the CSP protocol's matcher). Writes
one JSON line per row to ``--out`` (appends; rows already there are skipped); ``--summarise`` prints, as
JSON, MR@1 of the learned order with ``λ·log(1 + votes)`` added to each candidate's logit over a grid of λ.

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_sample_votes.py --rows 500:933 \
        --samples 16 --out votes.jsonl
    python bench/bench_sample_votes.py --summarise votes.jsonl
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from bench_relax_rerank import matches, parse_row_bench, resume_and_guard, row_bench_parser
from dao.evaluate.canon import canonicalize
from dao.formula import CellComposition
from dao.models.checkpoint import bundled_generator_for, load_generator
from dao.prediction import generated_candidates, sample_formula
from dao.ranking import validity_flags


def label_rows(split: str, start: int, stop: int, samples: int, out: Path) -> None:
    done, everything, index = resume_and_guard(split, out)
    gen = load_generator(bundled_generator_for("default-flow", None), torch.device("cpu"))
    with out.open("a") as fh:
        for row in range(start, min(stop, len(everything))):
            if row in done:
                continue
            ref = canonicalize(everything[row])
            cell = CellComposition.of_structure(everything[row])
            proposed = index.propose(cell, limit=16, novel=True)
            cands, priors = [canonicalize(c.structure) for c in proposed], [c.prior for c in proposed]
            run = sample_formula(cell.formula, samples, atoms=cell.num_atoms, seed=row, model=gen, device="cpu")
            gen_c = [canonicalize(c.structure) for c in generated_candidates(run)
                     if validity_flags(c.structure)["valid"]]
            fh.write(json.dumps({"row": row, "prior": priors, "label": [matches(c, ref) for c in cands],
                                 "gen_label": [matches(g, ref) for g in gen_c],
                                 "votes": [sum(matches(g, c) for g in gen_c) for c in cands]}) + "\n")
            fh.flush()


def summarise(paths: list[Path]) -> dict:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r["prior"]]
    out = {"rows": len(rows), "right_among_16": sum(any(r["label"]) for r in rows) / max(len(rows), 1),
           "right_among_samples": sum(any(r["gen_label"]) for r in rows) / max(len(rows), 1)}
    for lam in (0.0, 0.25, 0.5, 1.0, 2.0, 4.0):
        hits = 0
        for r in rows:
            p = [min(max(x, 1e-6), 1 - 1e-6) for x in r["prior"]]
            score = [math.log(x / (1 - x)) + lam * math.log1p(v) for x, v in zip(p, r["votes"])]
            hits += r["label"][max(range(len(score)), key=score.__getitem__)]
        out[f"mr@1_lambda_{lam:g}"] = round(hits / max(len(rows), 1), 4)
    return out


def main() -> None:
    p = row_bench_parser(__doc__, "500:933")
    p.add_argument("--samples", type=int, default=16)
    parsed = parse_row_bench(p, lambda a: summarise(a.summarise))
    if parsed:
        a, start, stop = parsed
        label_rows(a.split, start, stop, a.samples, a.out)


if __name__ == "__main__":
    main()
