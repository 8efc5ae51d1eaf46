"""One record per source entry: id, structure and labels, parsed the same way for every data source.

A :class:`Record` is what every reader of DAO produces from one raw entry (a CSV row in DiffCSP/CDVAE
format, a CIF file, an extxyz frame): the entry's id, the pymatgen ``Structure`` exactly as parsed (not
reduced) and its numeric labels. Training, CrysDB building, property tasks and evaluation all read CSV rows
through :func:`record_from_row`; which file types exist is decided in :mod:`dao.data.sources`.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from dao.constants import EHULL_COLUMNS, ID_COLUMNS
from dao.crystal import Crystal, input_crystal
from dao.errors import StructureReadError

if TYPE_CHECKING:
    from ase import Atoms
    from pymatgen.core import Structure

#: label name -> source columns (CSV columns or extxyz info keys) that may carry it, in order of preference
LABELS: dict[str, tuple[str, ...]] = {
    "e_above_hull": EHULL_COLUMNS,
    "formation_energy_per_atom": ("formation_energy_per_atom", "e_form"),
    "band_gap": ("band_gap",),
}


@dataclass
class Record:
    """One entry of a data source: ``id`` (None when the source has none), the parsed ``structure``,
    numeric ``labels`` (only those the entry carries; NaN where a value is not a finite number) and
    ``info``, other scalar metadata of the entry (e.g. an extxyz frame's info)."""

    id: str | None
    structure: Structure
    labels: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def to_crystal(self, **meta: Any) -> Crystal:
        """The Niggli-reduced :class:`~dao.crystal.Crystal`; ``meta`` = ``meta`` arguments, then ``info``,
        the id (when any) and the labels. Raises StructureReadError for unusable or unphysical structures
        (:func:`dao.crystal.input_crystal`: negative-volume cell, atoms closer than MIN_INPUT_DISTANCE)."""
        full = {**meta, **self.info}
        if self.id is not None:
            full["id"] = self.id
        full.update(self.labels)
        return input_crystal(self.structure, meta=full)


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently gunzipping it when it starts with the gzip magic bytes."""
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


#: what a file that is not UTF-8 text, a truncated or corrupt gzip stream or a broken CSV raises while read
_UNREADABLE_TEXT = (UnicodeDecodeError, EOFError, zlib.error, gzip.BadGzipFile, csv.Error)


def _unreadable(path: str | Path, exc: BaseException, line: int | None = None) -> StructureReadError:
    """The StructureReadError of a text file that cannot be read, naming the file (and the line when known)."""
    where = f"{path}" + (f" (near line {line})" if line else "")
    if isinstance(exc, UnicodeDecodeError):
        return StructureReadError(f"{where}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at "
                                  f"offset {exc.start} of a read block); save the file as UTF-8")
    if isinstance(exc, (EOFError, zlib.error, gzip.BadGzipFile)):
        return StructureReadError(f"{where}: corrupt or truncated gzip file ({str(exc)[:120] or type(exc).__name__})")
    return StructureReadError(f"{where}: malformed CSV ({str(exc)[:120]})")


def iter_csv_rows(path: str | Path) -> Iterator[dict[str, str]]:
    """Stream the rows of a (gzipped) CSV file. A file that is not UTF-8, a corrupt gzip stream or a broken CSV
    raises StructureReadError naming the file."""
    csv.field_size_limit(1 << 30)
    reader = None
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            yield from reader
    except _UNREADABLE_TEXT as exc:
        raise _unreadable(path, exc, reader.line_num if reader is not None else None) from None


def read_csv_table(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """All rows of a (gzipped) CSV file and its column names (errors as in :func:`iter_csv_rows`)."""
    csv.field_size_limit(1 << 30)
    reader = None
    try:
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except _UNREADABLE_TEXT as exc:
        raise _unreadable(path, exc, reader.line_num if reader is not None else None) from None


def structure_from_cif_string(text: str) -> Structure:
    """Parse one CIF string into a pymatgen Structure (as written: primitive=False, no reduction); raises
    StructureReadError with a short reason."""
    from pymatgen.core import Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return Structure.from_str(text, fmt="cif")
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StructureReadError(f"malformed CIF ({msg[:120]})") from None


def label_value(value: Any) -> float:
    """A label as a float; NaN when it is missing, not a number or not finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def record_id(entry: Mapping[str, Any], columns: Sequence[str] = ID_COLUMNS) -> str | None:
    """The first non-empty id among ``columns`` of a row (or info dict), stripped; None when none."""
    for col in columns:
        value = entry.get(col)
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def labels_of(entry: Mapping[str, Any], labels: Mapping[str, Sequence[str]] = LABELS) -> dict[str, float]:
    """``{label: value}`` for every label whose column the entry has (first column in preference order)."""
    out = {}
    for name, cols in labels.items():
        col = next((c for c in cols if c in entry), None)
        if col is not None:
            out[name] = label_value(entry[col])
    return out


def record_from_row(row: Mapping[str, str], labels: Mapping[str, Sequence[str]] = LABELS,
                    id_columns: Sequence[str] = ID_COLUMNS) -> Record:
    """The record of one DiffCSP/CDVAE CSV row: the CIF of its ``cif`` column, its id and ``labels``.
    Raises StructureReadError when the row has no ``cif`` column or its CIF does not parse."""
    if "cif" not in row:
        raise StructureReadError("row has no 'cif' column")
    return Record(record_id(row, id_columns), structure_from_cif_string(row["cif"] or ""), labels_of(row, labels))


def record_from_cif_file(path: str | Path) -> Record:
    """The record of a single-structure CIF file (the first block if several); the id is the file stem.
    Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise StructureReadError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise StructureReadError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return Record(path.stem, structure_from_cif_string(text))
    except StructureReadError as exc:
        raise StructureReadError(f"{path}: {exc}") from None


def record_from_atoms(atoms: Atoms) -> Record:
    """The record of an ASE Atoms frame (extxyz): id and labels from its info, other scalar info kept."""
    from pymatgen.io.ase import AseAtomsAdaptor

    if not all(atoms.pbc):
        raise StructureReadError("ASE Atoms must be periodic in all three directions")
    # ASE parses extxyz numbers as numpy scalars: keep them as the Python scalars they stand for
    info = {k: v.item() if hasattr(v, "item") and getattr(v, "ndim", None) == 0 else v for k, v in atoms.info.items()}
    info = {k: v for k, v in info.items() if isinstance(v, (int, float, str))}
    return Record(record_id(info, ("material_id", "id")), AseAtomsAdaptor.get_structure(atoms), labels_of(info),
                  info)
