"""Template candidates alone on the CSP val splits: MR@1 and MR@5 (the CSP protocol, dao.evaluate) of
naive electronegativity-order substitution vs similarity-ranked assignments, volume error, seconds per
composition. The index is the bundled one (or --index) minus the evaluated split (ids and StructureMatcher);
candidates are proposed in ``novel`` mode as ``dao benchmark --ranked`` does (a structure the guarded index
still holds for the composition is another polymorph; ``--known`` proposes those first instead).

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python bench/bench_templates.py [--mp20 500 --perov 500
        --mpts 300 --variants naive,mendeleev,...]

Prints one JSON object. See docs/templates.md for the measured numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from _common import data_dir
from dao.constants import TEMPLATE_GUARDS
from dao.data.readers import read_csv
from dao.evaluate import evaluate
from dao.formula import CellComposition
from dao.ranking import template_energy_fn
from dao.templates import TemplateIndex
from dao.templates.ranker import TemplateRanker, default_ranker_path

SPLITS = {"mp20": "csp/mp_20/val.csv.gz", "perov": "csp/perov_5/val.csv.gz", "mpts": "csp/mpts_52/val.csv.gz"}
VARIANTS = ("naive", "mendeleev", "en_radius", "en", "embedding", "substitution",
            "en_radius+vote", "mendeleev+vote", "en_radius+ranker", "en_radius+ranker_chgnet")


def _variant(index: TemplateIndex, name: str, volume: str = "ratio", ranker: str | None = None) -> TemplateIndex:
    """``naive``, ``<similarity>``, ``<similarity>+vote``, ``<similarity>+ranker`` (the learned order) or
    ``<similarity>+ranker_<judge>`` (the judge-aware learned order: the judge's single-point energies scored
    too; the judges with a bundled judge-aware ranker: chgnet)."""
    if name == "naive":
        return index.with_options(similarity="en_radius", volume=volume, en_order=True).with_ranker(None)
    similarity, _, mode = name.partition("+")
    plain = index.with_options(similarity=similarity, volume=volume, en_order=False, vote=mode == "vote")
    learned = TemplateRanker.load(ranker or default_ranker_path()) if mode.startswith("ranker") else None
    judge = mode[len("ranker_"):] if mode.startswith("ranker_") else None
    aware = {judge: TemplateRanker.load(default_ranker_path(judge))} if judge else None
    return plain.with_ranker(learned, aware)


def run_split(index: TemplateIndex, split: str, n: int, variants: list[str], k: int, ranker: str | None = None,
              template_volume: bool = False, novel: bool = True, guard: str = "split") -> dict:
    crystals, _ = read_csv(data_dir() / SPLITS[split])
    everything = [c.to_structure() for c in crystals]
    t0 = time.perf_counter()
    removed = crystals if guard == "split" else crystals[:n]  # "rows": only the evaluated rows leave
    guarded = index.without(ids=[c.meta["id"] for c in removed if c.meta.get("id")],
                            structures=everything[:len(removed)])
    out = {"rows": min(n, len(crystals)), "guard": guard, "index_entries": len(guarded),
           "removed": len(index) - len(guarded), "guard_seconds": round(time.perf_counter() - t0, 1)}
    refs = everything[:n]
    for name in variants:
        for volume in (("ratio", "template") if name == variants[-1] and template_volume else ("ratio",)):
            idx = _variant(guarded, name, volume, ranker)
            t0 = time.perf_counter()
            judge = name.partition("+ranker_")[2] or None
            energy = template_energy_fn(judge) if judge else None
            if energy:
                energy(refs[:1])  # load the judge before timing
                t0 = time.perf_counter()
            preds = {i: [c.structure for c in idx.propose(CellComposition.of_structure(r), limit=k, novel=novel,
                                                          judge=judge, energy=energy)]
                     for i, r in enumerate(refs)}
            sec = (time.perf_counter() - t0) / max(len(refs), 1)
            s = evaluate(preds, refs, k=k, progress=False).summary
            vol = [abs(p[0].volume / r.volume - 1) for p, r in zip(preds.values(), refs) if p]
            key = name if volume == "ratio" else f"{name}+template_volume"
            out[key] = {"mr@1": s["match_rate_vs_k"][0], f"mr@{k}": s["match_rate_vs_k"][-1],
                        "mr@1_unfiltered": s["match_rate_unfiltered_vs_k"][0],
                        f"mr@{k}_unfiltered": s["match_rate_unfiltered_vs_k"][-1],
                        "rows_with_a_template": sum(bool(p) for p in preds.values()) / max(len(refs), 1),
                        "median_abs_volume_error_top1": statistics.median(vol) if vol else None,
                        "seconds_per_composition": round(sec, 4)}
            print(json.dumps({split: {key: out[key]}}), flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default="default")
    p.add_argument("--mp20", type=int, default=500)
    p.add_argument("--perov", type=int, default=500)
    p.add_argument("--mpts", type=int, default=300)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--ranker", default=None, help="ranker file for the +ranker variants (default: the bundled one)")
    p.add_argument("--template-volume", action="store_true",
                   help="also score the last variant with the template's own volume (no Σr³ rescaling)")
    p.add_argument("--known", action="store_true", help="propose the known structures of a composition first")
    p.add_argument("--guard", choices=TEMPLATE_GUARDS, default="split",
                   help="remove the whole split from the index (default) or only the evaluated rows (and their "
                        "StructureMatcher duplicates): the index a test-split evaluation has, which holds all of val")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, from: " + ", ".join(VARIANTS))
    a = p.parse_args()
    torch.set_num_threads(1)
    index = TemplateIndex.load(a.index)
    variants = [v for v in a.variants.split(",") if v]
    result = {"index_entries": len(index), "k": a.k, "novel": not a.known, "guard": a.guard,
              **{s: run_split(index, s, n, variants, a.k, a.ranker, a.template_volume, not a.known, a.guard)
                 for s, n in (("mp20", a.mp20), ("perov", a.perov), ("mpts", a.mpts)) if n > 0}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
