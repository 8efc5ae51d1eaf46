"""The ranked answer and its ablation on a CSP val split, under the protocol (each row's cell is fixed):
MR@1 (dao.evaluate) and seconds per composition of

* ``templates_naive``: the naive lookup (electronegativity-order substitution, similarity order);
* ``templates``: the template index in its learned order (``dao predict``'s template source, judge none);
* ``templates_chgnet``: the same candidates in the CHGNet-aware learned order (single-point energies);
* ``generated_<N>_none``: the first of N flow samples of the cell (today's ``--no-rank`` answer);
* ``generated_<N>_<judge>_r<s>``: the N samples ranked by the judge's energy (``r0`` single point, ``r5``
  after ``--relax-steps`` FIRE steps);
* ``both_<N>_<judge>``: what ``dao predict --judge <judge>`` answers: the first template in the learned order
  (CHGNet-aware with chgnet; relaxed by the judge when judged), else the best generated sample by the judge;
* ``energy_<N>_<judge>_r<s>``: templates and samples together ranked by the judge's energy alone (the
  ordering ``dao predict`` used before; for the ablation).

Every candidate is screened for validity as :func:`dao.ranking.rank_candidates` does and judged once. The
N-candidate sets are the first N of one max(``--candidates``) draw; their generation time is the draw's time
× N / max. The template index is the bundled one (or ``--index``) minus every structure of the split (ids and
StructureMatcher), proposing in ``novel`` mode as ``dao benchmark --ranked`` does.

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_ranked.py --split mp20 --rows 40 \
        [--candidates 8,32,128 --judges none,dao,chgnet --relax-steps 5]

Prints one JSON line per row to stderr and one JSON object at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from _common import data_dir, environment
from dao.candidates import Candidate
from dao.evaluate import evaluate, load_references
from dao.formula import CellComposition
from dao.models.checkpoint import load_generator
from dao.prediction import generated_candidates, sample_formula
from dao.ranked_benchmark import guarded_index
from dao.ranking import judge_structures, template_candidates, validity_flags

SPLITS = {"mp20": "csp/mp_20/val.csv.gz", "perov": "csp/perov_5/val.csv.gz", "mpts": "csp/mpts_52/val.csv.gz"}


def _judged(cands: list[Candidate], judges: list[str], steps: int) -> tuple[dict, dict]:
    """{(judge, relaxed?): [(structure, energy or None) per candidate]} and seconds per setting."""
    valid = [validity_flags(c.structure)["valid"] for c in cands]
    out, secs = {}, {}
    for judge in judges:
        for s in sorted({0, steps}):
            t0 = time.perf_counter()
            res = judge_structures([c.structure for c, v in zip(cands, valid) if v], judge, steps=s)
            it = iter(res)
            rows = []
            for c, v in zip(cands, valid):
                if not v:
                    rows.append((c.structure, None))
                    continue
                st, e, _ = next(it)
                rows.append((st, e if e is not None and validity_flags(st)["valid"] else None))
            out[(judge, s)], secs[(judge, s)] = rows, time.perf_counter() - t0
    return {"valid": valid, **out}, secs


def _answer(members: list[int], judged: dict, judge: str, steps: int) -> tuple:
    """The top candidate among ``members`` (indices in source order): first valid under judge none, else
    the lowest judged energy (unjudged valid ones after, in source order)."""
    ok = [i for i in members if judged["valid"][i]]
    if not ok:
        return None
    if judge == "none":
        return ok[0], None
    rows = judged[(judge, steps)]
    best = min(ok, key=lambda i: (rows[i][1] is None, rows[i][1] or 0.0, i))
    return best, rows[best][0]


def _row(model, index, naive, ref, seed: int, a: argparse.Namespace) -> dict:
    cell = CellComposition.of_structure(ref)
    ntop = max(a.candidates)
    answers: dict = {}
    secs: dict = {}
    t0 = time.perf_counter()
    tpl = index.propose(cell, limit=a.template_limit, novel=True)
    secs["templates"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_top = naive.propose(cell, limit=1, novel=True)
    secs["templates_naive"] = time.perf_counter() - t0
    answers["templates_naive"] = naive_top[0].structure if naive_top else None
    aware = None
    if "chgnet" in a.judges and "chgnet" in index.energy_rankers:
        t0 = time.perf_counter()
        aware = template_candidates([cell], index, 1, novel=True, judge="chgnet")[0]
        aware = [c for c in aware if validity_flags(c.structure)["valid"]]
        secs["templates_chgnet"] = time.perf_counter() - t0
        answers["templates_chgnet"] = aware[0].structure if aware else None
    t0 = time.perf_counter()
    run = sample_formula(cell.formula, ntop, atoms=cell.num_atoms, seed=seed, steps=a.steps, model=model,
                         device="cpu")
    t_gen = time.perf_counter() - t0
    gen = generated_candidates(run)
    cands = tpl + gen
    judged, jsecs = _judged(cands, [j for j in a.judges if j != "none"], a.relax_steps)
    nt = len(tpl)
    r = _answer(list(range(nt)), judged, "none", 0)
    answers["templates"] = cands[r[0]].structure if r else None
    for n in a.candidates:
        gen_n = [nt + k for k in range(len(gen)) if cands[nt + k].info["sample"] < n]
        t_n = t_gen * n / ntop
        share = len(gen_n) / max(len(cands), 1)
        r = _answer(gen_n, judged, "none", 0)
        answers[f"generated_{n}_none"], secs[f"generated_{n}_none"] = (cands[r[0]].structure if r else None), t_n
        r = _answer(list(range(nt)) + gen_n, judged, "none", 0)
        answers[f"both_{n}_none"] = cands[r[0]].structure if r else None
        secs[f"both_{n}_none"] = t_n + secs["templates"]
        for judge in (j for j in a.judges if j != "none"):
            for s in sorted({0, a.relax_steps}):
                for src, mem, extra in (("generated", gen_n, 0.0), ("energy", list(range(nt)) + gen_n,
                                                                   secs["templates"])):
                    key = f"{src}_{n}_{judge}_r{s}"
                    r = _answer(mem, judged, judge, s)
                    answers[key] = None if r is None else r[1]
                    secs[key] = t_n + extra + jsecs[(judge, s)] * len(mem) / max(len(cands), 1)
            # dao predict --judge: the first template in the learned order, relaxed by the judge; else samples
            key = f"both_{n}_{judge}"
            js = jsecs[(judge, a.relax_steps)]
            if judge == "chgnet" and aware is not None:
                if aware:
                    t0 = time.perf_counter()
                    answers[key] = judge_structures([aware[0].structure], judge, steps=a.relax_steps)[0][0]
                    secs[key] = secs["templates_chgnet"] + t_n + time.perf_counter() - t0 + js * share
                    continue
            elif nt and (r := _answer(list(range(nt)), judged, "none", 0)) is not None:
                answers[key] = judged[(judge, a.relax_steps)][r[0]][0]
                secs[key] = secs["templates"] + t_n + js
                continue
            r = _answer(gen_n, judged, judge, a.relax_steps)
            answers[key] = None if r is None else r[1]
            secs[key] = secs["templates"] + t_n + js * share
    return {"answers": answers, "seconds": secs, "templates": nt}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=sorted(SPLITS), default="mp20")
    p.add_argument("--rows", type=int, default=40)
    p.add_argument("--index", default="default")
    p.add_argument("--candidates", default="8,32,128", help="generated-candidate counts (comma-separated)")
    p.add_argument("--template-limit", type=int, default=8)
    p.add_argument("--relax-steps", type=int, default=5)
    p.add_argument("--judges", default="none,dao,chgnet")
    p.add_argument("--model", default="default-flow")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    a.judges = [j for j in a.judges.split(",") if j]
    a.candidates = sorted(int(n) for n in a.candidates.split(",") if n)
    torch.set_num_threads(1)
    refs, ids = load_references(data_dir() / SPLITS[a.split])
    t0 = time.perf_counter()
    index = guarded_index(a.index, refs, ids)
    guard = time.perf_counter() - t0
    naive = index.with_options(en_order=True).with_ranker(None)
    refs = refs[:a.rows]
    model = load_generator(a.model, "cpu")
    for judge in a.judges:  # load each judge once before timing anything
        if judge != "none":
            judge_structures(refs[:1], judge, steps=0)
    preds: dict[str, dict[int, list]] = {}
    secs: dict[str, list[float]] = {}
    with_templates = 0
    for i, ref in enumerate(refs):
        r = _row(model, index, naive, ref, a.seed + i, a)
        with_templates += r["templates"] > 0
        for key, st in r["answers"].items():
            preds.setdefault(key, {})[i] = [st] if st is not None else []
            secs.setdefault(key, []).append(r["seconds"][key])
        print(json.dumps({"row": i, "formula": ref.composition.reduced_formula, "atoms": len(ref),
                          "templates": r["templates"]}), file=sys.stderr, flush=True)
    result = {"split": a.split, "rows": len(refs), "rows_with_a_template": with_templates,
              "args": {k: v for k, v in vars(a).items()}, "index_entries_after_guard": len(index),
              "guard_seconds": round(guard, 1), "environment": environment(torch.device("cpu")), "mr@1": {},
              "seconds_per_composition": {}}
    for key in preds:
        s = evaluate(preds[key], refs, k=1, progress=False).summary
        result["mr@1"][key] = s["match_rate"]
        result["seconds_per_composition"][key] = round(sum(secs[key]) / max(len(secs[key]), 1), 2)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
