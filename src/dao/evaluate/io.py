"""Reading references and predictions (see the package docstring for the conventions)."""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Lattice, Structure

from dao.data.records import read_csv_table as _read_csv
from dao.data.records import record_from_row, record_id
from dao.errors import StructureReadError
from dao.evaluate.canon import MISSING

if TYPE_CHECKING:
    from ase import Atoms

_MAX_EXAMPLES = 20
_NAME_RE = re.compile(r"^(?P<name>.+)_(?P<sample>\d+)$")
Entry = tuple[int, int | None, Structure | None, str]  # (row, sample or None = next free, structure, source)


def _parse_cif(text: str) -> Structure:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_str(text, fmt="cif")  # primitive=False, as DiffCSP's get_gt_crys_ori


def load_references(csv_path: str | Path) -> tuple[list[Structure], list[str]]:
    """Read a DiffCSP/CDVAE CSV (``.csv`` or ``.csv.gz``): structures from the ``cif`` column, ids from
    ``material_id`` (row index as a string when absent). Raises ``FileNotFoundError`` or ``ValueError``
    (no ``cif`` column, an unparseable CIF) with a one-line message."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"reference file not found: {path}")
    try:
        fields, rows = _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, StructureReadError) as exc:
        raise ValueError(f"cannot read reference CSV {path}: {exc}") from None
    if "cif" not in fields:
        raise ValueError(f"reference CSV {path} has no 'cif' column (columns: {', '.join(fields) or 'none'})")
    structures, ids = [], []
    for i, row in enumerate(rows):
        mid = record_id(row, ("material_id",)) or str(i)
        try:
            structures.append(record_from_row(row, labels={}, id_columns=("material_id",)).structure)
        except Exception as exc:
            raise ValueError(f"reference row {i} ({mid}) of {path}: unreadable CIF ({type(exc).__name__}: "
                             f"{str(exc)[:120]})") from None
        ids.append(mid)
    if not structures:
        raise ValueError(f"reference CSV {path} has no rows")
    return structures, ids


@dataclass
class LoadReport:
    """What reading predictions found: entries, unreadable ones, ones naming no reference row, duplicates."""

    format: str
    n_entries: int = 0
    n_unreadable: int = 0
    n_unassigned: int = 0
    n_duplicates: int = 0
    n_ambiguous_names: int = 0
    unreadable_examples: list[str] = field(default_factory=list)
    unassigned_examples: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def note(self, kind: str, text: str) -> None:
        lst = self.unreadable_examples if kind == "unreadable" else self.unassigned_examples
        if len(lst) < _MAX_EXAMPLES:
            lst.append(text)

    def unassigned(self, name: str) -> None:
        self.n_unassigned += 1
        self.note("unassigned", name)

    def parse(self, name: str, parse: Callable[[Any], Structure], source: Any) -> Structure | None:
        """``parse(source)``, or ``None`` with the entry counted and noted as unreadable."""
        try:
            return parse(source)
        except Exception as exc:
            self.n_unreadable += 1
            self.note("unreadable", f"{name}: {type(exc).__name__}: {str(exc)[:120]}")
            return None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Resolver:
    """Maps a name from a file name / info key to a reference row."""

    def __init__(self, reference_ids: Sequence[str]):
        self.n = len(reference_ids)
        self.by_id: dict[str, int] = {}
        for i, mid in enumerate(reference_ids):
            self.by_id.setdefault(str(mid), i)

    def index(self, value: Any) -> int | None:
        try:
            i = int(str(value).strip())
        except ValueError:
            return None
        return i if 0 <= i < self.n else None

    def material_id(self, value: Any) -> int | None:
        return self.by_id.get(str(value).strip())

    def name(self, name: str, report: LoadReport) -> int | None:
        """An all-digit name is a 0-based row index when such a row exists; anything else (or a number
        beyond the last row) is a material_id. Digit names that are also another row's material_id are
        counted as ambiguous (a warning is issued)."""
        j = self.by_id.get(name)
        if name.isdigit():
            i = self.index(name)
            if i is not None:
                if j is not None and j != i:
                    report.n_ambiguous_names += 1
                return i
        return j


def _assemble(entries: list[Entry], report: LoadReport
              ) -> dict[int, list[Any]]:
    """entries: (row, sample or None = next free, structure or None, source name)."""
    by_row: dict[int, dict[int, Any]] = {}
    pending: list[tuple[int, Structure | None, str]] = []
    for row, sample, s, src in entries:
        if sample is None:
            pending.append((row, s, src))
            continue
        slot = by_row.setdefault(row, {})
        if sample in slot:
            report.n_duplicates += 1
            continue
        slot[sample] = s
    for row, s, src in pending:
        slot = by_row.setdefault(row, {})
        j = 0
        while j in slot:
            j += 1
        slot[j] = s
    out: dict[int, list[Any]] = {}
    for row, slot in by_row.items():
        lst: list[Any] = [MISSING] * (max(slot) + 1)
        for j, s in slot.items():
            lst[j] = s
        out[row] = lst
    return out


def _load_cif_dir(path: Path, res: _Resolver, report: LoadReport) -> list[Entry]:
    entries = []
    for f in sorted(path.iterdir()):
        if not (f.is_file() and f.suffix.lower() == ".cif"):
            continue
        report.n_entries += 1
        stem = f.stem
        m = _NAME_RE.match(stem)
        row, sample = None, None
        if m:
            row = res.name(m.group("name"), report)
            sample = int(m.group("sample"))
        if row is None:
            row, sample = res.name(stem, report), 0
        if row is None:
            report.unassigned(f.name)
            continue
        s = report.parse(f.name, _parse_cif, f.read_text(encoding="utf-8", errors="replace"))
        entries.append((row, sample, s, f.name))
    return entries


def _atoms_to_structure(atoms: Atoms) -> Structure:
    cell = np.asarray(atoms.cell.array, dtype=float)
    if not all(atoms.pbc) or abs(np.linalg.det(cell)) < 1e-12:
        raise ValueError("frame is not a periodic crystal (pbc or cell missing)")
    return Structure(Lattice(cell), [int(z) for z in atoms.numbers], atoms.positions, coords_are_cartesian=True)


def _load_extxyz(path: Path, res: _Resolver, report: LoadReport, k: int | None) -> list[Entry]:
    from ase.io import iread

    frames = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for atoms in iread(str(path), index=":", format="extxyz"):
                frames.append(atoms)
    except Exception as exc:
        msg = f"extxyz parsing stopped after {len(frames)} frames: {type(exc).__name__}: {str(exc)[:200]}"
        if not frames:
            raise ValueError(f"cannot read predictions {path}: {msg}") from None
        report.errors.append(msg)
        warnings.warn(msg, stacklevel=3)
    report.n_entries = len(frames)
    keyed = any(("ref_index" in a.info or "material_id" in a.info) for a in frames)
    if not keyed:
        if k is None:
            if res.n and len(frames) % res.n == 0:
                k = len(frames) // res.n
            else:
                raise ValueError(f"{path}: frames carry no ref_index/material_id and their number "
                                 f"({len(frames)}) is not a multiple of the references ({res.n}); pass k")
    entries = []
    for f, atoms in enumerate(frames):
        name = f"frame {f}"
        if keyed:
            if "ref_index" in atoms.info:
                row = res.index(atoms.info["ref_index"])
            elif "material_id" in atoms.info:
                row = res.material_id(atoms.info["material_id"])
            else:
                row = None
            sample = atoms.info.get("sample")
            try:
                sample = None if sample is None else int(sample)
            except (TypeError, ValueError):
                sample = None
        else:
            row, sample = f // k, f % k
            if row >= res.n:
                row = None
        if row is None:
            report.unassigned(name)
            continue
        entries.append((row, sample, report.parse(name, _atoms_to_structure, atoms), name))
    return entries


def _load_csv(path: Path, res: _Resolver, report: LoadReport) -> list[Entry]:
    try:
        fields, rows = _read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error, EOFError, StructureReadError) as exc:
        raise ValueError(f"cannot read predictions CSV {path}: {exc}") from None
    if "cif" not in fields or not ({"ref_index", "material_id"} & set(fields)):
        raise ValueError(f"predictions CSV {path} needs a 'cif' column and 'ref_index' or 'material_id' "
                         f"(columns: {', '.join(fields)})")
    entries = []
    for n, row in enumerate(rows):
        report.n_entries += 1
        name = f"csv row {n}"
        if "ref_index" in fields and (row.get("ref_index") or "").strip():
            idx = res.index(row["ref_index"])
        elif "material_id" in fields:
            idx = res.material_id(row.get("material_id") or "")
        else:
            idx = None
        if idx is None:
            report.unassigned(name)
            continue
        sample: int | None = None
        if (row.get("sample") or "").strip():
            try:
                sample = int(float(row["sample"]))
            except ValueError:
                sample = None
        entries.append((idx, sample, report.parse(name, _parse_cif, row.get("cif") or ""), name))
    return entries


def load_predictions_with_report(path: str | Path, reference_ids: Sequence[str], k: int | None = None
                                 ) -> tuple[dict[int, list[Any]], LoadReport]:
    """:func:`load_predictions` and a :class:`LoadReport` of what was read, skipped and unassigned."""
    path = Path(path)
    res = _Resolver(reference_ids)
    name = path.name.lower()
    if path.is_dir():
        report = LoadReport("cif_dir")
        entries = _load_cif_dir(path, res, report)
    elif not path.exists():
        raise FileNotFoundError(f"predictions not found: {path}")
    elif name.endswith((".extxyz", ".xyz")):
        report = LoadReport("extxyz")
        entries = _load_extxyz(path, res, report, k)
    elif name.endswith((".csv", ".csv.gz")):
        report = LoadReport("csv")
        entries = _load_csv(path, res, report)
    else:
        raise ValueError(f"unrecognised predictions {path}: expected a directory of CIFs, .extxyz/.xyz or "
                         ".csv/.csv.gz")
    if not entries:
        raise ValueError(f"no predictions found in {path} (nothing to evaluate)")
    if report.n_ambiguous_names:
        warnings.warn(f"{report.n_ambiguous_names} all-digit prediction names are also material_ids of other "
                      "rows; they were read as 0-based row indices", stacklevel=2)
    return _assemble(entries, report), report


def load_predictions(path: str | Path, references_ids: Sequence[str], k: int | None = None
                     ) -> dict[int, list[Structure | None]]:
    """Predictions keyed by reference row: ``{row: [sample0, sample1, ...]}``; ``None`` = unreadable,
    ``MISSING`` = a gap in the sample numbering. See the package docstring for accepted inputs."""
    return load_predictions_with_report(path, references_ids, k)[0]
