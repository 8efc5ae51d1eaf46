"""CrysDB builder (DESIGN §5): merge crystal sources into one deduplicated, sharded Parquet store.

Stages, each counted per source in ``report.json``:

1. **read/parse** — CSV rows (a ``cif`` column), CIF files of a folder, extxyz frames; rows that fail to
   parse are skipped and listed in ``skipped.csv`` with the reason (never fatal);
2. **filter** — atoms per cell in [min_atoms, max_atoms] (3–30) and, where labelled, E_hull < max_e_hull
   (1.0 eV/atom);
3. **Niggli reduction** (with the canonical orientation of :class:`~dao.crystal.Crystal`);
4. **deduplication** — an entry is dropped when its id is an excluded id, when it matches an excluded
   structure, or when it matches an entry already kept (pymatgen StructureMatcher; default tolerances, which
   ``BuildConfig.ltol/stol/angle_tol`` can tighten for matches inside the corpus only).
   Structures are compared only inside a bucket of equal reduced formula and equal number of sites of the
   primitive cell that StructureMatcher compares (it cannot match structures that differ in either, so no
   duplicate is missed), against the bucket's kept representatives.

Scale: pass 1 streams every source in chunks through worker processes and appends the parsed entries to
hash partitions (by reduced formula) on disk; pass 2 deduplicates one partition at a time, in parallel.
Memory is bounded by one chunk plus one partition (``partitions`` grows with the corpus), never by the
corpus, and no step is quadratic in it: matching cost is quadratic only inside one reduced formula.

Output (written to a temporary folder and moved into place at the end): ``shards/part-XXXXX.parquet``
(columns below), ``report.json``, ``skipped.csv``, ``elements.png``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import time
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from dao.crystal import Crystal
from dao.errors import DAOError, StructureReadError

STABLE_E_HULL = 0.08  # eV/atom: "stable" in CrysDB (DESIGN §5)
LABELS = {  # output column: CSV columns that may carry it, in order of preference
    "e_above_hull": ("e_above_hull", "energy_above_hull", "e_hull"),
    "formation_energy_per_atom": ("formation_energy_per_atom", "e_form"),
    "band_gap": ("band_gap",),
}
ID_COLUMNS = ("material_id", "id", "name")
STAGES = ("read", "parse_failed", "filtered_atoms", "filtered_e_hull", "excluded_id", "matches_excluded",
          "duplicate", "kept")


@dataclass
class BuildConfig:
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


def _schema(partition: bool = False):
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


# ----------------------------------------------------------------------------------------------- pass 1
def _source_items(path: Path) -> Iterator[tuple[int, str, object]]:
    """(row index, kind, payload) for every raw item of a source, streamed."""
    name = path.name.lower()
    if path.is_dir():
        for i, f in enumerate(sorted(path.glob("*.cif"))):
            yield i, "cif_file", str(f)
    elif name.endswith((".csv", ".csv.gz")):
        from dao.data.readers import iter_csv_rows

        for i, row in enumerate(iter_csv_rows(path)):
            yield i, "csv_row", row
    elif name.endswith(".cif"):
        yield 0, "cif_file", str(path)
    elif name.endswith((".extxyz", ".xyz")):
        from ase.io import iread

        for i, atoms in enumerate(iread(str(path), index=":", format="extxyz")):
            yield i, "atoms", atoms
    elif not path.exists():
        raise DAOError(f"source not found: {path}")
    else:
        raise DAOError(f"unknown source type: {path} (expected .csv[.gz], a folder of CIFs, .cif, .extxyz)")


def _float(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _parse_item(source: str, index: int, kind: str, payload, cfg: BuildConfig | None) -> dict:
    """Parse, validate and (when ``cfg``) filter one raw item: a record, or {"stage": ..., "reason": ...}."""
    from dao.data.readers import structure_from_cif_string

    labels: dict[str, float] = {k: math.nan for k in LABELS}
    raw_id = None
    try:
        if kind == "csv_row":
            if "cif" not in payload:
                raise StructureReadError("row has no 'cif' column")
            structure = structure_from_cif_string(payload["cif"])
            raw_id = next((payload[c] for c in ID_COLUMNS if payload.get(c)), None)
            for out, cols in LABELS.items():
                col = next((c for c in cols if c in payload), None)
                if col is not None:
                    labels[out] = _float(payload[col])
        elif kind == "cif_file":
            text = Path(payload).read_text(errors="replace")
            structure = structure_from_cif_string(text)
            raw_id = Path(payload).stem
        else:
            from pymatgen.io.ase import AseAtomsAdaptor

            structure = AseAtomsAdaptor.get_structure(payload)
            raw_id = payload.info.get("material_id") or payload.info.get("id")
            for out, cols in LABELS.items():
                col = next((c for c in cols if c in payload.info), None)
                if col is not None:
                    labels[out] = _float(payload.info[col])
        n = len(structure)
        if cfg is not None and not (cfg.min_atoms <= n <= cfg.max_atoms):
            return {"stage": "filtered_atoms", "reason": f"{n} atoms (allowed {cfg.min_atoms}–{cfg.max_atoms})"}
        if cfg is not None and not math.isnan(labels["e_above_hull"]) and not labels["e_above_hull"] < cfg.max_e_hull:
            return {"stage": "filtered_e_hull", "reason": f"E_hull {labels['e_above_hull']:.3f} eV/atom"}
        crystal = Crystal.from_structure(structure)
        primitive_sites = len(_matcher_reduced(structure))
    except StructureReadError as exc:
        return {"stage": "parse_failed", "reason": str(exc)[:200]}
    except Exception as exc:  # any parser failure is a bad row, never fatal
        return {"stage": "parse_failed", "reason": f"{type(exc).__name__}: {str(exc)[:160]}"}
    key = f"{source}:{index}"
    return {"primitive_sites": primitive_sites, "key": key, "id": str(raw_id) if raw_id else key, "source": source, "source_row": index,
            "reduced_formula": structure.composition.reduced_formula, "num_atoms": crystal.num_atoms,
            "atomic_numbers": crystal.atomic_numbers.tolist(), "frac_coords": crystal.frac_coords.reshape(-1).tolist(),
            "lattice": crystal.lattice.reshape(-1).tolist(), **labels, "is_exclude": cfg is None,
            "duplicates": [], "relaxed_by": None, "e_above_hull_original": None}


def _parse_chunk(args) -> list[dict]:
    source, items, cfg = args
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [dict(_parse_item(source, i, kind, payload, cfg), _row=i) for i, kind, payload in items]


def _chunks(source: str, path: Path, cfg: BuildConfig | None, size: int):
    buf = []
    for item in _source_items(path):
        buf.append(item)
        if len(buf) == size:
            yield source, buf, cfg
            buf = []
    if buf:
        yield source, buf, cfg


def _bounded_map(pool, func, items: Iterator, window: int = 8):
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
        self.writers: dict[int, object] = {}

    def path(self, p: int) -> Path:
        return self.folder / f"partition-{p:05d}.parquet"

    def add(self, rec: dict) -> None:
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
        table = pa.Table.from_pylist(rows, schema=_schema(partition=True))
        if p not in self.writers:
            self.writers[p] = pq.ParquetWriter(self.path(p), _schema(partition=True))
        self.writers[p].write_table(table)

    def close(self) -> list[Path]:
        for p in list(self.buffers):
            self._flush(p)
        for w in self.writers.values():
            w.close()
        return [self.path(p) for p in sorted(self.writers)]


# ----------------------------------------------------------------------------------------------- pass 2
def _structure(rec: dict):
    return crystal_from_record(rec).to_structure()


def _matcher_reduced(structure):
    """The primitive, Niggli-reduced structure that StructureMatcher (default settings) compares. Two
    structures can only match when these have the same number of sites (no supercell matching), so the
    count is a safe bucket key, and matching the reduced forms skips the reduction on every comparison."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher._get_reduced_structure(structure, True, True)


