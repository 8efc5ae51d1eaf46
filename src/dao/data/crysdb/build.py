"""CrysDB builder (see docs/design.md, 'Data and CrysDB'): merge crystal sources into one deduplicated,
sharded Parquet store.

Stages, each counted per source in ``report.json``:

1. **read/parse** — every entry of a source of a registered file type (:mod:`dao.data.sources`: CSV rows
   with a ``cif`` column, CIF files of a folder, extxyz frames, ...); entries that fail to parse are
   skipped and listed in ``skipped.csv`` with the reason (never fatal);
2. **filter** — atoms per cell in [min_atoms, max_atoms] (3–30) and, where labelled, E_hull < max_e_hull
   (1.0 eV/atom);
3. **Niggli reduction** (with the canonical orientation of :class:`~dao.crystal.Crystal`);
4. **deduplication** — an entry is dropped when its id is an excluded id, when it matches an excluded
   structure, or when it matches an entry already kept (pymatgen StructureMatcher; default tolerances, which
   ``BuildConfig.ltol/stol/angle_tol`` can tighten for matches inside the corpus only).
   Structures are compared only inside a bucket of equal reduced formula and equal number of sites of the
   primitive cell that StructureMatcher compares (it cannot match structures that differ in either, so no
   duplicate is missed), against the bucket's kept representatives (:mod:`dao.data.crysdb.dedupe`).

Scale: pass 1 streams every source in chunks through worker processes and appends the parsed entries to
hash partitions (by reduced formula) on disk; pass 2 deduplicates one partition at a time, in parallel.
Memory is bounded by one chunk plus one partition (``partitions`` grows with the corpus), never by the
corpus, and no step is quadratic in it: matching cost is quadratic only inside one reduced formula.

Output (written to a temporary folder and moved into place at the end): ``shards/part-XXXXX.parquet``
(columns of :func:`dao.data.crysdb.store.schema`), ``report.json``, ``skipped.csv``, ``elements.png``.
"""
from __future__ import annotations

import math
import shutil
import time
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from dao.config import Config
from dao.crystal import input_crystal
from dao.data.crysdb.dedupe import dedupe_partition
from dao.data.crysdb.report import BuildReport, write_outputs
from dao.data.crysdb.store import schema
from dao.data.dedupe import matcher_reduced
from dao.data.records import LABELS
from dao.data.sources import Reader, known_types, reader_for
from dao.errors import ConfigError, DAOError, StructureReadError


