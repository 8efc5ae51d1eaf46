"""``dao templates build``: an index file plus its card (docs/templates.md, 'Building an index')."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

from dao.data.download import _sha256
from dao.structure_io import write_json
from dao.templates.build import build_arrays
from dao.templates.index import TemplateIndex
from dao.templates.store import FORMAT_VERSION, save_arrays

INDEX_NAME = "templates.npz"
CARD_NAME = "templates_card.json"


def _describe(path: Path) -> dict:
    return {"path": str(path), "sha256": _sha256(path) if path.is_file() else None}


def build_index_folder(sources: Sequence[str | Path], out: str | Path, exclude: Sequence[str | Path] = (),
                       max_atoms: int = 52, progress: bool = False, command: str = "") -> dict:
    """Build an index of ``sources`` minus ``exclude`` into ``out``/templates.npz and write its card
    (``out``/templates_card.json: sources with sha256 and counts, excluded splits, prototypes, command)."""
    t0 = time.perf_counter()
    arrays, counts = build_arrays(sources, exclude, max_atoms, progress)
    out = Path(out)
    save_arrays(arrays, out / INDEX_NAME)
    index = TemplateIndex(arrays)
    card = {"format_version": FORMAT_VERSION, "entries": len(arrays), "prototypes": index.num_prototypes,
            "max_atoms": max_atoms,
            "sources": [{**_describe(Path(s)), **counts[str(s)]} for s in sources],
            "excluded": [_describe(Path(e)) for e in exclude],
            "command": command, "seconds": round(time.perf_counter() - t0, 1)}
    write_json(card, out / CARD_NAME)
    return card