def _dedupe_partition(args) -> tuple[list[dict], list[dict]]:
    """Decide every corpus entry of one partition; ``args`` = (Parquet file, (ltol, stol, angle_tol)).
    Returns (kept records, dropped {key, source, stage, of}). The first entry of a structure (in source
    order) is the one kept."""
    import pyarrow.parquet as pq
    from pymatgen.analysis.structure_matcher import StructureMatcher

    path, (ltol, stol, angle_tol) = args
    rows = pq.read_table(path).to_pylist()  # in arrival order: sources in the order given, rows in file order
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, rec in enumerate(rows):
        groups[(rec["reduced_formula"], rec.pop("primitive_sites"))].append(i)
    matcher = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol)
    default = StructureMatcher()
    excl_matcher = StructureMatcher(ltol=max(ltol, default.ltol), stol=max(stol, default.stol),
                                    angle_tol=max(angle_tol, default.angle_tol))
    kept, dropped = [], []

    def same(a, b, m=matcher) -> bool:
        return m.fit(a, b, skip_structure_reduction=True)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for members in groups.values():
            if len(members) == 1 and not rows[members[0]]["is_exclude"]:
                kept.append(rows[members[0]])
                continue
            excl = [(rows[i]["id"], _matcher_reduced(_structure(rows[i]))) for i in members if rows[i]["is_exclude"]]
            reps: list[tuple[dict, object]] = []
            for i in members:
                rec = rows[i]
                if rec["is_exclude"]:
                    continue
                s = _matcher_reduced(_structure(rec))
                hit = next((eid for eid, es in excl if same(s, es, excl_matcher)), None)
                if hit is not None:
                    dropped.append({"key": rec["key"], "source": rec["source"], "stage": "matches_excluded", "of": hit})
                    continue
                rep = next((r for r, rs in reps if same(s, rs)), None)
                if rep is not None:
                    rep["duplicates"] = list(rep["duplicates"]) + [rec["key"]]
                    dropped.append({"key": rec["key"], "source": rec["source"], "stage": "duplicate", "of": rep["key"]})
                    continue
                reps.append((rec, s))
                kept.append(rec)
    return kept, dropped


