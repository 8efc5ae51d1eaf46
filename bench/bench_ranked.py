"""Ranked prediction vs raw samples on MP-20 val: MR@1 (the CSP protocol, dao.evaluate) of

* ``first_sample``: today's ``--no-rank`` answer with the same generator, the first sample of the reference's
  cell (the formula as typed);
* ``template_top1``: the template index's first proposal for the reference's cell (the template-only baseline);
* ``ranked_<judge>``: the top of :func:`dao.ranking.rank_candidates` over the same candidates (templates for
  every admissible Z plus ``--candidates`` generated samples over all Z), judge none / dao / chgnet;

and seconds per composition (generation, then each judge). The template index is built WITHOUT the val
split (``dao templates build train.csv.gz --exclude val.csv.gz --out DIR``, pass ``--index DIR/templates.npz``)
and guarded again with ``without`` (ids and StructureMatcher) against the evaluated rows.

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_ranked.py --index DIR/templates.npz \
        [--rows 30 --candidates 10 --relax-steps 10 --judges none,dao,chgnet --model default-flow]

Prints one JSON line per row to stderr and one JSON object at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import environment, mp20_crystals
from dao.evaluate import evaluate
from dao.formula import CellComposition
from dao.models.checkpoint import load_generator
from dao.prediction import generated_candidates, sample_formula
from dao.ranking import rank_candidates, template_candidates
from dao.templates import TemplateIndex


def _row(model, index, ref, seed: int, a: argparse.Namespace) -> dict:
    cell = CellComposition.of_structure(ref)
    t0 = time.perf_counter()
    run = sample_formula(cell.formula, 1, seed=seed, steps=a.steps, model=model, device="cpu", all_cells=True,
                         total=a.candidates)
    templates, _ = template_candidates(run.cells, index, a.template_limit)
    out: dict = {"seconds_generate": time.perf_counter() - t0}
    first = [s.structure for s in run.samples if s.cell.num_atoms == cell.num_atoms and s.index == 0]
    out["first_sample"] = first[0] if first else None
    own = [c for c in templates if c.cell.num_atoms == cell.num_atoms]
    out["template_top1"] = own[0].structure if own else None
    cands = templates + generated_candidates(run)
    for judge in a.judges:
        t0 = time.perf_counter()
        ranking = rank_candidates([c.__class__(c.cell, c.structure, c.source, dict(c.info), c.prior) for c in cands],
                                  judge, "cpu", a.relax_steps, a.relax_seconds)
        out[f"ranked_{judge}"] = ranking.structures[0] if ranking.ranked else None
        out[f"seconds_{judge}"] = time.perf_counter() - t0
        out[f"counts_{judge}"] = ranking.counts
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", required=True, help="template index built without the val split")
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--candidates", type=int, default=10)
    p.add_argument("--template-limit", type=int, default=4)
    p.add_argument("--relax-steps", type=int, default=10)
    p.add_argument("--relax-seconds", type=float, default=10.0)
    p.add_argument("--judges", default="none,dao,chgnet")
    p.add_argument("--model", default="default-flow")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.judges = [j for j in a.judges.split(",") if j]
    torch.set_num_threads(1)
    crystals = mp20_crystals("val", a.rows)
    refs = [c.to_structure() for c in crystals]
    index = TemplateIndex.load(a.index).without(ids=[c.meta["id"] for c in crystals if c.meta.get("id")],
                                                structures=refs)
    model = load_generator(a.model, "cpu")
    methods = ["first_sample", "template_top1"] + [f"ranked_{j}" for j in a.judges]
    preds: dict[str, dict[int, list]] = {m: {} for m in methods}
    secs: dict[str, list[float]] = {k: [] for k in ["generate", *a.judges]}
    for i, ref in enumerate(refs):
        r = _row(model, index, ref, a.seed + i, a)
        for m in methods:
            preds[m][i] = [r[m]] if r[m] is not None else []
        for k in secs:
            secs[k].append(r[f"seconds_{k}"])
        print(json.dumps({"row": i, "formula": ref.composition.reduced_formula,
                          **{k: round(r[f"seconds_{k}"], 2) for k in secs},
                          **{f"counts_{j}": r[f"counts_{j}"] for j in a.judges[:1]}}), file=sys.stderr, flush=True)
    result = {"rows": len(refs), "args": {k: v for k, v in vars(a).items()}, "index_entries": len(index),
              "environment": environment(torch.device("cpu"))}
    for m in methods:
        s = evaluate(preds[m], refs, k=1, progress=False).summary
        result[m] = {"mr@1": s["match_rate"], "rmse": s["rmse"], "mr@1_unfiltered": s["match_rate_unfiltered"],
                     "answered": sum(bool(v) for v in preds[m].values())}
    result["seconds_per_composition"] = {k: round(sum(v) / max(len(v), 1), 2) for k, v in secs.items()}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
