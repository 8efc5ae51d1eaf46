"""Readers for crystal files: DiffCSP/CDVAE CSV (``.csv``/``.csv.gz``), CIF files and folders, extxyz.

Every reader returns ``(crystals, skipped)``: parsed :class:`~dao.crystal.Crystal` objects (Niggli-reduced)
and a list of ``(item, reason)`` for entries that could not be used. Bad rows never abort a read.
Parsed CSV files are cached (see :mod:`dao.data.cache`) so re-reading 30k CIFs is instant.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import warnings
from pathlib import Path
from typing import Iterator

from dao.crystal import Crystal
from dao.errors import StructureReadError

#: CSV columns that carry the energy above hull (eV/atom), in order of preference.
EHULL_COLUMNS = ("e_above_hull", "energy_above_hull", "e_hull")
ID_COLUMNS = ("material_id", "id", "name")

Skipped = list[tuple[str, str]]


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping it when it starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_csv_rows(path: str | Path) -> Iterator[dict[str, str]]:
    """Stream the rows of a (gzipped) CSV file."""
    csv.field_size_limit(1 << 30)
    with open_text(path) as fh:
        yield from csv.DictReader(fh)


def read_csv_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """All rows of a (gzipped) CSV file and its column names."""
    csv.field_size_limit(1 << 30)
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def structure_from_cif_string(text: str):
    """Parse one CIF string into a pymatgen Structure; raises StructureReadError with a short reason."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Structure.from_str(text, fmt="cif")
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StructureReadError(f"malformed CIF ({msg[:120]})") from None


def _float_or_nan(value: str | None) -> float:
    try:
        v = float(value) if value not in (None, "") else math.nan
    except ValueError:
        v = math.nan
    return v


def crystal_from_row(row: dict[str, str], source: str, index: int) -> Crystal:
    if "cif" not in row:
        raise StructureReadError("row has no 'cif' column")
    structure = structure_from_cif_string(row["cif"])
    meta: dict = {"source": source, "row": index}
    for col in ID_COLUMNS:
        if row.get(col):
            meta["id"] = row[col]
            break
    meta["e_above_hull"] = math.nan
    for col in EHULL_COLUMNS:
        if col in row:
            meta["e_above_hull"] = _float_or_nan(row[col])
            break
    return Crystal.from_structure(structure, meta=meta)


def read_csv(path: str | Path, use_cache: bool = True, progress: bool = False) -> tuple[list[Crystal], Skipped]:
    """Read a DiffCSP-format CSV (one pymatgen CIF per row in the ``cif`` column)."""
    from dao.data.cache import cached_read

    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"no such file: {path}")

    def parse() -> tuple[list[Crystal], Skipped]:
        from tqdm.auto import tqdm

        crystals, skipped = [], []
        for i, row in enumerate(tqdm(iter_csv_rows(path), desc=f"reading {path.name}", disable=not progress, unit="rows")):
            try:
                crystals.append(crystal_from_row(row, path.name, i))
            except StructureReadError as exc:
                skipped.append((f"{path.name}:{i}", str(exc)))
        return crystals, skipped

    return cached_read(path, parse) if use_cache else parse()


def read_cif(path: str | Path) -> Crystal:
    """Read a single-structure CIF file (the first block if several)."""
    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StructureReadError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return Crystal.from_structure(structure_from_cif_string(text), meta={"source": path.name, "id": path.stem})
    except StructureReadError as exc:
        raise StructureReadError(f"{path}: {exc}") from None


def read_extxyz(path: str | Path) -> tuple[list[Crystal], Skipped]:
    from ase.io import iread

    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"no such file: {path}")
    crystals, skipped = [], []
    try:
        for i, atoms in enumerate(iread(str(path), index=":", format="extxyz")):
            try:
                meta = {"source": path.name, "row": i, **{k: v for k, v in atoms.info.items() if isinstance(v, (int, float, str))}}
                crystals.append(Crystal.from_atoms(atoms, meta=meta))
            except StructureReadError as exc:
                skipped.append((f"{path.name}:{i}", str(exc)))
    except Exception as exc:  # ASE raises many types for malformed files
        raise StructureReadError(f"{path}: malformed extxyz ({str(exc)[:120]})") from None
    return crystals, skipped


def read_any(path: str | Path, use_cache: bool = True, progress: bool = False) -> tuple[list[Crystal], Skipped]:
    """Read a CSV, a CIF file, a folder of CIFs, an extxyz file or a CrysDB folder, chosen by name."""
    path = Path(path)
    name = path.name.lower()
    from dao.data.crysdb import is_crysdb, read_crysdb

    if is_crysdb(path):
        return read_crysdb(path), []
    if path.is_dir():
        crystals, skipped = [], []
        for f in sorted(path.glob("*.cif")):
            try:
                crystals.append(read_cif(f))
            except StructureReadError as exc:
                skipped.append((f.name, str(exc)))
        return crystals, skipped
    if name.endswith((".csv", ".csv.gz")):
        return read_csv(path, use_cache=use_cache, progress=progress)
    if name.endswith(".cif"):
        return [read_cif(path)], []
    if name.endswith((".extxyz", ".xyz")):
        return read_extxyz(path)
    if not path.exists():
        raise StructureReadError(f"no such file or folder: {path}")
    raise StructureReadError(f"unknown structure file type: {path} (expected .csv[.gz], .cif, folder of CIFs, .extxyz)")