# ----------------------------------------------------------------------------------------------- build
@dataclass
class BuildReport:
    config: dict
    sources: dict[str, dict[str, int]] = field(default_factory=dict)
    excluded_sources: dict[str, dict[str, int]] = field(default_factory=dict)
    totals: dict[str, int] = field(default_factory=dict)
    stability: dict[str, int] = field(default_factory=dict)
    elements: dict[str, int] = field(default_factory=dict)
    shards: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _source_names(paths: Sequence[Path]) -> list[str]:
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


def build_crysdb(sources: Sequence[str | Path], out: str | Path, exclude: Sequence[str | Path] = (),
                 config: BuildConfig | None = None, progress: bool = False) -> BuildReport:
    """Build a CrysDB from ``sources`` into ``out`` (see the module docstring). Returns the report."""
    import multiprocessing as mp

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from dao.structure_io import staged_output_dir, write_json

    cfg = config or BuildConfig()
    t0 = time.time()
    src_paths = [Path(s) for s in sources]
    exc_paths = [Path(s) for s in exclude]
    for p in src_paths + exc_paths:
        if not p.exists():
            raise DAOError(f"source not found: {p}")
    if not src_paths:
        raise DAOError("no sources given")
    report = BuildReport(config=asdict(cfg))
    names = _source_names(src_paths + exc_paths)
    counts: dict[str, Counter] = defaultdict(Counter)
    skipped_rows: list[tuple[str, int, str, str]] = []
    exclude_ids: set[str] = set()
    ctx = mp.get_context("spawn")
    pool = ctx.Pool(cfg.workers) if cfg.workers > 1 else None
    work = Path(str(out).rstrip("/") + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        writer = _PartitionWriter(work, cfg.partitions)
        bar = tqdm(desc="parsing", unit="entries", disable=not progress)
        jobs = list(zip(src_paths + exc_paths, names, [False] * len(src_paths) + [True] * len(exc_paths)))
        for path, name, is_exclude in jobs[len(src_paths):] + jobs[:len(src_paths)]:  # excluded ids first
            for chunk in _bounded_map(pool, _parse_chunk, _chunks(name, path, None if is_exclude else cfg, cfg.chunk_size)):
                for rec in chunk:
                    counts[name]["read"] += 1
                    row = rec.pop("_row")
                    if "stage" in rec:
                        counts[name][rec["stage"]] += 1
                        skipped_rows.append((name, row, rec["stage"], rec["reason"]))
                        continue
                    if is_exclude:
                        exclude_ids.add(rec["id"])
                    elif rec["id"] in exclude_ids:
                        counts[name]["excluded_id"] += 1
                        continue
                    writer.add(rec)
                bar.update(len(chunk))
        bar.close()
        partitions = writer.close()

        shard_rows: list[list[dict]] = []
        bar = tqdm(total=len(partitions), desc="deduplicating", unit="partition", disable=not progress)
        tolerances = (cfg.ltol, cfg.stol, cfg.angle_tol)
        for kept, dropped in _bounded_map(pool, _dedupe_partition, ((p, tolerances) for p in partitions)):
            for d in dropped:
                counts[d["source"]][d["stage"]] += 1
            for rec in kept:
                counts[rec["source"]]["kept"] += 1
            shard_rows.append(kept)
            bar.update(1)
        bar.close()
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    try:
        elements: Counter = Counter()
        stability: Counter = Counter()
        with staged_output_dir(out) as tmp:
            (tmp / "shards").mkdir()
            for j, rows in enumerate(r for r in shard_rows if r):
                rows.sort(key=lambda r: r["key"])
                pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp / "shards" / f"part-{j:05d}.parquet")
                report.shards.append(f"shards/part-{j:05d}.parquet")
                for r in rows:
                    from pymatgen.core import Element

                    for z in set(r["atomic_numbers"]):
                        elements[Element.from_Z(int(z)).symbol] += 1
                    e = r["e_above_hull"]
                    stability["unlabelled" if e is None or math.isnan(e) else
                              "stable" if e <= STABLE_E_HULL else "unstable"] += 1
            for k, name in enumerate(names):
                target = report.excluded_sources if k >= len(src_paths) else report.sources
                target[name] = {s: int(counts[name].get(s, 0)) for s in STAGES
                                if k < len(src_paths) or s in ("read", "parse_failed")}
                target[name]["path"] = str((src_paths + exc_paths)[k])
            report.totals = {s: int(sum(report.sources[n][s] for n in report.sources)) for s in STAGES}
            report.stability = dict(stability)
            report.elements = dict(sorted(elements.items(), key=lambda kv: -kv[1]))
            report.seconds = round(time.time() - t0, 2)
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["source", "row", "stage", "reason"])
            w.writerows(skipped_rows)
            (tmp / "skipped.csv").write_text(buf.getvalue())
            write_json(asdict(report), tmp / "report.json")
            _plot_elements(report.elements, tmp / "elements.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _plot_elements(elements: dict[str, int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pymatgen.core import Element

    items = sorted(elements.items(), key=lambda kv: Element(kv[0]).Z)
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(items)), 3.2))
    ax.bar(range(len(items)), [v for _, v in items], color="#4477aa")
    ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("entries containing the element")
    ax.set_title(f"CrysDB element coverage ({len(items)} elements)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- reading
def is_crysdb(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "report.json").is_file() and (p / "shards").is_dir()


def iter_crysdb(path: str | Path) -> Iterator[dict]:
    """Stream the records of a CrysDB folder, shard by shard."""
    import pyarrow.parquet as pq

    for shard in sorted((Path(path) / "shards").glob("*.parquet")):
        yield from pq.read_table(shard).to_pylist()


def crystal_from_record(rec: dict) -> Crystal:
    meta = {"id": rec["id"], "key": rec["key"], "source": rec["source"], "row": rec["source_row"]}
    for k in LABELS:
        v = rec.get(k)
        meta[k] = math.nan if v is None else float(v)
    return Crystal(np.asarray(rec["atomic_numbers"]), np.asarray(rec["frac_coords"]).reshape(-1, 3),
                   np.asarray(rec["lattice"]).reshape(3, 3), meta)


def read_crysdb(path: str | Path) -> list[Crystal]:
    return [crystal_from_record(r) for r in iter_crysdb(path)]


# ----------------------------------------------------------------------------------------------- relaxation
def relax_crysdb(src: str | Path, out: str | Path, model="default", min_e_hull: float = STABLE_E_HULL,
                 max_e_hull: float = 0.5, steps: int = 20, fmax: float = 0.05, optimizer: str = "lbfgs",
                 batch_size: int = 64, device: str = "cpu", progress: bool = False) -> dict:
    """Dataset relaxation (DESIGN §5): entries with min_e_hull < E_hull ≤ max_e_hull are relaxed under DAO-P
    at t = 0 (positions and cell jointly, a few L-BFGS steps, batched) and relabelled with DAO-P's predicted
    E_hull; the source label moves to ``e_above_hull_original`` and ``relaxed_by`` names the model. Other
    entries, and entries whose relaxation was aborted, are copied unchanged. Writes a new CrysDB at ``out``."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from dao.potentials import load_potential
    from dao.relax import relax_batch
    from dao.structure_io import staged_output_dir, write_json

    src = Path(src)
    if not is_crysdb(src):
        raise DAOError(f"not a CrysDB folder (no report.json and shards/): {src}")
    t0 = time.time()
    pot = load_potential("dao", model, device=device)
    stats: Counter = Counter()
    shifts: list[float] = []
    with staged_output_dir(out) as tmp:
        (tmp / "shards").mkdir()
        shards = sorted((src / "shards").glob("*.parquet"))
        bar = tqdm(total=len(shards), desc="relaxing shards", unit="shard", disable=not progress)
        for shard in shards:
            rows = pq.read_table(shard).to_pylist()
            todo = [i for i, r in enumerate(rows) if r["e_above_hull"] is not None
                    and min_e_hull < r["e_above_hull"] <= max_e_hull]
            stats["entries"] += len(rows)
            stats["selected"] += len(todo)
            for lo in range(0, len(todo), batch_size):
                idx = todo[lo:lo + batch_size]
                results = relax_batch([crystal_from_record(rows[i]).to_atoms() for i in idx], pot, steps=steps,
                                      fmax=fmax, optimizer=optimizer)
                for i, r in zip(idx, results):
                    rec = r.record
                    stats[rec["status"]] += 1
                    if rec["status"] in ("aborted", "error"):
                        continue
                    try:
                        c = Crystal.from_atoms(r.atoms)
                    except StructureReadError:
                        stats["unusable_after_relaxation"] += 1
                        continue
                    row = rows[i]
                    shifts.append(rec["energy_final"] - row["e_above_hull"])
                    row.update(frac_coords=c.frac_coords.reshape(-1).tolist(), lattice=c.lattice.reshape(-1).tolist(),
                               atomic_numbers=c.atomic_numbers.tolist(), e_above_hull_original=row["e_above_hull"],
                               e_above_hull=float(rec["energy_final"]),
                               relaxed_by=f"{pot.name} ({optimizer}, {rec['steps']} steps, {rec['status']})")
                    stats["relabelled"] += 1
            pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp / "shards" / shard.name)
            bar.update(1)
        bar.close()
        report = json.loads((src / "report.json").read_text())
        report["relaxation"] = {
            "source": str(src), "model": pot.name, "window_e_hull": [min_e_hull, max_e_hull], "optimizer": optimizer,
            "steps": steps, "fmax": fmax, **{k: int(v) for k, v in stats.items()},
            "mean_label_change_ev_per_atom": float(np.mean(shifts)) if shifts else None,
            "seconds": round(time.time() - t0, 2),
        }
        write_json(report, tmp / "report.json")
        for extra in ("skipped.csv", "elements.png"):
            if (src / extra).is_file():
                shutil.copy(src / extra, tmp / extra)
    return report["relaxation"]
