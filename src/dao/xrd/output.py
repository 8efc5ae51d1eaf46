"""``dao xrd`` inputs and outputs: structures from CIFs or a prediction folder, the ranked table, xrd.json,
xrd.csv and one overlay PNG (measured vs simulated) per structure, written all at once."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dao.data.readers import read_inputs
from dao.data.records import record_from_cif_file
from dao.errors import DAOError, StructureReadError
from dao.report.html import figure_png
from dao.structure_io import staged_output_dir, write_json
from dao.xrd.pattern import Pattern
from dao.xrd.score import MATCH_THRESHOLD, Prepared, XRDMatch, prepare, render, score_all, sticks, stretch

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: columns of xrd.csv (and keys of each xrd.json row)
COLUMNS = ("rank", "name", "formula", "score", "scale", "matched", "energy_per_atom", "overlay")


def prediction_folder_structures(folder: Path) -> list[tuple[str, Structure, float | None]] | None:
    """The structures a ``dao predict`` folder lists in its summary.json (name, structure, judge energy per
    atom or None), in its order; None when ``folder`` is not a prediction folder."""
    summary = folder / "summary.json"
    if not summary.is_file():
        return None
    try:
        samples = json.loads(summary.read_text(encoding="utf-8")).get("samples", [])
    except (OSError, ValueError, AttributeError) as exc:
        raise DAOError(f"{summary}: not a readable prediction summary ({exc})") from None
    out = []
    for rec in samples:
        if isinstance(rec, dict) and rec.get("cif"):
            st = record_from_cif_file(folder / str(rec["cif"])).structure
            e = rec.get("energy_per_atom")
            out.append((str(rec.get("name") or Path(rec["cif"]).stem), st, float(e) if e is not None else None))
    return out


def load_structures(paths: Sequence[str | Path]) -> tuple[list[tuple[str, Structure, float | None]], list[str]]:
    """Named structures from CIF/extxyz/CSV files, CIF folders and prediction folders, and one message per
    input that could not be read."""
    items: list[tuple[str, Structure, float | None]] = []
    errors: list[str] = []
    rest = []
    for p in map(Path, paths):
        try:
            found = prediction_folder_structures(p) if p.is_dir() else None
        except StructureReadError as exc:
            errors.append(str(exc))
            continue
        if found is None:
            rest.append(p)
        else:
            items += found
    read, bad = read_inputs(rest) if rest else ([], [])
    items += [(name, c.to_structure(), None) for name, c in read]
    errors += [msg for _, msg in bad]
    return items, errors


def overlay_png(prep: Prepared, structure: Structure, match: XRDMatch) -> bytes:
    """Measured (background removed) above the structure's simulated pattern at its best lattice scale."""
    from matplotlib.figure import Figure

    x, y = sticks(structure, prep.pattern.wavelength, prep.pattern.range)
    pos = stretch(x, match.scale)
    sim = render(prep.grid, pos, y, prep.fwhm)
    meas = prep.profile ** 2  # back from the square-root scale
    fig = Figure(figsize=(7.5, 3.2))
    ax = fig.add_subplot(111)
    ax.plot(prep.grid, meas / max(meas.max(), 1e-300) + 1.05, lw=0.9, color="k", label="measured (background removed)")
    ax.plot(prep.grid, sim / max(sim.max(), 1e-300), lw=0.9, color="tab:red", label=f"{match.name} (simulated)")
    ok = np.isfinite(pos) & (pos >= prep.grid[0]) & (pos <= prep.grid[-1])
    ax.vlines(pos[ok], -0.12, -0.12 + 0.1 * y[ok] / 100.0, color="tab:red", lw=0.8)
    ax.set_xlim(prep.grid[0], prep.grid[-1])
    ax.set_yticks([])
    ax.set_xlabel(f"2θ (degrees, λ = {prep.pattern.wavelength:.5g} Å)")
    ax.set_title(f"{match.name}: score {match.score:.3f}, lattice scale {match.scale:.3f}"
                 + ("" if match.matched else "  (no match)"), fontsize=10)
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    fig.subplots_adjust(0.03, 0.16, 0.98, 0.9)
    return figure_png(fig, dpi=80)


def rank_rows(pattern: Pattern, items: Sequence[tuple[str, Structure, float | None]],
              threshold: float = MATCH_THRESHOLD) -> tuple[Prepared, list[dict[str, Any]]]:
    """Score every structure; rows best first with rank, score, best scale, matched, energy."""
    prep = prepare(pattern)
    matches = score_all(prep, [(name, st) for name, st, _ in items], threshold)
    scored = sorted(((m, st, e) for m, (_, st, e) in zip(matches, items)), key=lambda t: -t[0].score)
    rows = []
    for k, (m, st, e) in enumerate(scored, 1):
        rows.append({"rank": k, "name": m.name, "formula": m.formula, "score": m.score, "scale": m.scale,
                     "matched": m.matched, "energy_per_atom": e, "overlay": f"overlay_{k:03d}_{_safe(m.name)}.png",
                     "_match": m, "_structure": st})
    return prep, rows


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:80]


def verdict(rows: Sequence[dict[str, Any]], threshold: float = MATCH_THRESHOLD) -> str:
    """One line: the best match, or that no candidate matches."""
    good = [r for r in rows if r["matched"]]
    if not good:
        best = rows[0]["score"] if rows else math.nan
        return f"no candidate matches the pattern (best score {best:.3f} < threshold {threshold})"
    return f"best match: {good[0]['name']} (score {good[0]['score']:.3f}); {len(good)} of {len(rows)} match"


def text_table(rows: Sequence[dict[str, Any]]) -> str:
    """The ranked rows as an aligned text table."""
    lines = [f"{'rank':>4}  {'score':>6}  {'scale':>6}  {'match':5}  {'E/atom':>8}  name"]
    for r in rows:
        e = "" if r["energy_per_atom"] is None else f"{r['energy_per_atom']:.3f}"
        lines.append(f"{r['rank']:>4}  {r['score']:6.3f}  {r['scale']:6.3f}  {'yes' if r['matched'] else 'no':5}"
                     f"  {e:>8}  {r['name']}")
    return "\n".join(lines)


def write_xrd(out: str | Path, pattern: Pattern, prep: Prepared, rows: Sequence[dict[str, Any]],
              threshold: float = MATCH_THRESHOLD) -> dict[str, Any]:
    """Write xrd.json, xrd.csv and the overlay PNGs into ``out`` (all or nothing); returns the JSON content."""
    public = [{k: r[k] for k in COLUMNS} for r in rows]
    result = {"pattern": pattern.source, "wavelength": pattern.wavelength, "two_theta_range": list(pattern.range),
              "measured_fwhm": round(prep.measured_fwhm, 4), "common_fwhm": round(prep.fwhm, 4),
              "threshold": threshold, "matched": any(r["matched"] for r in rows),
              "verdict": verdict(rows, threshold), "ranking": public}
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in public)
    with staged_output_dir(out) as tmp:
        for r in rows:
            (tmp / r["overlay"]).write_bytes(overlay_png(prep, r["_structure"], r["_match"]))
        write_json(result, tmp / "xrd.json")
        (tmp / "xrd.csv").write_text(buf.getvalue(), encoding="utf-8")
    return result
