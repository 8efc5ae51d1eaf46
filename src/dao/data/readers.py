"""Crystals from structure files: every type of :mod:`dao.data.sources` (DiffCSP/CDVAE CSV, CIF files and
folders, extxyz, and any type registered there) and CrysDB folders.

Every reader returns ``(crystals, skipped)``: parsed :class:`~dao.crystal.Crystal` objects (Niggli-reduced)
and a list of ``(item, reason)`` for entries that could not be used. Bad rows never abort a read.
Parsed files of cached types (CSV) are cached (see :mod:`dao.data.cache`) so re-reading 30k CIFs is instant.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from dao.crystal import Crystal
from dao.data.cache import cached_read
from dao.data.crysdb.store import is_crysdb, read_crysdb
from dao.data.records import record_from_cif_file
from dao.data.sources import READERS, Reader, known_types, reader_for
from dao.errors import DAOError, StructureReadError

Skipped = list[tuple[str, str]]


def _read(path: Path, rdr: Reader, progress: bool = False) -> tuple[list[Crystal], Skipped]:
    from tqdm.auto import tqdm

    crystals, skipped = [], []
    entries = tqdm(rdr.entries(path), desc=f"reading {path.name}", disable=not progress, unit="rows")
    for i, entry in enumerate(entries):
        name = rdr.entry_name(path, i, entry)
        try:
            rec = rdr.parse(entry)
            source = Path(entry).name if rdr.per_file else path.name
            crystals.append(rec.to_crystal(source=source, row=i, e_above_hull=math.nan))
        except StructureReadError as exc:
            skipped.append((name, str(exc)))
    return crystals, skipped


def read_file(path: str | Path, rdr: Reader, use_cache: bool = True,
              progress: bool = False) -> tuple[list[Crystal], Skipped]:
    """Crystals of one file with reader ``rdr``; cached when the reader asks for it."""
    path = Path(path)
    if not path.exists():
        raise StructureReadError(f"no such file: {path}")
    if rdr.cached and use_cache:
        return cached_read(path, lambda: _read(path, rdr, progress))
    crystals, skipped = _read(path, rdr, progress and not rdr.per_file)
    if rdr.per_file and path.is_file() and skipped and not crystals:  # a single-structure file that fails
        raise StructureReadError(skipped[0][1] if str(path.name) in skipped[0][1] else f"{path}: {skipped[0][1]}")
    return crystals, skipped


def read_csv(path: str | Path, use_cache: bool = True, progress: bool = False) -> tuple[list[Crystal], Skipped]:
    """Read a DiffCSP-format CSV (one pymatgen CIF per row in the ``cif`` column)."""
    if not Path(path).is_file():
        raise StructureReadError(f"no such file: {path}")
    return read_file(path, READERS[".csv"], use_cache, progress)


def read_cif(path: str | Path) -> Crystal:
    """Read a single-structure CIF file (the first block if several)."""
    return record_from_cif_file(path).to_crystal(source=Path(path).name)


def read_extxyz(path: str | Path) -> tuple[list[Crystal], Skipped]:
    """Read every frame of an extended XYZ file."""
    return read_file(path, READERS[".extxyz"])


def read_any(path: str | Path, use_cache: bool = True, progress: bool = False) -> tuple[list[Crystal], Skipped]:
    """Read a CrysDB folder or any registered structure file type (:mod:`dao.data.sources`), chosen by name."""
    path = Path(path)
    if is_crysdb(path):
        return read_crysdb(path), []
    rdr = reader_for(path)
    if rdr is None:
        if not path.exists():
            raise StructureReadError(f"no such file or folder: {path}")
        raise StructureReadError(f"unknown structure file type: {path} (expected {known_types()}, a CrysDB folder)")
    return read_file(path, rdr, use_cache, progress)


def _unique_name(stem: str, used: set[str]) -> str:
    stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}_{k}"
    used.add(name)
    return name


def read_inputs(paths: Sequence[str | Path]) -> tuple[list[tuple[str, Crystal]], list[tuple[str, str]]]:
    """Read structure files into (name, Crystal); unreadable files or entries as (name, reason)."""
    items, errors, used = [], [], set()
    for p in paths:
        p = Path(p)
        try:
            crystals, skipped = read_any(p)
        except StructureReadError as exc:
            msg = str(exc)
            errors.append((str(p), msg if str(p) in msg else f"{p}: {msg}"))
            continue
        errors += [(f"{p}:{item}", f"{p} ({item}): {reason}") for item, reason in skipped]
        if not crystals and not skipped:
            errors.append((str(p), f"{p}: no structures found"))
        for i, c in enumerate(crystals):
            stem = p.name[:-4] if p.name.lower().endswith(".cif") else str(c.meta.get("id") or f"{p.stem}_{i}")
            items.append((_unique_name(stem, used), c))
    return items, errors


def report_unreadable(items: list, errors: list[tuple[str, str]], on_error: Callable[[str], None] | None = None) -> None:
    """Pass every read error to ``on_error``; when nothing was readable, raise the last one as a DAOError
    instead (so a single bad input gives exactly one error line)."""
    if not items:
        for _, msg in errors[:-1]:
            if on_error is not None:
                on_error(msg)
        raise DAOError(errors[-1][1] if errors else "no structures given")
    for _, msg in errors:
        if on_error is not None:
            on_error(msg)
