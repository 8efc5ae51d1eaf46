"""The template index file: one ``.npz`` (numpy, no pickle) with a format version (docs/templates.md).

Arrays: ``format_version`` (1,), ``numbers`` (ΣN,) atomic numbers of all entries concatenated, ``frac``
(ΣN, 3) float32 fractional coordinates, ``offsets`` (M+1,) entry starts, ``lattices`` (M, 3, 3) float32
rows in Å, ``ids`` (M,) str, ``source`` (M,) int16 index into ``sources`` (str), ``spacegroup`` (M,) int16
(spglib, symprec 0.1 Å; 0 when undetermined).
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dao.errors import DAOError
from dao.structure_io import atomic_write

FORMAT_VERSION = 1
_KEYS = ("numbers", "frac", "offsets", "lattices", "ids", "source", "sources", "spacegroup")


class TemplateIndexError(DAOError):
    """A missing, corrupt or incompatible template index file."""


@dataclass
class TemplateArrays:
    """The columns of a template index (see the module docstring)."""

    numbers: np.ndarray
    frac: np.ndarray
    offsets: np.ndarray
    lattices: np.ndarray
    ids: np.ndarray
    source: np.ndarray
    sources: np.ndarray
    spacegroup: np.ndarray

    def __len__(self) -> int:
        return int(len(self.lattices))

    def take(self, keep: np.ndarray) -> TemplateArrays:
        """The entries at indices ``keep`` (in that order)."""
        keep = np.asarray(keep, dtype=np.int64)
        sizes = np.diff(self.offsets)[keep]
        atoms = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in keep]) if len(keep) \
            else np.zeros(0, dtype=np.int64)
        return TemplateArrays(self.numbers[atoms], self.frac[atoms], np.concatenate([[0], np.cumsum(sizes)]),
                              self.lattices[keep], self.ids[keep], self.source[keep], self.sources,
                              self.spacegroup[keep])


def save_arrays(arrays: TemplateArrays, path: str | Path) -> None:
    """Write atomically (a temporary file in the same folder, then rename)."""
    atomic_write(path, lambda fh: np.savez_compressed(fh, format_version=np.array([FORMAT_VERSION]),
                                                      **{k: getattr(arrays, k) for k in _KEYS}))


def load_arrays(path: str | Path) -> TemplateArrays:
    """Read an index file; any problem is one :class:`TemplateIndexError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise TemplateIndexError(f"template index not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            version = int(data["format_version"][0]) if "format_version" in data.files else None
            if version != FORMAT_VERSION:
                raise TemplateIndexError(f"template index {path} has format version {version}, this DAO reads "
                                         f"version {FORMAT_VERSION}; rebuild it with 'dao templates build'")
            arrays = TemplateArrays(**{k: data[k] for k in _KEYS})
    except TemplateIndexError:
        raise
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise TemplateIndexError(f"corrupt template index file {path}: {exc}") from None
    n = len(arrays.lattices)
    if len(arrays.offsets) != n + 1 or arrays.offsets[-1] != len(arrays.numbers) or len(arrays.ids) != n \
            or arrays.frac.shape != (len(arrays.numbers), 3):
        raise TemplateIndexError(f"corrupt template index file {path}: inconsistent array sizes")
    return arrays
