"""The CrysDB store: a folder of ``report.json``, ``shards/part-XXXXX.parquet`` (one row per entry, columns of
:func:`schema`), ``skipped.csv`` and ``elements.png``; reading it back as records or crystals."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from dao.crystal import Crystal
from dao.data.records import LABELS

if TYPE_CHECKING:
    import pyarrow as pa


def schema(partition: bool = False) -> pa.Schema:
    """Columns of a shard; ``partition`` adds the dedupe bucket key of the build's intermediate files."""
    import pyarrow as pa

    extra = [("primitive_sites", pa.int32())] if partition else []  # dedupe bucket key, not in the output
    return pa.schema(extra + [
        ("key", pa.string()),  # unique: <source name>:<row>
        ("id", pa.string()),  # the source's own id (material_id, file name) or the key
        ("source", pa.string()), ("source_row", pa.int64()),
        ("reduced_formula", pa.string()), ("num_atoms", pa.int32()),
        ("atomic_numbers", pa.list_(pa.int16())), ("frac_coords", pa.list_(pa.float64())),
        ("lattice", pa.list_(pa.float64())),
        ("e_above_hull", pa.float64()), ("formation_energy_per_atom", pa.float64()), ("band_gap", pa.float64()),
        ("is_exclude", pa.bool_()),
        ("duplicates", pa.list_(pa.string())),  # keys of the entries merged into this one
        ("relaxed_by", pa.string()),  # set by dataset relaxation
        ("e_above_hull_original", pa.float64()),  # the source's label of a relaxed entry
    ])


def write_shard(rows: list[dict[str, Any]], path: Path) -> None:
    """Write records as one Parquet shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows, schema=schema()), path)


def read_shard(path: Path) -> list[dict[str, Any]]:
    """The records of one shard (or of an intermediate partition file)."""
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def is_crysdb(path: str | Path) -> bool:
    """Whether ``path`` is a CrysDB folder (``report.json`` and ``shards/``)."""
    p = Path(path)
    return p.is_dir() and (p / "report.json").is_file() and (p / "shards").is_dir()


def shard_paths(path: str | Path) -> list[Path]:
    return sorted((Path(path) / "shards").glob("*.parquet"))


def iter_crysdb(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream the records of a CrysDB folder, shard by shard."""
    for shard in shard_paths(path):
        yield from read_shard(shard)


def crystal_from_record(rec: dict[str, Any]) -> Crystal:
    """The Crystal of a CrysDB record (meta: id, key, source, row and the labels, NaN when absent)."""
    meta = {"id": rec["id"], "key": rec["key"], "source": rec["source"], "row": rec["source_row"]}
    for k in LABELS:
        v = rec.get(k)
        meta[k] = math.nan if v is None else float(v)
    return Crystal(np.asarray(rec["atomic_numbers"]), np.asarray(rec["frac_coords"]).reshape(-1, 3),
                   np.asarray(rec["lattice"]).reshape(3, 3), meta)


def read_crysdb(path: str | Path) -> list[Crystal]:
    """Every entry of a CrysDB folder as a Crystal."""
    return [crystal_from_record(r) for r in iter_crysdb(path)]
