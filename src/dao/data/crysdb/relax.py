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
from dao.relaxation import relax_batch
from dao.structure_io import staged_output_dir, write_json


def _relax_rows(rows: list[dict[str, Any]], pot: Any, stats: Counter, shifts: list[float], min_e_hull: float,
                max_e_hull: float, steps: int, fmax: float, optimizer: str, batch_size: int) -> None:
    """Relax and relabel, in place, the rows of one shard inside the E_hull window."""
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


def relax_crysdb(src: str | Path, out: str | Path, model: str = "default", min_e_hull: float = STABILITY_THRESHOLD,
                 max_e_hull: float = 0.5, steps: int = 20, fmax: float = 0.05, optimizer: str = "lbfgs",
                 batch_size: int = 64, device: str = "cpu", progress: bool = False) -> dict[str, Any]:
    """Dataset relaxation: entries with min_e_hull < E_hull ≤ max_e_hull are relaxed under DAO-P at t = 0
    (positions and cell jointly, a few L-BFGS steps, batched) and relabelled with DAO-P's predicted E_hull;
    the source label moves to ``e_above_hull_original`` and ``relaxed_by`` names the model. Other entries,
    and entries whose relaxation was aborted, are copied unchanged. Writes a new CrysDB at ``out``."""
    from tqdm.auto import tqdm

    src = Path(src)
    if not is_crysdb(src):
        raise DAOError(f"not a CrysDB folder (no report.json and shards/): {src}")
    t0 = time.time()
    pot = load_potential("dao", model, device=device)
    stats: Counter = Counter()
    shifts: list[float] = []
    with staged_output_dir(out, overwrite=True) as tmp:  # a build replaces its folder as a whole
        (tmp / "shards").mkdir()
        shards = shard_paths(src)
        for shard in tqdm(shards, desc="relaxing shards", unit="shard", disable=not progress):
            rows = read_shard(shard)
            _relax_rows(rows, pot, stats, shifts, min_e_hull, max_e_hull, steps, fmax, optimizer, batch_size)
            write_shard(rows, tmp / "shards" / shard.name)
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
