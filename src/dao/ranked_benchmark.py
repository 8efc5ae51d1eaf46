"""``dao benchmark --ranked``: the ranked answer of ``dao predict`` on a CSP split, beside the naive template
lookup (docs/design.md, 'Ranked prediction').

The template index loses every structure of the split file first (by id and by StructureMatcher, the
leakage guard of :meth:`dao.templates.TemplateIndex.without`): a template that *is* the answer would make
the number worthless. ``guard="rows"`` removes only the evaluated rows (the first ``limit``) and their
StructureMatcher duplicates: the index an evaluation on a held-out test split has, which keeps all of val.
Each row's reference cell (the protocol fixes composition and atom count) gets
:func:`dao.prediction.rank_formula`'s top k (templates and generated candidates of that cell, the judge);
the naive baseline is the guarded index's electronegativity-order substitution ranked by similarity alone,
its top k for the reference cell. Both are
scored by :func:`dao.evaluate.evaluate` and written as ``<out>/ranked/`` and ``<out>/naive_template/``
(predictions as ``<row>_<j>.cif``, the same report files as ``dao evaluate``). Rows already written are not
recomputed on a rerun.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dao.constants import TEMPLATE_GUARDS
from dao.errors import DAOError
from dao.evaluate import evaluate, load_predictions, load_references, write_report
from dao.formula import CellComposition
from dao.models.checkpoint import bundled_generator_for, load_generator
from dao.ranking import RankOptions
from dao.runtime import resolve_device
from dao.structure_io import atomic_write_text, write_cif
from dao.templates import TemplateIndex

#: the two answers scored, each in its own subfolder of the output folder
ANSWERS = ("ranked", "naive_template")


def _done(folder: Path, row: int) -> bool:
    return (folder / f"{row}.done").is_file()


def _claim_settings(out: Path, settings: dict[str, Any]) -> None:
    """Record the run's settings in ``out/settings.json``; a rerun (which reuses the rows written) must
    have the same ones, else its answers would mix two benchmarks."""
    path = out / "settings.json"
    written = any(next((out / name / "predictions").glob("*.done"), None) for name in ANSWERS)
    if written and not path.is_file():
        raise DAOError(f"{out} holds ranked benchmark rows without a settings.json (an older DAO wrote it): "
                       "use a new --out folder")
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            raise DAOError(f"{path} is corrupt: remove it or use a new --out folder") from None
        diff = sorted(key for key in settings.keys() | old.keys() if old.get(key) != settings.get(key))
        if diff:
            raise DAOError(f"{out} holds a ranked benchmark with other settings ({', '.join(diff)} differ): "
                           "use a new --out folder")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(settings, indent=1) + "\n")


def _write_row(folder: Path, row: int, structures: list[Any]) -> None:
    for j, s in enumerate(structures):
        write_cif(s, folder / f"{row}_{j}.cif")
    (folder / f"{row}.done").write_text(f"{len(structures)}\n")  # a row with no candidate is scored as missing


def guarded_index(templates: str | Path, references: list[Any], ids: list[str]) -> TemplateIndex:
    """The template index ``templates`` minus every reference (ids and StructureMatcher)."""
    return TemplateIndex.load(templates).without(ids=ids, structures=references)


def run_ranked_benchmark(split: str | Path, out: str | Path, k: int = 1, limit: int | None = None,
                         model: str = "default", seed: int = 0, device: str = "auto",
                         options: RankOptions | None = None, workers: int = 1, progress: bool = True,
                         guard: str = "split") -> dict[str, Any]:
    """Score the ranked answer and the naive template baseline on ``split`` (see the module docstring);
    returns ``{"ranked": summary, "naive_template": summary, "seconds_per_composition": ...}``."""
    from dao.prediction import rank_formula

    out = Path(out)
    opts = options or RankOptions()
    if guard not in TEMPLATE_GUARDS:
        raise DAOError(f"unknown guard {guard!r}: use one of {', '.join(TEMPLATE_GUARDS)}")
    _claim_settings(out, {"split": str(Path(split).resolve()), "k": k, "limit": limit, "model": str(model),
                          "seed": seed, "judge": opts.judge, "candidates": opts.candidates, "guard": guard,
                          "templates": str(opts.templates)})
    refs, ids = load_references(split)
    t0 = time.time()
    removed = slice(limit) if guard == "rows" else slice(None)  # the evaluated rows, or the whole split
    index = guarded_index(opts.templates or "default", refs[removed], ids[removed])
    guard_seconds = time.time() - t0
    if limit is not None:
        refs, ids = refs[:limit], ids[:limit]
    naive = index.with_options(en_order=True).with_ranker(None)
    opts = dataclasses.replace(opts, templates=index, novel=True)
    dev = resolve_device(device)
    gen = load_generator(bundled_generator_for("default-flow" if model == "default" else model, None), dev)
    folders = {name: out / name / "predictions" for name in ANSWERS}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    todo = [i for i in range(len(refs)) if not all(_done(f, i) for f in folders.values())]
    for i in tqdm(todo, desc="ranking", unit="comp", disable=not progress):
        cell = CellComposition.of_structure(refs[i])
        ts = time.time()
        _, ranking = rank_formula(cell.formula, atoms=cell.num_atoms, seed=seed + i, model=gen, device=str(dev),
                                  options=opts)  # the protocol fixes the cell: candidates of that cell only
        seconds += time.time() - ts
        _write_row(folders["ranked"], i, ranking.structures[:k])
        _write_row(folders["naive_template"], i, [c.structure for c in naive.propose(cell, limit=k, novel=True)])
    result: dict[str, Any] = {"split": str(split), "rows": len(refs), "k": k, "judge": opts.judge,
                              "candidates": opts.candidates, "guard": guard, "index_entries_after_guard": len(index),
                              "guard_seconds": round(guard_seconds, 1),
                              "seconds_per_composition_this_run": round(seconds / max(len(todo), 1), 2)}
    for name, folder in folders.items():
        preds = load_predictions(folder, ids, k=k) if any(folder.glob("*.cif")) else {}  # no row had an answer
        ev = evaluate(preds, refs, k=k, workers=workers, progress=progress,
                      cache_path=out / name / "cache.jsonl", reference_ids=ids)
        write_report(ev, out / name)
        result[name] = {key: ev.summary.get(key) for key in ("match_rate", "rmse", "match_rate_unfiltered",
                                                            "match_rate_vs_k")}
    return result
