"""``report.html`` of ``dao evaluate`` and ``dao benchmark``: the headline numbers, the report's plots and
one table row per reference structure with its outcome and, for a miss, the reason. Self-contained."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from dao.report.html import esc, img, link, table, write_page

REPORT_NAME = "report.html"
#: the headline summary keys shown at the top, in order (absent ones are skipped)
HEADLINE = ("n_references", "k", "match_rate", "rmse", "match_rate_unfiltered", "rmse_unfiltered",
            "validity_rate", "stability_rate")
#: the per-row columns shown (a subset of per_structure.csv, which has them all)
ROW_COLUMNS = ("ref_index", "material_id", "formula", "n_atoms", "matched", "rms", "best_sample", "first_match_k",
               "reason", "matched_unfiltered", "reason_unfiltered", "min_e_above_hull")


def _headline(summary: Mapping[str, Any]) -> list[tuple[str, Any]]:
    rows = [(k.replace("_", " "), summary[k]) for k in HEADLINE if k in summary and not isinstance(summary[k], dict)]
    gen = summary.get("generation")
    if isinstance(gen, dict):
        rows += [(f"generation {k.replace('_', ' ')}", v) for k, v in gen.items() if not isinstance(v, (dict, list))]
    after = summary.get("after_relaxation")
    if isinstance(after, dict):
        rows += [(f"after relaxation: {k.replace('_', ' ')}", v) for k, v in after.items()
                 if not isinstance(v, (dict, list))]
    return rows


def _sample_files(out: Path) -> dict[str, list[str]]:
    """``dao benchmark``'s sample CIFs ``out/predictions/<row>_<sample>.cif`` by row (one folder listing)."""
    found: dict[str, list[str]] = {}
    folder = out / "predictions"
    if folder.is_dir():
        for f in sorted(folder.iterdir(), key=lambda p: p.name):
            row, _, sample = f.stem.rpartition("_")
            if f.suffix == ".cif" and row and sample.isdigit():
                found.setdefault(row, []).append(f.name)
    return found


def _row_cells(rec: Mapping[str, Any], prediction_links: bool) -> list[Any]:
    cells: list[Any] = []
    for col in ROW_COLUMNS:
        v = rec.get(col)
        if col == "reason" and v:
            cells.append(f'<span class="miss">{esc(v)}</span>')
        elif col == "matched":
            cells.append('<span class="ok">yes</span>' if v else '<span class="miss">no</span>')
        elif col == "best_sample" and v is not None and prediction_links:
            cells.append(link(f"predictions/{rec.get('ref_index')}_{v}.cif", str(v)))
        else:
            cells.append(esc(v))
    return cells


def _rows_table(out: Path, records: Sequence[Mapping[str, Any]], prediction_links: bool) -> str:
    files = _sample_files(out) if prediction_links else {}
    header = list(ROW_COLUMNS) + (["sample CIFs"] if prediction_links else [])
    rows = [_row_cells(r, prediction_links) + ([" ".join(link(f"predictions/{f}", Path(f).stem.rpartition("_")[2])
                                                         for f in files.get(str(r.get("ref_index")), []))]
                                               if prediction_links else []) for r in records]
    return table(header, rows, raw=range(len(header)))


def write_evaluation_report(out_dir: str | Path, summary: Mapping[str, Any], records: Sequence[Mapping[str, Any]],
                            plots: Mapping[str, bytes], title: str = "") -> Path:
    """Write ``report.html`` into ``out_dir``: headline numbers, ``plots`` (caption → PNG bytes), the miss
    reasons counted, and every row of ``records`` (links to ``predictions/<row>_<sample>.cif`` where that
    folder exists, as ``dao benchmark`` writes it)."""
    out = Path(out_dir)
    is_benchmark = isinstance(summary.get("generation"), dict)
    prediction_links = (out / "predictions").is_dir()
    reasons = Counter(str(r.get("reason")) for r in records if r.get("reason"))
    parts = [table([], _headline(summary)),
             "<p>files: " + " · ".join(link(f, f) for f in ("summary.json", "per_structure.csv")) + "</p>",
             '<div class="figs">' + "".join(img(png, caption) for caption, png in plots.items()) + "</div>",
             "<h2>misses by reason</h2>",
             table(["reason", "rows"], sorted(reasons.items(), key=lambda kv: -kv[1])) if reasons
             else "<p>every reference row was matched</p>",
             f"<h2>per reference structure ({len(records)} rows)</h2>",
             _rows_table(out, records, prediction_links)]
    heading = title or ("DAO benchmark" if is_benchmark else "DAO evaluation")
    return write_page(out / REPORT_NAME, heading, "\n".join(parts))
