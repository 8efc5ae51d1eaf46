"""Files in, report out: what ``dao evaluate`` does, as a library function."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pymatgen.core import Structure

from dao.evaluate.core import EnergyScorer, EvaluationResult, evaluate
from dao.evaluate.io import load_predictions_with_report, load_references
from dao.evaluate.report import write_report
from dao.structure_io import write_cif

CACHE_NAME = "cache.jsonl"
RELAXED_CACHE_NAME = "cache_relaxed.jsonl"
AFTER_RELAXATION_KEYS = ("match_rate", "rmse", "match_rate_unfiltered", "rmse_unfiltered")


def write_relaxed(relaxed: dict[int, list[Any]], ids: Sequence[str], folder: Path) -> None:
    """Write the relaxed samples as ``<material_id>_<sample>.cif`` (unreadable / failed / missing skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, row in relaxed.items():
        for j, s in enumerate(row):
            if isinstance(s, Structure):
                write_cif(s, folder / f"{ids[i]}_{j}.cif")


def evaluate_files(pred_path: Path, ref_path: Path, out_dir: Path, *, k: int | None = None, workers: int = 1,
                   fresh: bool = False, progress: bool = True, energy_scorer: EnergyScorer | None = None
                   ) -> tuple[EvaluationResult, dict[str, Path]]:
    """Load references and predictions, score them (resumable through ``out_dir/cache.jsonl``; ``fresh``
    discards earlier caches) and write the report into ``out_dir``; returns the result and the report's
    paths. With an energy scorer that relaxes (it exposes ``relaxed``), the relaxed samples are scored too
    (``summary["after_relaxation"]``) and written to ``out_dir/relaxed/``; a scorer's ``describe()`` is
    merged into ``summary["stability"]``. Bad inputs raise ``OSError`` or ``ValueError``."""
    refs, ids = load_references(ref_path)
    preds, load_report = load_predictions_with_report(pred_path, ids, k)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh:
        for old in (out_dir / CACHE_NAME, out_dir / RELAXED_CACHE_NAME):
            if old.exists():
                old.unlink()
    result = evaluate(preds, refs, k=k, workers=workers, cache_path=out_dir / CACHE_NAME, progress=progress,
                      reference_ids=ids, energy_scorer=energy_scorer)
    after = None
    if result.relaxed_predictions is not None:
        after = evaluate(result.relaxed_predictions, refs, k=result.summary["k"], workers=workers,
                         cache_path=out_dir / RELAXED_CACHE_NAME, progress=progress, reference_ids=ids)
    result.summary["input"] = {"pred": str(pred_path), "ref": str(ref_path), **load_report.as_dict()}
    describe = getattr(energy_scorer, "describe", None)
    if describe is not None:
        result.summary["stability"].update(describe())
    if after is not None:
        result.summary["after_relaxation"] = {key: after.summary[key] for key in AFTER_RELAXATION_KEYS}
        write_relaxed(result.relaxed_predictions, ids, out_dir / "relaxed")
    return result, write_report(result, out_dir)
