"""The file types DAO reads, in one registry: adding a data source (a new file format) is one function here
or anywhere else, decorated with :func:`reader`.

A reader is a generator of raw entries of a file (a CSV row, a CIF file name, an ASE frame: plain picklable
objects, so that CrysDB building can parse them in worker processes) plus a ``parse`` function turning one
raw entry into a :class:`~dao.data.records.Record`. Every consumer — training (:func:`dao.data.readers.read_any`),
``dao relax``/``dao energy`` inputs, CrysDB building, the Tc augmentation's exclusion list — finds the
reader of a path with :func:`reader_for`, so a newly registered type is read everywhere::

    @reader(".json", parse=lambda entry: Record(entry["id"], Structure.from_dict(entry["structure"])))
    def json_entries(path):
        yield from json.loads(Path(path).read_text())
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from dao.data.records import (Record, iter_csv_rows, record_from_atoms, record_from_cif_file,
                              record_from_row)
from dao.errors import StructureReadError

FOLDER = "/"  # the registry key of a folder (of CIF files)


@dataclass(frozen=True)
class Reader:
    """A file type: ``entries(path)`` streams its raw entries, ``parse(entry)`` makes one a Record (raising
    StructureReadError, or anything else for a broken entry); ``cached``: parsed files go to the on-disk
    cache of :mod:`dao.data.cache`; ``per_file``: an entry is a file of its own (a skipped entry is then
    reported by its file name rather than ``<file>:<row>``)."""

    key: str
    entries: Callable[[Path], Iterable[Any]]
    parse: Callable[[Any], Record]
    cached: bool = False
    per_file: bool = False

    def entry_name(self, path: Path, index: int, entry: Any) -> str:
        return Path(entry).name if self.per_file else f"{path.name}:{index}"


#: file-name suffix (lower case; FOLDER for folders) -> reader
READERS: dict[str, Reader] = {}


def reader(*suffixes: str, parse: Callable[[Any], Record], cached: bool = False,
           per_file: bool = False) -> Callable[[Callable[[Path], Iterable[Any]]], Callable[[Path], Iterable[Any]]]:
    """Register the decorated ``entries(path)`` generator as the reader of files ending in ``suffixes``."""
    def register(entries: Callable[[Path], Iterable[Any]]) -> Callable[[Path], Iterable[Any]]:
        for suffix in suffixes:
            READERS[suffix.lower()] = Reader(suffix.lower(), entries, parse, cached, per_file)
        return entries

    return register


def known_types() -> str:
    """The registered file types, for error messages."""
    names = sorted(k for k in READERS if k != FOLDER)
    return ", ".join(names) + (", a folder of CIFs" if FOLDER in READERS else "")


def reader_for(path: str | Path) -> Reader | None:
    """The reader of ``path`` (a folder, or the longest registered suffix of its name), or None."""
    path = Path(path)
    if path.is_dir():
        return READERS.get(FOLDER)
    name = path.name.lower()
    matches = [k for k in READERS if k != FOLDER and name.endswith(k)]
    return READERS[max(matches, key=len)] if matches else None


def read_records(path: str | Path) -> tuple[list[Record], list[tuple[str, str]]]:
    """Every record of a registered file type, and ``(entry name, reason)`` for entries that do not parse.
    Raises StructureReadError when the path is missing or of no registered type."""
    path = Path(path)
    rdr = reader_for(path)
    if rdr is None:
        if not path.exists():
            raise StructureReadError(f"no such file or folder: {path}")
        raise StructureReadError(f"unknown structure file type: {path} (expected {known_types()})")
    if not path.exists():
        raise StructureReadError(f"no such file: {path}")
    records, skipped = [], []
    for i, entry in enumerate(rdr.entries(path)):
        try:
            records.append(rdr.parse(entry))
        except StructureReadError as exc:
            skipped.append((rdr.entry_name(path, i, entry), str(exc)))
    return records, skipped


# ----------------------------------------------------------------------------------------------- built-in
@reader(".csv", ".csv.gz", parse=record_from_row, cached=True)
def csv_rows(path: Path) -> Iterator[dict[str, str]]:
    """DiffCSP/CDVAE CSV (plain or gzipped): one CIF per row in the ``cif`` column."""
    return iter_csv_rows(path)


@reader(".cif", parse=record_from_cif_file, per_file=True)
def cif_file(path: Path) -> Iterator[str]:
    """A single-structure CIF file."""
    yield str(path)


@reader(FOLDER, parse=record_from_cif_file, per_file=True)
def cif_folder(path: Path) -> Iterator[str]:
    """A folder of CIF files (``*.cif``, in name order)."""
    for f in sorted(Path(path).glob("*.cif")):
        yield str(f)


@reader(".extxyz", ".xyz", parse=record_from_atoms)
def extxyz_frames(path: Path) -> Iterator[Any]:
    """Extended XYZ frames (ASE); a file that ASE cannot read is a StructureReadError."""
    from ase.io import iread

    try:
        yield from iread(str(path), index=":", format="extxyz")
    except Exception as exc:  # ASE raises many types for malformed files
        raise StructureReadError(f"{path}: malformed extxyz ({str(exc)[:120]})") from None