@dataclass
class BuildConfig(Config):
    """Settings of ``dao data build`` (the CLI's option defaults are these fields' defaults)."""

    section: ClassVar[str] = "build"
    min_atoms: int = 3
    max_atoms: int = 30
    max_e_hull: float = 1.0
    partitions: int = 16
    workers: int = 1
    chunk_size: int = 500
    # StructureMatcher tolerances for deduplication inside the corpus (pymatgen's defaults). Tighter values
    # keep distinct local minima that the defaults merge (e.g. carbon polymorphs). Matching against the
    # excluded sets never gets tighter than the defaults, so the exclusion guarantee does not weaken.
    ltol: float = 0.2
    stol: float = 0.3
    angle_tol: float = 5.0

    def validate(self) -> None:
        for name in ("min_atoms", "max_atoms", "partitions", "workers", "chunk_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config build.{name}: must be at least 1, got {getattr(self, name)}")
        for name in ("ltol", "stol", "angle_tol"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"config build.{name}: must be positive, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------------- pass 1
def _filtered(n: int, e_hull: float, cfg: BuildConfig | None) -> dict[str, str] | None:
    if cfg is not None and not (cfg.min_atoms <= n <= cfg.max_atoms):
        return {"stage": "filtered_atoms", "reason": f"{n} atoms (allowed {cfg.min_atoms}–{cfg.max_atoms})"}
    if cfg is not None and not math.isnan(e_hull) and not e_hull < cfg.max_e_hull:
        return {"stage": "filtered_e_hull", "reason": f"E_hull {e_hull:.3f} eV/atom"}
    return None


def parse_entry(source: str, index: int, rdr: Reader, entry: Any, cfg: BuildConfig | None) -> dict[str, Any]:
    """Parse, validate and (when ``cfg``) filter one raw entry: a record, or {"stage": ..., "reason": ...}."""
    try:
        rec = rdr.parse(entry)
        structure = rec.structure
        labels = {k: rec.labels.get(k, math.nan) for k in LABELS}
        skip = _filtered(len(structure), labels["e_above_hull"], cfg)
        if skip is not None:
            return skip
        crystal = input_crystal(structure)  # unphysical rows (atoms < 0.1 Å apart, volume ≤ 0) are skipped
        primitive_sites = len(matcher_reduced(structure))
    except StructureReadError as exc:
        return {"stage": "parse_failed", "reason": str(exc)[:200]}
    except Exception as exc:  # any parser failure is a bad row, never fatal
        return {"stage": "parse_failed", "reason": f"{type(exc).__name__}: {str(exc)[:160]}"}
    key = f"{source}:{index}"
    return {"primitive_sites": primitive_sites, "key": key, "id": rec.id or key, "source": source,
            "source_row": index, "reduced_formula": structure.composition.reduced_formula,
            "num_atoms": crystal.num_atoms, "atomic_numbers": crystal.atomic_numbers.tolist(),
            "frac_coords": crystal.frac_coords.reshape(-1).tolist(), "lattice": crystal.lattice.reshape(-1).tolist(),
            **labels, "is_exclude": cfg is None, "duplicates": [], "relaxed_by": None, "e_above_hull_original": None}


Chunk = tuple[str, Reader, list[tuple[int, Any]], "BuildConfig | None"]


def _parse_chunk(args: Chunk) -> list[dict[str, Any]]:
    source, rdr, items, cfg = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [dict(parse_entry(source, i, rdr, entry, cfg), _row=i) for i, entry in items]


def _reader(path: Path) -> Reader:
    rdr = reader_for(path)
    if rdr is None:
        if not path.exists():
            raise DAOError(f"source not found: {path}")
        raise DAOError(f"unknown source type: {path} (expected {known_types()})")
    return rdr


def _chunks(source: str, path: Path, cfg: BuildConfig | None, size: int) -> Iterator[Chunk]:
    rdr = _reader(path)
    buf: list[tuple[int, Any]] = []
    for item in enumerate(rdr.entries(path)):
        buf.append(item)
        if len(buf) == size:
            yield source, rdr, buf, cfg
            buf = []
    if buf:
        yield source, rdr, buf, cfg


def _bounded_map(pool: Any, func: Callable[[Any], Any], items: Iterable[Any], window: int = 8) -> Iterator[Any]:
    """Ordered map over a (lazy) iterator, in worker processes when ``pool``, with at most ``window`` tasks
    in flight: ``Pool.imap`` would drain the whole iterator into memory first."""
    if pool is None:
        yield from map(func, items)
        return
    pending: list = []
    for item in items:
        pending.append(pool.apply_async(func, (item,)))
        if len(pending) >= window:
            yield pending.pop(0).get()
    for r in pending:
        yield r.get()


class _PartitionWriter:
    """Appends records to ``partitions`` Parquet files by a stable hash of the reduced formula."""

    def __init__(self, folder: Path, partitions: int, flush_rows: int = 2000) -> None:
        self.folder, self.n, self.flush_rows = folder, partitions, flush_rows
        self.buffers: dict[int, list] = defaultdict(list)
        self.writers: dict[int, Any] = {}

    def path(self, p: int) -> Path:
        return self.folder / f"partition-{p:05d}.parquet"

    def add(self, rec: dict[str, Any]) -> None:
        p = zlib.crc32(rec["reduced_formula"].encode()) % self.n
        self.buffers[p].append(rec)
        if len(self.buffers[p]) >= self.flush_rows:
            self._flush(p)

    def _flush(self, p: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        rows = self.buffers.pop(p, [])
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=schema(partition=True))
        if p not in self.writers:
            self.writers[p] = pq.ParquetWriter(self.path(p), schema(partition=True))
        self.writers[p].write_table(table)

    def close(self) -> list[Path]:
        for p in list(self.buffers):
            self._flush(p)
        for w in self.writers.values():
            w.close()
        return [self.path(p) for p in sorted(self.writers)]


# ----------------------------------------------------------------------------------------------- build
def source_names(paths: Sequence[Path]) -> list[str]:
    """Short unique source names: the file stem (``train``), with the parent folder when stems collide
    (``mp_20/train``), and a counter as the last resort."""
    def stem(p: Path) -> str:
        base = p.name
        for suffix in (".gz", ".csv", ".extxyz", ".xyz", ".cif"):
            base = base[: -len(suffix)] if base.endswith(suffix) else base
        return base

    stems = [stem(p) for p in paths]
    names = [f"{p.parent.name}/{b}" if stems.count(b) > 1 else b for p, b in zip(paths, stems)]
    seen: Counter = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


@dataclass
class _Pass1:
    counts: dict[str, Counter]
    skipped: list[tuple[str, int, str, str]]
    partitions: list[Path]


def _parse_sources(jobs: list[tuple[Path, str, bool]], cfg: BuildConfig, work: Path, pool: Any,
                   progress: bool) -> _Pass1:
    """Pass 1: parse every source (excluded ones first, so their ids are known) into hash partitions."""
    from tqdm.auto import tqdm

    counts: dict[str, Counter] = defaultdict(Counter)
    skipped: list[tuple[str, int, str, str]] = []
    exclude_ids: set[str] = set()
    writer = _PartitionWriter(work, cfg.partitions)
    bar = tqdm(desc="parsing", unit="entries", disable=not progress)
    for path, name, is_exclude in sorted(jobs, key=lambda j: not j[2]):  # stable: excluded sources first
        for chunk in _bounded_map(pool, _parse_chunk, _chunks(name, path, None if is_exclude else cfg, cfg.chunk_size)):
            for rec in chunk:
                counts[name]["read"] += 1
                row = rec.pop("_row")
                if "stage" in rec:
                    counts[name][rec["stage"]] += 1
                    skipped.append((name, row, rec["stage"], rec["reason"]))
                    continue
                if is_exclude:
                    exclude_ids.add(rec["id"])
                elif rec["id"] in exclude_ids:
                    counts[name]["excluded_id"] += 1
                    continue
                writer.add(rec)
            bar.update(len(chunk))
    bar.close()
    return _Pass1(counts, skipped, writer.close())


def _dedupe_all(parsed: _Pass1, cfg: BuildConfig, pool: Any, progress: bool) -> list[list[dict[str, Any]]]:
    """Pass 2: deduplicate every partition; counts the outcome per source into ``parsed.counts``."""
    from tqdm.auto import tqdm

    shard_rows: list[list[dict[str, Any]]] = []
    bar = tqdm(total=len(parsed.partitions), desc="deduplicating", unit="partition", disable=not progress)
    tolerances = (cfg.ltol, cfg.stol, cfg.angle_tol)
    for kept, dropped in _bounded_map(pool, dedupe_partition, ((p, tolerances) for p in parsed.partitions)):
        for d in dropped:
            parsed.counts[d["source"]][d["stage"]] += 1
        for rec in kept:
            parsed.counts[rec["source"]]["kept"] += 1
        shard_rows.append(kept)
        bar.update(1)
    bar.close()
    return shard_rows


def build_crysdb(sources: Sequence[str | Path], out: str | Path, exclude: Sequence[str | Path] = (),
                 config: BuildConfig | None = None, progress: bool = False) -> BuildReport:
    """Build a CrysDB from ``sources`` into ``out`` (see the module docstring). Returns the report."""
    import multiprocessing as mp

    cfg = config or BuildConfig()
    t0 = time.time()
    src_paths = [Path(s) for s in sources]
    exc_paths = [Path(s) for s in exclude]
    for p in src_paths + exc_paths:
        if not p.exists():
            raise DAOError(f"source not found: {p}")
    if not src_paths:
        raise DAOError("no sources given")
    names = source_names(src_paths + exc_paths)
    jobs = list(zip(src_paths + exc_paths, names, [False] * len(src_paths) + [True] * len(exc_paths)))
    pool = mp.get_context("spawn").Pool(cfg.workers) if cfg.workers > 1 else None
    work = Path(str(out).rstrip("/") + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        try:
            parsed = _parse_sources(jobs, cfg, work, pool, progress)
            shard_rows = _dedupe_all(parsed, cfg, pool, progress)
        finally:
            if pool is not None:
                pool.close()
                pool.join()
        report = BuildReport(config=cfg.to_dict())
        return write_outputs(report, out, shard_rows, jobs, parsed.counts, parsed.skipped, t0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
