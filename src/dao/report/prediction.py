"""``report.html`` of a prediction folder: per structure a picture of the cell, space group, lattice, density,
predicted energy where known, the simulated powder pattern (or its overlay on the measured one when the
prediction was ranked against a pattern) and links to its files. One self-contained page, no network."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dao.report.html import esc, figure_png, img, link, table, write_page
from dao.xrd.output import overlay_png
from dao.xrd.pattern import DEFAULT_WAVELENGTH, read_pattern, wavelength_of
from dao.xrd.score import MATCH_THRESHOLD, MIN_COMMON_FWHM, prepare, render, score_structure, sticks

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: the 2θ range (degrees) of the simulated pattern shown for each structure
XRD_RANGE = (10.0, 80.0)
REPORT_NAME = "report.html"


def cell_png(structure: Structure, title: str = "") -> bytes:
    """A picture of the unit cell: atoms as discs in Jmol colours sized by covalent radius (the nearer drawn
    over the farther) and the cell's edges, seen along a slightly tilted direction."""
    from ase.data import covalent_radii
    from ase.data.colors import jmol_colors
    from matplotlib.figure import Figure

    rot = _VIEW
    lat = structure.lattice.matrix
    xyz = structure.cart_coords @ rot.T
    z = np.array(structure.atomic_numbers)
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float) @ lat @ rot.T
    fig = Figure(figsize=(3.2, 3.2))
    ax = fig.add_subplot(111)
    for a in range(8):
        for b in range(a + 1, 8):
            if bin(a ^ b).count("1") == 1:  # corners differing in one lattice vector: an edge
                ax.plot(corners[[a, b], 0], corners[[a, b], 1], "--", color="0.3", lw=0.8)
    order = np.argsort(xyz[:, 2])
    span = float(np.ptp(corners[:, :2], axis=0).max()) or 1.0
    sizes = (0.5 * covalent_radii[z[order]] * 2.9 * 72 / span) ** 2 * 4  # half covalent radii, in points²
    ax.scatter(xyz[order, 0], xyz[order, 1], s=sizes, c=jmol_colors[z[order]], edgecolors="k", linewidths=0.6)
    ax.set_aspect("equal")
    ax.set_axis_off()
    species = ", ".join(sorted({sp.symbol for sp in structure.species}))
    ax.set_title(title or f"{structure.composition.reduced_formula} ({species})", fontsize=9)
    fig.subplots_adjust(0.04, 0.04, 0.96, 0.9)
    return figure_png(fig, dpi=75)


