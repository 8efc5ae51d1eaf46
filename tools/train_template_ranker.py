"""Train the learned template ranker (docs/templates.md, 'Learned ranking') leave-one-out on a template index.

The index loses every structure of the ``--exclude`` splits first (the val splits we report on: by id and
StructureMatcher), and targets whose reduced formula occurs in them are not drawn, so nothing the benchmark
scores was seen. Each drawn target is proposed for with its own structure (and every same-formula entry that
matches it) left out of the index; its first candidates are labelled by the CSP protocol's StructureMatcher.

    DAO_DATA_DIR=/work/shared/data OMP_NUM_THREADS=1 python tools/train_template_ranker.py \
        --targets 1500 --out src/dao/resources/template_ranker.npz

Prints JSON: rows, candidates, positives, and the held-out (20 % of targets) top-1 rate of the similarity
order vs the ranker. ``--features FILE`` caches the labelled features (reused when the file exists).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from dao.data.readers import read_any
from dao.evaluate.canon import canonicalize, rms
from dao.formula import CellComposition, reduced_formula_of
from dao.ranking import single_point_energies
from dao.templates import TemplateIndex
from dao.templates.ranker import FEATURES, RERANKED, TemplateRanker, features, top1_rate

EXCLUDE = ("csp/mp_20/val.csv.gz", "csp/mpts_52/val.csv.gz", "csp/perov_5/val.csv.gz")
WEIGHTS = {"mp_20/train": 2.0, "pretrain/mp_20_biternary": 1.0, "pretrain/mp_3dsc_sources": 1.0,
           "pretrain/wbm_sample": 0.4, "perov_5/train": 0.3}  # carbon-24 left out: one formula, ~800 polymorphs


#: the drawing weight of a split's rows after the first N (``--draw-rest``), as for MP-20 train
REST_WEIGHT = 2.0


def _split_rows(value: str) -> tuple[str, tuple[int, float]]:
    """``SPLIT:N[:W]`` → (split, (N, drawing weight W of its other rows, default REST_WEIGHT))."""
    split, n, *w = value.split(":")
    try:
        if split not in EXCLUDE or len(w) > 1:
            raise ValueError
        return split, (int(n), float(w[0]) if w else REST_WEIGHT)
    except ValueError:
        raise SystemExit(f"--draw-rest wants SPLIT:N[:W] with SPLIT one of {', '.join(EXCLUDE)}, got {value!r}") from None


def _targets(index: TemplateIndex, banned: set[str], n: int, seed: int, weights: dict[str, float] = WEIGHTS
             ) -> list[int]:
    a = index.arrays
    w = np.zeros(len(index))
    for i in range(len(index)):
        src = str(a.sources[a.source[i]])
        fam = next((v for k, v in weights.items() if k in src), 0.0)
        if fam and reduced_formula_of(index._numbers(i).tolist()) not in banned:
            w[i] = fam
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(len(index), size=min(n, int((w > 0).sum())), replace=False, p=w / w.sum()).tolist())


def _energies(structures: list, judges: dict, steps: int, top: int | None = None) -> dict[str, np.ndarray]:
    """Per-atom energy of each candidate under each judge: single point (``e_<judge>``) and, with ``steps``,
    after that many FIRE steps (``r_<judge>``; only the first ``top`` candidates when given); NaN where the
    judge fails or did not relax."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from dao.relaxation import relax_batch

    out: dict[str, np.ndarray] = {}
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    for name, potential in judges.items():
        single = single_point_energies(structures, name) if structures else []  # what dao predict computes
        out[f"e_{name}"] = np.array([np.nan if v is None else v for v in single], dtype=float)
        if steps:
            some = atoms[:top] if top is not None else atoms
            rel = relax_batch(some, potential, steps=steps, fmax=0.05, timeout=60.0) if some else []
            relaxed = [r.record.get("energy_final") if r.record["status"] != "error"
                       and r.record.get("energy_final") is not None else np.nan for r in rel]
            out[f"r_{name}"] = np.array(relaxed + [np.nan] * (len(atoms) - len(relaxed)), dtype=float)
    return out


