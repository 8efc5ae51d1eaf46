"""DAO-P energies above hull for structure files: what ``dao energy`` prints, as a library.

:func:`predict_energy_files` reads CIF/CSV/extxyz files or folders, scores every readable structure with
DAO-P at t = 0 and returns one row per structure (see docs/design.md, "Energy model (DAO-P) and guidance");
:func:`energy_jsonl` and :func:`energy_table` format the rows, :func:`write_energy_jsonl` saves them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from dao.data.readers import read_inputs, report_unreadable
from dao.models.checkpoint import load_energy_model
from dao.models.energy import predict_energies
from dao.runtime import resolve_device
from dao.structure_io import atomic_write_text


def predict_energy_files(files: Sequence[str | Path], model: str | Path = "default", device: str = "auto",
                         batch_size: int = 64, on_error: Callable[[str], None] | None = None) -> list[dict]:
    """One row per readable structure of ``files``: name, source, reduced formula, number of atoms and the
    predicted ``e_above_hull_pred`` (eV/atom, rounded to 1e-6). Unreadable files or entries go to
    ``on_error`` and are skipped; a DAOError when nothing could be read (or the model cannot be loaded)."""
    e_model = load_energy_model(model, resolve_device(device))
    items, errors = read_inputs(files)
    report_unreadable(items, errors, on_error)
    preds = predict_energies(e_model, [c for _, c in items], batch_size=batch_size)
    return [{"name": name, "source": str(c.meta.get("source", "")),
             "formula": c.to_structure().composition.reduced_formula, "num_atoms": c.num_atoms,
             "e_above_hull_pred": round(float(e), 6)} for (name, c), e in zip(items, preds)]


def energy_jsonl(rows: Sequence[dict]) -> str:
    """The rows as JSON lines (no trailing newline)."""
    return "\n".join(json.dumps(r) for r in rows)


def energy_table(rows: Sequence[dict]) -> str:
    """The rows as an aligned text table: name, formula, atoms, E_hull (eV/atom)."""
    w = max((len(r["name"]) for r in rows), default=4)
    lines = [f"{'name':<{w}}  {'formula':<12} {'atoms':>5}  E_hull (eV/atom)"]
    lines += [f"{r['name']:<{w}}  {r['formula']:<12} {r['num_atoms']:>5}  {r['e_above_hull_pred']:.4f}" for r in rows]
    return "\n".join(lines)


def write_energy_jsonl(rows: Sequence[dict], path: str | Path) -> None:
    """Write the rows as JSON lines to ``path`` atomically (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, energy_jsonl(rows) + "\n")