def _rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.radians(deg_x), np.radians(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


#: the viewing rotation of the cell pictures (15° about x, then −25° about y)
_VIEW = _rotation(15.0, -25.0)


def xrd_png(structure: Structure, wavelength: float | str = DEFAULT_WAVELENGTH) -> bytes:
    """The structure's simulated powder pattern (pymatgen XRDCalculator), sticks and a Gaussian profile."""
    from matplotlib.figure import Figure

    lam = wavelength_of(wavelength)
    x, y = sticks(structure, lam, XRD_RANGE, margin=0.0)
    grid = np.arange(XRD_RANGE[0], XRD_RANGE[1], 0.02)
    prof = render(grid, x, y, MIN_COMMON_FWHM)
    fig = Figure(figsize=(4.8, 2.6))
    ax = fig.add_subplot(111)
    ax.plot(grid, 100 * prof / max(prof.max(), 1e-300), lw=0.9, color="tab:blue")
    ax.vlines(x, 0, y, color="k", lw=0.6)
    ax.set_xlim(*XRD_RANGE)
    ax.set_ylim(0, 105)
    ax.set_xlabel(f"2θ (degrees, λ = {lam:.5g} Å)")
    ax.set_ylabel("intensity")
    ax.set_title("simulated powder pattern" if len(x) else
                 f"no reflection between {XRD_RANGE[0]:g}° and {XRD_RANGE[1]:g}°", fontsize=9)
    fig.subplots_adjust(0.12, 0.18, 0.97, 0.9)
    return figure_png(fig, dpi=75)


def _facts(rec: dict[str, Any], structure: Structure) -> list[tuple[str, Any]]:
    lat = rec.get("lattice") or {}
    sg = rec.get("space_group") or {}
    rows: list[tuple[str, Any]] = [("formula", rec.get("formula") or structure.composition.formula),
                                   ("atoms in cell", len(structure))]
    if "rank" in rec:
        rows += [("rank", rec["rank"]), ("source", rec.get("source"))]
    rows += [("space group", f"{sg.get('symbol', '?')} (#{sg.get('number', '?')})"),
             ("a, b, c (Å)", ", ".join(f"{lat.get(k, np.nan):.4f}" for k in "abc")),
             ("α, β, γ (°)", ", ".join(f"{lat.get(k, np.nan):.2f}" for k in ("alpha", "beta", "gamma"))),
             ("volume (Å³)", lat.get("volume")), ("density (g/cm³)", rec.get("density_g_cm3"))]
    if rec.get("energy_per_atom") is not None:
        rows.append(("predicted energy (eV/atom)", rec["energy_per_atom"]))
    if rec.get("xrd_score") is not None:
        rows.append(("agreement with the measured pattern", rec["xrd_score"]))
    return rows


def structure_section(rec: dict[str, Any], structure: Structure, pictures: Sequence[tuple[bytes | str, str]]) -> str:
    """One structure's ``<section>``: heading, facts table, links to its files, pictures (PNG bytes, or a
    note saying why there is none)."""
    name = str(rec.get("name") or rec.get("cif") or "structure")
    files = [link(rec["cif"], rec["cif"])] if rec.get("cif") else []
    if rec.get("cif_symmetrized"):
        files.append(link(rec["cif_symmetrized"], rec["cif_symmetrized"] + " (symmetrized)"))
    facts = table(["", ""], _facts(rec, structure))
    figs = "".join(img(png, alt) if isinstance(png, bytes) else f'<p class="note">{esc(png)}</p>'
                   for png, alt in pictures)
    return (f'<section class="structure" id="{esc(name)}"><h2>{esc(name)}</h2>{facts}'
            f'<p>files: {" · ".join(files)}</p><div class="figs">{figs}</div></section>')


def _header(summary: dict[str, Any]) -> str:
    facts: list[tuple[str, Any]] = [("formula", summary.get("formula")), ("method", summary.get("method")),
                                    ("structures written", summary.get("num_written")),
                                    ("seconds", summary.get("seconds"))]
    ranking = summary.get("ranking")
    if ranking:
        facts.append(("ranked by", ranking.get("judge")))
        facts += [(f"candidates {k.replace('_', ' ')}", v) for k, v in (ranking.get("counts") or {}).items()]
    xrd = summary.get("xrd")
    if xrd:
        facts += [("measured pattern", xrd.get("pattern")), ("pattern verdict", xrd.get("verdict"))]
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in (ranking or {}).get("notes", []))
    return table(["", ""], facts) + notes + f'<p>all structures: {link("samples.extxyz", "samples.extxyz")}</p>'


def _picture(draw: Callable[[Structure], bytes], structure: Structure, alt: str) -> tuple[bytes | str, str]:
    """``draw(structure)``, or a one-line note when it fails: a picture never costs the prediction."""
    try:
        return draw(structure), alt
    except Exception as exc:  # a report must not fail the run it describes (matplotlib/pymatgen edge cases)
        return f"{alt}: picture unavailable ({type(exc).__name__}: {str(exc)[:100]})", alt


def _overlays(summary: dict[str, Any], structures: Sequence[Structure]) -> list[bytes | str] | None:
    """Measured-vs-simulated PNGs when the prediction was ranked against a pattern (``summary["xrd"]``)."""
    xrd = summary.get("xrd")
    if not xrd:
        return None
    pattern = read_pattern(xrd["pattern"], xrd["wavelength"])
    prep = prepare(pattern)
    names = [str(r.get("name")) for r in summary.get("samples", []) if r.get("cif")]
    threshold = xrd.get("threshold", MATCH_THRESHOLD)
    return [_picture(lambda st, name=name: overlay_png(prep, st, score_structure(prep, st, name, threshold)),
                     st, "")[0] for name, st in zip(names, structures)]


def write_prediction_report(folder: str | Path, summary: dict[str, Any], structures: Sequence[Structure]) -> Path:
    """Write ``report.html`` into ``folder``: ``structures`` are those of ``summary["samples"]`` that have a
    CIF, in order. With ``summary["xrd"]`` (pattern path, wavelength) each also gets its overlay on the
    measured pattern."""
    written = [r for r in summary.get("samples", []) if r.get("cif")]
    overlays = _overlays(summary, structures)
    sections = []
    for k, (rec, st) in enumerate(zip(written, structures)):
        name = rec.get("name")
        pictures = [_picture(cell_png, st, f"unit cell of {name}"), _picture(xrd_png, st, f"simulated XRD of {name}")]
        if overlays is not None:
            pictures.append((overlays[k], f"measured vs simulated pattern of {name}"))
        sections.append(structure_section(rec, st, pictures))
    skipped = [r for r in summary.get("samples", []) if not r.get("cif")]
    if skipped:
        sections.append("<h2>unusable samples</h2>" + table(["sample", "reason"],
                                                            [(r.get("name"), r.get("error")) for r in skipped]))
    title = f"DAO prediction: {summary.get('formula', '')}".strip()
    return write_page(Path(folder) / REPORT_NAME, title, _header(summary) + "".join(sections))