def _label(index: TemplateIndex, target: int, by_formula: dict[str, list[int]], judges: dict | None = None,
           steps: int = 0, top: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    truth = index.structure(target)
    formula = reduced_formula_of(index._numbers(target).tolist())
    sm = StructureMatcher()
    leaked = {target} | {j for j in by_formula.get(formula, []) if j != target and sm.fit(truth, index.structure(j))}
    scanned = index.scan(CellComposition.of_structure(truth), depth=64, skip=leaked.__contains__,
                         novel=True)[:RERANKED]
    ref = canonicalize(truth)
    y = [float(rms(canonicalize(c.structure), ref)[0] is not None) for c, _ in scanned]
    x = [features(f) for _, f in scanned]
    extra = _energies([c.structure for c, _ in scanned], judges or {}, steps, top)
    return np.array(x).reshape(-1, len(FEATURES)), np.array(y), extra, [c.structure for c, _ in scanned]


def _pack(xs: list, ys: list, groups: list, extras: list) -> dict[str, np.ndarray]:
    keys = extras[0].keys() if extras else ()
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "group": np.concatenate(groups),
            **{k: np.concatenate([e[k] for e in extras]) for k in keys}}


def _write_structures(path: str, structures: list, ys: list, groups: list, append: bool) -> None:
    """The labelled candidates as extxyz frames (info: group, label, position in the similarity order), for
    training a judge on them (tools/train_judge.py); ``append`` adds targets to the frames already written."""
    from dao.structure_io import write_extxyz

    infos = [{"group": int(g[0]), "label": int(lab), "position": j}
             for y, g in zip(ys, groups) for j, lab in enumerate(y)]
    write_extxyz([s for group in structures for s in group], infos, Path(path), append=append)


def collect(index: TemplateIndex, targets: list[int], budget: float, cache: str | None = None,
            judges: dict | None = None, steps: int = 0, top: int | None = None,
            structures: str | None = None) -> dict[str, np.ndarray]:
    by_formula: dict[str, list[int]] = {}
    for i in range(len(index)):
        by_formula.setdefault(reduced_formula_of(index._numbers(i).tolist()), []).append(i)
    xs, ys, groups, extras, kept, t0 = [], [], [], [], [], time.time()
    written = 0  # targets whose candidates are in the structures file (new ones are appended)

    def flush_structures() -> None:
        nonlocal written
        if structures and len(kept) > written:
            _write_structures(structures, kept[written:], ys[written:], groups[written:], append=written > 0)
            written = len(kept)

    for g, t in enumerate(targets):
        if time.time() - t0 > budget:
            break
        x, y, extra, cands = _label(index, t, by_formula, judges, steps, top)
        xs.append(x), ys.append(y), groups.append(np.full(len(y), g)), extras.append(extra)
        kept.append(cands if structures else [])
        if g % 50 == 0:
            print(json.dumps({"targets_done": g, "seconds": round(time.time() - t0)}), file=sys.stderr, flush=True)
            if cache:  # a partial cache survives an interrupted run (rerun with --features to fit on it)
                np.savez_compressed(cache, **_pack(xs, ys, groups, extras))
            flush_structures()
    flush_structures()
    return _pack(xs, ys, groups, extras)


def pool(paths: list[str], judge: str | None = None) -> dict[str, np.ndarray]:
    """Labelled-feature caches pooled, groups renumbered, a target labelled in several caches (the same
    candidate features) kept once. Caches written before the ``exact_chemistry``
    feature was retired (one column more) lose that column and its rows (unsubstituted known structures,
    never right in leave-one-out). With ``judge``, only caches with ``e_<judge>`` are used and the
    :data:`~dao.templates.ranker.ENERGY_FEATURE` column is appended."""
    from dao.templates.ranker import relative_energies

    xs, ys, gs, offset, seen = [], [], [], 0, set()
    for path in paths:
        with np.load(path) as z:
            x, y, g = z["x"], z["y"], z["group"]
            e = z[f"e_{judge}"] if judge and f"e_{judge}" in z.files else None
        if judge and e is None:
            print(f"{path}: no e_{judge}, left out", file=sys.stderr)
            continue
        if x.shape[1] == len(FEATURES) + 1:  # the retired exact_chemistry column (index 7)
            keep = x[:, 7] < 0.5
            x, y, g = np.delete(x[keep], 7, axis=1), y[keep], g[keep]
            e = None if e is None else e[keep]
        if e is not None:
            col = np.zeros(len(y))
            for k in np.unique(g):
                m = g == k
                col[m] = relative_energies([v if np.isfinite(v) else None for v in e[m]])
            x = np.column_stack([x, col])
        fresh = np.ones(len(y), dtype=bool)
        for k in np.unique(g):  # a target drawn by several labelling runs counts once
            m = g == k
            key = np.round(x[m][:, :len(FEATURES)], 6).tobytes()
            fresh[m] = key not in seen
            seen.add(key)
        x, y, g = x[fresh], y[fresh], g[fresh]
        g = np.unique(g, return_inverse=True)[1].reshape(-1) + offset
        offset = int(g.max()) + 1 if len(g) else offset
        xs.append(x), ys.append(y), gs.append(g)
    return {"x": np.concatenate(xs), "y": np.concatenate(ys), "group": np.concatenate(gs)}


