"""Dataset relaxation of a CrysDB (see docs/design.md, 'Data and CrysDB'): relax and relabel its
moderately unstable entries under DAO-P."""
from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dao.constants import STABILITY_THRESHOLD
from dao.crystal import Crystal
from dao.data.crysdb.store import crystal_from_record, is_crysdb, read_shard, shard_paths, write_shard
from dao.errors import DAOError, StructureReadError
from dao.potentials import load_potential
from dao.relaxation import relax_batch, relax_official

#: the dataset relaxation modes: "capped" (ours: a few capped L-BFGS steps in Cartesian/strain space under
#: DAO-P's E_hull) and "official" (torch L-BFGS on F and L of DAO-P's standardised energy, docs/official.md)
RELAX_MODES = ("capped", "official")
#: default steps and batch size per mode (official: 5 L-BFGS iterations, batches of 100)
MODE_DEFAULTS = {"capped": {"steps": 20, "batch_size": 64}, "official": {"steps": 5, "batch_size": 100}}
from dao.structure_io import staged_output_dir, write_json


def _relabel(row: dict[str, Any], c: Crystal, energy: float, relaxed_by: str) -> None:
    """Replace a row's structure by its relaxed crystal and its label by the relaxed energy."""
    row.update(frac_coords=c.frac_coords.reshape(-1).tolist(), lattice=c.lattice.reshape(-1).tolist(),
               atomic_numbers=c.atomic_numbers.tolist(), e_above_hull_original=row["e_above_hull"],
               e_above_hull=float(energy), relaxed_by=relaxed_by)


def _selected(rows: list[dict[str, Any]], stats: Counter, min_e_hull: float, max_e_hull: float) -> list[int]:
    todo = [i for i, r in enumerate(rows) if r["e_above_hull"] is not None
            and min_e_hull < r["e_above_hull"] <= max_e_hull]
    stats["entries"] += len(rows)
    stats["selected"] += len(todo)
    return todo


def _relax_rows_official(rows: list[dict[str, Any]], pot: Any, stats: Counter, shifts: list[float],
                         min_e_hull: float, max_e_hull: float, steps: int, batch_size: int) -> None:
    """Official mode: relax and relabel, in place, the rows inside the E_hull window, ``batch_size`` at a
    time (one L-BFGS optimiser per batch, as the official code)."""
    todo = _selected(rows, stats, min_e_hull, max_e_hull)
    for lo in range(0, len(todo), batch_size):
        idx = todo[lo:lo + batch_size]
        relaxed, _, after = relax_official(pot.model, [crystal_from_record(rows[i]) for i in idx], max_iter=steps)
        for i, c, e in zip(idx, relaxed, after):
            if c is None or not np.isfinite(e):
                stats["unusable_after_relaxation"] += 1
                continue
            shifts.append(float(e) - rows[i]["e_above_hull"])
            _relabel(rows[i], c, float(e), f"{pot.name} (official L-BFGS, {steps} iterations)")
            stats["relabelled"] += 1


def _relax_rows(rows: list[dict[str, Any]], pot: Any, stats: Counter, shifts: list[float], min_e_hull: float,
                max_e_hull: float, steps: int, fmax: float, optimizer: str, batch_size: int) -> None:
    """Relax and relabel, in place, the rows of one shard inside the E_hull window."""
    todo = _selected(rows, stats, min_e_hull, max_e_hull)
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
            shifts.append(rec["energy_final"] - rows[i]["e_above_hull"])
            _relabel(rows[i], c, rec["energy_final"], f"{pot.name} ({optimizer}, {rec['steps']} steps, {rec['status']})")
            stats["relabelled"] += 1


def relax_crysdb(src: str | Path, out: str | Path, model: str = "default", min_e_hull: float = STABILITY_THRESHOLD,
                 max_e_hull: float = 0.5, steps: int = 20, fmax: float = 0.05, optimizer: str = "lbfgs",
                 batch_size: int = 64, device: str = "cpu", progress: bool = False,
                 mode: str = "capped") -> dict[str, Any]:
    """Dataset relaxation: entries with min_e_hull < E_hull ≤ max_e_hull are relaxed under DAO-P at t = 0
    (positions and cell jointly, batched) and relabelled with DAO-P's predicted E_hull; the source label
    moves to ``e_above_hull_original`` and ``relaxed_by`` names the model. Other entries, and entries whose
    relaxation was aborted, are copied unchanged. Writes a new CrysDB at ``out``.

    ``mode`` "capped" (default): ``steps`` capped steps of ``optimizer`` (ASE-style, :func:`relax_batch`);
    "official": :func:`~dao.relaxation.relax_official`, ``steps`` L-BFGS iterations (official: 5, batches
    of 100; ``fmax`` and ``optimizer`` do not apply)."""
    from tqdm.auto import tqdm

    src = Path(src)
    if not is_crysdb(src):
        raise DAOError(f"not a CrysDB folder (no report.json and shards/): {src}")
    if mode not in RELAX_MODES:
        raise DAOError(f"unknown relaxation mode {mode!r} (known: {', '.join(RELAX_MODES)})")
    t0 = time.time()
    pot = load_potential("dao", model, device=device)
    if mode == "official":
        pot.model.float()  # the official relaxation runs the network in fp32 (DAOPotential keeps float64)
    stats: Counter = Counter()
    shifts: list[float] = []
    with staged_output_dir(out, overwrite=True) as tmp:  # a build replaces its folder as a whole
        (tmp / "shards").mkdir()
        shards = shard_paths(src)
        for shard in tqdm(shards, desc="relaxing shards", unit="shard", disable=not progress):
            rows = read_shard(shard)
            if mode == "official":
                _relax_rows_official(rows, pot, stats, shifts, min_e_hull, max_e_hull, steps, batch_size)
            else:
                _relax_rows(rows, pot, stats, shifts, min_e_hull, max_e_hull, steps, fmax, optimizer, batch_size)
            write_shard(rows, tmp / "shards" / shard.name)
        report = json.loads((src / "report.json").read_text())
        report["relaxation"] = {
            "source": str(src), "model": pot.name, "window_e_hull": [min_e_hull, max_e_hull], "mode": mode,
            "optimizer": "torch L-BFGS (lr 1, no step cap)" if mode == "official" else optimizer,
            "steps": steps, "fmax": None if mode == "official" else fmax, "batch_size": batch_size,
            **{k: int(v) for k, v in stats.items()},
            "mean_label_change_ev_per_atom": float(np.mean(shifts)) if shifts else None,
            "seconds": round(time.time() - t0, 2),
        }
        write_json(report, tmp / "report.json")
        for extra in ("skipped.csv", "elements.png"):
            if (src / extra).is_file():
                shutil.copy(src / extra, tmp / extra)
    return report["relaxation"]
