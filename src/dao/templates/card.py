"""``dao templates build``: an index file plus its card (docs/templates.md, 'Building an index')."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from dao.data.download import _sha256
from dao.structure_io import claim_output_dir, staged_output_dir, write_json
from dao.templates.build import build_arrays
from dao.templates.index import TemplateIndex
from dao.templates.store import FORMAT_VERSION, TemplateArrays, save_arrays

INDEX_NAME = "templates.npz"
CARD_NAME = "templates_card.json"


def _describe(path: Path) -> dict:
    return {"path": str(path), "sha256": _sha256(path) if path.is_file() else None}


def build_index_folder(sources: Sequence[str | Path], out: str | Path, exclude: Sequence[str | Path] = (),
                       max_atoms: int = 52, progress: bool = False, command: str = "",
                       overwrite: bool = False) -> dict:
    """Build an index of ``sources`` minus ``exclude`` into ``out``/templates.npz and write its card
    (``out``/templates_card.json: sources with sha256 and counts, excluded splits, prototypes, command).
    ``out`` is locked and written as a whole; a non-empty ``out`` is refused (before building) unless
    ``overwrite``."""
    with claim_output_dir(out, overwrite=overwrite):
        t0 = time.perf_counter()
        arrays, counts = build_arrays(sources, exclude, max_atoms, progress)
        with staged_output_dir(out, overwrite=True) as tmp:
            save_arrays(arrays, tmp / INDEX_NAME)
            card = _card(arrays, counts, sources, exclude, max_atoms, command, t0)
            write_json(card, tmp / CARD_NAME)
    return card


def _card(arrays: TemplateArrays, counts: dict, sources: Sequence[str | Path], exclude: Sequence[str | Path],
          max_atoms: int, command: str, t0: float) -> dict:
    index = TemplateIndex(arrays)
    card = {"format_version": FORMAT_VERSION, "entries": len(arrays), "prototypes": index.num_prototypes,
            "max_atoms": max_atoms,
            "sources": [{**_describe(Path(s)), **counts[str(s)]} for s in sources],
            "excluded": [_describe(Path(e)) for e in exclude],
            "command": command, "seconds": round(time.perf_counter() - t0, 1)}
    return card
