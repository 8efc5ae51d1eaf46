"""``dao xrd``: rank structures by agreement with a measured powder X-ray pattern (docs/xrd.md)."""
from __future__ import annotations

from pathlib import Path

import click

from dao.cli.options import OVERWRITE, BadInputs
from dao.xrd.score import MATCH_THRESHOLD

#: the ``--wavelength`` option of every command that reads a measured pattern
WAVELENGTH_HELP = "X-ray wavelength: Å (e.g. 1.5406) or a line name (CuKa, CuKa1, MoKa, CoKa, FeKa, CrKa, AgKa)."


@click.command("xrd")
@click.argument("pattern", type=click.Path(path_type=Path))
@click.argument("structures", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--wavelength", default="CuKa", show_default=True, help=WAVELENGTH_HELP)
@click.option("--threshold", type=click.FloatRange(0.0, 1.0), default=MATCH_THRESHOLD, show_default=True,
              help="Score at or above which a structure matches the pattern (docs/xrd.md, 'Threshold').")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder for xrd.json, xrd.csv and the overlay PNGs (default: xrd_<pattern name>).")
@OVERWRITE
def xrd(pattern: Path, structures: tuple[Path, ...], wavelength: str, threshold: float, out: Path | None,
        overwrite: bool) -> None:
    """Compare STRUCTURES (CIF files, folders, a `dao predict` folder) with the measured PATTERN.

    PATTERN is a text file of 2θ (degrees) and intensity columns (.xy, .csv, .xye; a third column is
    ignored). Prints the structures ranked by score, best first, and whether any matches; writes xrd.json,
    xrd.csv and overlay_<rank>_<name>.png (measured vs simulated) into --out.
    """
    from dao.data.readers import report_unreadable
    from dao.structure_io import claim_output_dir
    from dao.xrd.output import load_structures, rank_rows, text_table, verdict, write_xrd
    from dao.xrd.pattern import read_pattern

    measured = read_pattern(pattern, wavelength)  # every pattern problem is one error line before any work
    out = out if out is not None else Path(f"xrd_{pattern.stem}")
    bad = BadInputs()
    with claim_output_dir(out, overwrite=overwrite):
        items, errors = load_structures(structures)
        report_unreadable(items, [("", e) for e in errors], bad)
        prep, rows = rank_rows(measured, items, threshold)
        write_xrd(out, measured, prep, rows, threshold)
    click.echo(text_table(rows))
    click.echo(verdict(rows, threshold))
    click.echo(f"wrote xrd.json, xrd.csv and {len(rows)} overlay plots to {out}", err=True)
    bad.exit_if_any()