def split_eval(data: dict[str, np.ndarray], seed: int) -> dict[str, float]:
    groups = np.unique(data["group"])
    rng = np.random.default_rng(seed)
    held = set(rng.choice(groups, size=len(groups) // 5, replace=False).tolist())
    test = np.array([g in held for g in data["group"]])
    model = TemplateRanker.fit(data["x"][~test], data["y"][~test], groups=data["group"][~test])
    per = [np.flatnonzero((data["group"] == g)) for g in sorted(held)]
    labels = [data["y"][p] for p in per]
    rank0 = [-np.arange(len(p), dtype=float) for p in per]
    learned = [model.score(data["x"][p]) for p in per]
    return {"held_out_targets": len(per), "top1_similarity_order": top1_rate(rank0, labels),
            "top1_ranker": top1_rate(learned, labels), "top1_oracle": float(np.mean([lab.max() > 0 for lab in labels]))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", default="default")
    p.add_argument("--targets", type=int, default=1500)
    p.add_argument("--budget", type=float, default=3600, help="seconds for labelling at most")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", default=None, help="cache of labelled features (.npz)")
    p.add_argument("--pool", nargs="+", default=None,
                   help="fit on these labelled-feature caches pooled, instead of labelling")
    p.add_argument("--with-energy", default=None, metavar="JUDGE",
                   help="with --pool: fit a judge-aware ranker on the caches that recorded e_JUDGE")
    p.add_argument("--out", default=None)
    p.add_argument("--energies", default="", help="judges whose candidate energies are recorded (chgnet,dao)")
    p.add_argument("--relax-steps", type=int, default=0, help="also record energies after this many FIRE steps")
    p.add_argument("--relax-top", type=int, default=None, help="relax only the first this many candidates")
    p.add_argument("--structures", default=None, help="also write the labelled candidates here (.extxyz)")
    p.add_argument("--draw-rest", action="append", default=[], metavar="SPLIT:N[:W]",
                   help="exclude only the first N rows of this excluded split (the rows a benchmark reports) and "
                        "draw targets from its other rows too, with weight W (default 2, as MP-20 train), e.g. "
                        "csp/mpts_52/val.csv.gz:300")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if a.pool:
        data = pool(a.pool, a.with_energy)
    elif a.features and Path(a.features).exists():
        with np.load(a.features) as z:
            data = {k: z[k] for k in z.files}
    else:
        root = Path(os.environ["DAO_DATA_DIR"])
        rest = dict(_split_rows(v) for v in a.draw_rest)
        crystals = [c for e in EXCLUDE for c in read_any(root / e)[0][:rest.get(e, (None,))[0]]]
        index = TemplateIndex.load(a.index).without(ids=[c.meta["id"] for c in crystals if c.meta.get("id")],
                                                    structures=[c.to_structure() for c in crystals])
        banned = {reduced_formula_of(c.atomic_numbers.tolist()) for c in crystals}
        from dao.potentials import load_potential

        judges = {name: load_potential(name) for name in a.energies.split(",") if name}
        weights = {**WEIGHTS, **{e.removeprefix("csp/").removesuffix(".csv.gz"): w for e, (_, w) in rest.items()}}
        data = collect(index, _targets(index, banned, a.targets, a.seed, weights), a.budget, a.features, judges,
                       a.relax_steps, a.relax_top, a.structures)
        if a.features:
            np.savez_compressed(a.features, **data)
    result = {"candidates": int(len(data["y"])), "targets": int(len(np.unique(data["group"]))),
              "positives": int(data["y"].sum()), **split_eval(data, a.seed)}
    if a.out:
        meta = json.dumps({"command": " ".join(sys.argv), "excluded": list(EXCLUDE),
                           "drawn_from_rest": a.draw_rest, **result})
        TemplateRanker.fit(data["x"], data["y"], groups=data["group"], meta=meta).save(a.out)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
