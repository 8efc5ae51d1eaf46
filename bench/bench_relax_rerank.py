"""Does relaxing the first template candidates under the judge tell the right one? Per val row: the first
``--k`` template candidates in the judge-aware learned order (the bundled index minus the whole split, novel
mode, as ``dao benchmark --ranked``), each relaxed under CHGNet (FIRE, cell included, ``--steps`` steps,
energies kept every ``--every`` steps) and matched to the row's structure by the CSP protocol's matcher
before and after relaxation. Writes one JSON line per row to ``--out`` (appends; rows already there are
skipped, so an interrupted run resumes) and, with ``--summarise``, prints as one JSON object the MR@1 of the
rule "the first candidate gives way to the lowest-energy one of the first k after s steps when that is lower
by more than δ" over a grid of k, s and δ (:func:`rule_top1`).

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_relax_rerank.py --split mp20 \
        --rows 0:500 --out rr_mp20.jsonl
    python bench/bench_relax_rerank.py --summarise rr_mp20.jsonl [--tune rr_tune.jsonl]
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from _common import data_dir
from bench_templates import SPLITS, _variant
from dao.data.readers import read_csv
from dao.evaluate.canon import canonicalize, rms
from dao.formula import CellComposition
from dao.ranking import template_energy_fn
from dao.templates import TemplateIndex


def matches(pred, ref_canon) -> bool:
    """Whether a structure or its canonical form matches the canonical reference (CSP protocol matcher)."""
    try:
        return rms(pred if hasattr(pred, "comp") else canonicalize(pred), ref_canon)[0] is not None
    except Exception:  # noqa: BLE001 - an unreadable structure does not match
        return False


def resume_and_guard(split: str, out: Path, rows: slice = slice(None)) -> tuple[set[int], list, TemplateIndex]:
    """The rows already in ``out``, the split's structures and the bundled index minus the split's ``rows``
    (default: the whole split; the evaluated rows only is the test-like guard, ``--guard rows``)."""
    done = set()
    if out.exists():
        done = {json.loads(line)["row"] for line in out.read_text().splitlines() if line.strip()}
    crystals, _ = read_csv(data_dir() / SPLITS[split])
    everything = [c.to_structure() for c in crystals]
    index = TemplateIndex.load("default").without(ids=[c.meta["id"] for c in crystals[rows] if c.meta.get("id")],
                                                  structures=everything[rows])
    return done, everything, index


def label_rows(split: str, start: int, stop: int, out: Path, k: int, steps: int, every: int) -> None:
    from pymatgen.io.ase import AseAtomsAdaptor

    from dao.potentials import load_potential
    from dao.relaxation import relax_batch

    done, everything, index = resume_and_guard(split, out)
    idx = _variant(index, "en_radius+ranker_chgnet")
    energy = template_energy_fn("chgnet")
    potential = load_potential("chgnet")
    with out.open("a") as fh:
        for row in range(start, min(stop, len(everything))):
            if row in done:
                continue
            t0 = time.perf_counter()
            ref = everything[row]
            ref_canon = canonicalize(ref)
            cands = idx.propose(CellComposition.of_structure(ref), limit=k, novel=True, judge="chgnet",
                                energy=energy)
            rec = {"row": row, "atoms": len(ref), "candidates": []}
            if cands:
                atoms = [AseAtomsAdaptor.get_atoms(c.structure) for c in cands]
                relaxed = relax_batch(atoms, potential, steps=steps, fmax=0.05, timeout=120.0,
                                      trajectory_every=every)
                for c, r in zip(cands, relaxed):
                    n = len(c.structure)
                    traj = [float(a.get_potential_energy()) / n for a in r.trajectory] if r.trajectory else []
                    final = AseAtomsAdaptor.get_structure(r.atoms) if r.record.get("energy_final") is not None \
                        else None
                    e_fin = r.record.get("energy_final")
                    rec["candidates"].append({
                        "prior": float(c.prior), "judge_energy": c.info.get("judge_energy"),
                        "match": matches(c.structure, ref_canon),
                        "match_relaxed": bool(final is not None and matches(final, ref_canon)),
                        "status": r.record.get("status"), "steps": r.record.get("steps"),
                        "energy_final": e_fin if e_fin is not None and math.isfinite(e_fin) else None,
                        "energies": traj})
            rec["seconds"] = round(time.perf_counter() - t0, 2)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()


def _energy_at(c: dict, step: int, every: int) -> float | None:
    """The candidate's energy per atom after ``step`` FIRE steps (its last one when it stopped earlier)."""
    e = c["energies"]
    if not e:
        return None
    return e[min(step // every, len(e) - 1)]


def rule_top1(rows: list[dict], k: int, step: int, delta: float, every: int, relaxed: bool = True) -> float:
    """MR@1 when the first candidate gives way to the lowest-energy one of the first ``k`` after ``step``
    steps if that is lower by more than ``delta`` eV/atom (k = 1: the learned order)."""
    key = "match_relaxed" if relaxed else "match"
    hits = 0
    for r in rows:
        cands = r["candidates"]
        if not cands:
            continue
        pick = 0
        es = [_energy_at(c, step, every) for c in cands[:k]]
        if k > 1 and es[0] is not None:
            j = min((i for i in range(len(es)) if es[i] is not None), key=lambda i: es[i])
            if es[0] - es[j] > delta:
                pick = j
        hits += bool(cands[pick][key])
    return hits / max(len(rows), 1)


def summarise(paths: list[Path], every: int) -> dict:
    rows = [json.loads(line) for p in paths for line in p.read_text().splitlines() if line.strip()]
    out = {"rows": len(rows), "seconds_per_row": round(sum(r["seconds"] for r in rows) / max(len(rows), 1), 2),
           "first_unrelaxed": rule_top1(rows, 1, 0, 0.0, every, relaxed=False),
           "first_relaxed": rule_top1(rows, 1, 0, 0.0, every),
           "any_of_k": sum(any(c["match_relaxed"] for c in r["candidates"]) for r in rows) / max(len(rows), 1)}
    steps = sorted({0, 5, 10, 20, max((len(c["energies"]) - 1) * every for r in rows for c in r["candidates"])
                    if rows else 0})
    for k in (2, 3, 5):
        for step in steps:
            for delta in (0.0, 0.005, 0.01, 0.02, 0.05):
                out[f"k{k}_s{step}_d{delta}"] = round(rule_top1(rows, k, step, delta, every), 4)
    return out


def row_bench_parser(doc: str, rows: str) -> argparse.ArgumentParser:
    """The options of every per-row bench (this one, bench_sample_votes, bench_template_refine)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--split", choices=sorted(SPLITS), default="mp20")
    p.add_argument("--rows", default=rows, help="start:stop of the split's rows")
    p.add_argument("--out", type=Path, help="JSON-lines file to append the labelled rows to")
    p.add_argument("--summarise", type=Path, nargs="*", help="JSON-lines files to score instead of labelling")
    return p


def parse_row_bench(p: argparse.ArgumentParser, summarise) -> tuple[argparse.Namespace, int, int] | None:
    """Parse the options (one torch thread); with --summarise print ``summarise(options)`` as JSON and return
    None, else (options, first row, stop row)."""
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.summarise:
        print(json.dumps(summarise(a), indent=1))
        return None
    if a.out is None:
        p.error("--out is required unless --summarise")
    start, stop = (int(x) for x in a.rows.split(":"))
    return a, start, stop


def main() -> None:
    p = row_bench_parser(__doc__, "0:500")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--every", type=int, default=5)
    parsed = parse_row_bench(p, lambda a: summarise(a.summarise, a.every))
    if parsed:
        a, start, stop = parsed
        label_rows(a.split, start, stop, a.out, a.k, a.steps, a.every)


if __name__ == "__main__":
    main()
