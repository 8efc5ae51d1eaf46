"""``dao energy``: DAO-P energies above hull for structure files (see :mod:`dao.energy`)."""
from __future__ import annotations

from pathlib import Path

import click

from dao.cli.options import DEVICE, BadInputs


@click.command("energy")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", default="default", show_default=True, help="DAO-P checkpoint or 'default'.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON lines to this file.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="jsonl", show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
def energy(files: tuple[Path, ...], model: str, out: Path | None, fmt: str, device: str, batch_size: int) -> None:
    """Predict the energy above hull (eV/atom) of structure FILES with DAO-P at t = 0.

    FILES are CIFs (or CSV/extxyz/folders). One JSON line (or table row) per structure on stdout; an
    unreadable file gives one `dao: error:` line on stderr and is skipped; the exit code is then 1 (2 when
    nothing could be read).
    """
    from dao.energy import energy_jsonl, energy_table, predict_energy_files, write_energy_jsonl

    bad = BadInputs()
    rows = predict_energy_files(files, model, device=device, batch_size=batch_size, on_error=bad)
    click.echo(energy_jsonl(rows) if fmt == "jsonl" else energy_table(rows))
    if out is not None:
        write_energy_jsonl(rows, out)
    bad.exit_if_any()
