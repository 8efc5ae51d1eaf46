"""Writing the evaluation report: summary.json, per_structure.csv and two PNG plots (atomic writes), and the
summary as the few lines ``dao evaluate`` prints."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dao.evaluate.core import EvaluationResult
from dao.report.evaluation import write_evaluation_report
from dao.report.html import figure_png

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PER_STRUCTURE_COLUMNS = [
    "ref_index", "material_id", "formula", "n_atoms", "ref_valid", "n_samples", "n_valid",
    "matched", "rms", "best_sample", "first_match_k", "reason",
    "matched_unfiltered", "rms_unfiltered", "best_sample_unfiltered", "first_match_k_unfiltered",
    "reason_unfiltered", "min_e_above_hull", "sample_outcomes", "detail",
]


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the report normal permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):  # numpy scalars
        return _jsonable(x.item())
    return x


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _png(fig: Figure) -> bytes:
    return figure_png(fig, dpi=120)


def _plot_match_rate(summary: dict[str, Any]) -> bytes:
    from matplotlib.figure import Figure

    K = summary["k"]
    ks = list(range(1, K + 1))
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(111)
    ax.plot(ks, [100 * r for r in summary["match_rate_vs_k"]], "o-", label="valid-gated")
    ax.plot(ks, [100 * r for r in summary["match_rate_unfiltered_vs_k"]], "s--", label="unfiltered")
    ax.set_xlabel("k (samples per reference)")
    ax.set_ylabel("match rate (%)")
    ax.set_title(f"match rate vs k  (n = {summary['n_references']})")
    ax.set_xlim(0.5, K + 0.5)
    ax.set_ylim(0, 100)
    if K <= 20:
        ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _png(fig)


def _plot_rmse_hist(result: EvaluationResult) -> bytes:
    from matplotlib.figure import Figure

    gated = [r["rms"] for r in result.records if r["rms"] is not None]
    unf = [r["rms_unfiltered"] for r in result.records if r["rms_unfiltered"] is not None]
    fig = Figure(figsize=(5, 3.6))
    ax = fig.add_subplot(111)
    bins = [i * 0.5 / 25 for i in range(26)]  # RMS is below stol = 0.5 by construction
    if unf:
        ax.hist(unf, bins=bins, histtype="step", lw=1.5, label=f"unfiltered (n={len(unf)})")
    if gated:
        ax.hist(gated, bins=bins, alpha=0.6, label=f"valid-gated (n={len(gated)})")
    if not (gated or unf):
        ax.text(0.5, 0.5, "no matches", ha="center", va="center", transform=ax.transAxes)
    rmse = result.summary.get("rmse")
    ax.set_title("RMS distance of matched pairs" + (f"  (mean {rmse:.4f})" if rmse is not None else ""))
    ax.set_xlabel("normalised RMS displacement")
    ax.set_ylabel("reference structures")
    ax.set_xlim(0, 0.5)
    if gated or unf:
        ax.legend()
    fig.tight_layout()
    return _png(fig)


def write_report(result: EvaluationResult, out_dir: str | Path) -> dict[str, Path]:
    """Write summary.json, per_structure.csv, match_rate_vs_k.png, rmse_hist.png and report.html (the same
    plots and a per-row table with the miss reasons, dao.report.evaluation) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "summary": out / "summary.json",
        "per_structure": out / "per_structure.csv",
        "match_rate_vs_k": out / "match_rate_vs_k.png",
        "rmse_hist": out / "rmse_hist.png",
    }
    _atomic_write(paths["summary"], (json.dumps(_jsonable(result.summary), indent=2) + "\n").encode())
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PER_STRUCTURE_COLUMNS)
    for rec in result.records:
        w.writerow([_cell(rec.get(c)) for c in PER_STRUCTURE_COLUMNS])
    _atomic_write(paths["per_structure"], buf.getvalue().encode())
    plots = {"match rate vs k": _plot_match_rate(result.summary),
             "RMS distance of matched pairs": _plot_rmse_hist(result)}
    _atomic_write(paths["match_rate_vs_k"], plots["match rate vs k"])
    _atomic_write(paths["rmse_hist"], plots["RMS distance of matched pairs"])
    paths["report_html"] = write_evaluation_report(out, _jsonable(result.summary), result.records, plots)
    return paths


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary in a few human-readable lines (what ``dao evaluate`` prints)."""
    s, v = summary, summary["validity"]
    unassigned = s.get("input", {}).get("n_unassigned", s["n_unassigned_prediction_keys"])
    lines = [f"references {s['n_references']}  k {s['k']}  predictions {v['n_samples_present']} "
             f"(unreadable {v['n_unreadable']}, missing slots {v['n_samples_missing']}, unassigned {unassigned})",
             f"match rate (valid-gated)  {_pct(s['match_rate'])}   RMSE {_num(s['rmse'])}",
             f"match rate (unfiltered)   {_pct(s['match_rate_unfiltered'])}   RMSE {_num(s['rmse_unfiltered'])}",
             f"validity {_pct(v['valid_rate'])} of predictions; references valid {_pct(v['reference_valid_rate'])}"]
    pr = s["polymorph_recovery"]
    if pr["n_compositions"]:
        lines.append(f"polymorph recovery {_pct(pr['rate'])} of {pr['n_compositions']} compositions "
                     f"(unfiltered {_pct(pr['rate_unfiltered'])})")
    if "stability" in s:
        st = s["stability"]
        judge = f"{st['judge']}, " if "judge" in st else ""
        lines.append(f"stability ({judge}E_hull <= {st['threshold_ev_per_atom']} eV/atom) "
                     f"{_pct(st['stability_rate'])} of {st['n_generated']} (scored {st['n_scored']}), "
                     f"mean E_hull {_num(st['mean_e_above_hull'])} eV/atom")
    if "after_relaxation" in s:
        a = s["after_relaxation"]
        lines.append(f"after relaxation: match rate {_pct(a['match_rate'])} RMSE {_num(a['rmse'])}; "
                     f"unfiltered {_pct(a['match_rate_unfiltered'])} RMSE {_num(a['rmse_unfiltered'])}")
    misses = ", ".join(f"{key} {val}" for key, val in s["miss_reasons"].items() if val)
    if misses:
        lines.append(f"misses: {misses}")
    return lines
