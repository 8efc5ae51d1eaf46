"""Pass 2 of a CrysDB build: deduplicate one hash partition (all entries of some reduced formulas)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dao.data.crysdb.store import crystal_from_record, read_shard
from dao.data.dedupe import StructureDeduplicator


def dedupe_partition(args: tuple[Path, Sequence[float]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Decide every corpus entry of one partition; ``args`` = (Parquet file, (ltol, stol, angle_tol)).
    Returns (kept records, dropped {key, source, stage, of}). The first entry of a structure (in source
    order) is the one kept; entries are bucketed by reduced formula and primitive site count (see
    :class:`~dao.data.dedupe.StructureDeduplicator`)."""
    path, (ltol, stol, angle_tol) = args
    rows = read_shard(path)  # in arrival order: sources in the order given, rows in file order
    dedup = StructureDeduplicator(ltol, stol, angle_tol)
    keys = [(rec["reduced_formula"], rec.pop("primitive_sites")) for rec in rows]
    for key, rec in zip(keys, rows):
        if rec["is_exclude"]:
            dedup.exclude(key, crystal_from_record(rec).to_structure, rec["id"])
    kept, dropped = [], []
    by_key = {rec["key"]: rec for rec in rows}
    for key, rec in zip(keys, rows):
        if rec["is_exclude"]:
            continue
        stage, of = dedup.add(key, crystal_from_record(rec).to_structure, rec["key"])
        if stage == "kept":
            kept.append(rec)
            continue
        if stage == "duplicate":
            rep = by_key[of]
            rep["duplicates"] = list(rep["duplicates"]) + [rec["key"]]
        dropped.append({"key": rec["key"], "source": rec["source"], "stage": stage, "of": of})
    return kept, dropped
