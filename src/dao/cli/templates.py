"""``dao templates``: build a template index (docs/templates.md)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import click

from dao.cli.options import OVERWRITE


@click.group("templates")
def templates_group() -> None:
    """Template indexes: known structures proposed for new compositions by species substitution."""


@templates_group.command("build")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--exclude", "excludes", multiple=True, type=click.Path(path_type=Path),
              help="A split whose entries (by id and StructureMatcher) must not be in the index; repeat.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder (templates.npz, templates_card.json).")
@click.option("--max-atoms", type=click.IntRange(1), default=52, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@OVERWRITE
def build(sources: tuple[Path, ...], excludes: tuple[Path, ...], out: Path, max_atoms: int, progress: bool,
          overwrite: bool) -> None:
    """Index the structures of SOURCES (CSV, CIF folders, extxyz, CrysDB) by prototype."""
    from dao.templates.card import build_index_folder

    command = "dao " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else ""
    card = build_index_folder(sources, out, excludes, max_atoms, progress, command, overwrite)
    click.echo(json.dumps({k: card[k] for k in ("entries", "prototypes", "seconds")}))
    click.echo(f"wrote {card['entries']} templates to {out} (templates.npz, templates_card.json)")
