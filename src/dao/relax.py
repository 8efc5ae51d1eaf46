"""``dao relax``: read structure files, relax them in batches under a potential, write CIFs, trajectories and
a summary. The relaxation engine (FIRE / L-BFGS in lock-step, guards) is :mod:`dao.relaxation`; its names
are re-exported here."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from dao.data.readers import read_inputs, report_unreadable
from dao.relaxation import OPTIMIZERS, Fire, Lbfgs, Relaxation, relax_atoms, relax_batch

__all__ = ["OPTIMIZERS", "Fire", "Lbfgs", "Relaxation", "read_inputs", "relax_atoms", "relax_batch",
           "report_unreadable", "run_relax"]


def run_relax(paths: Sequence[str | Path], model: str, out: str | Path, steps: int = 200, fmax: float = 0.05,
              device: str = "cpu", max_volume_ratio: float = 3.0, relax_cell: bool = True,
              on_error: Callable[[str], None] | None = None, potential: str = "dao", timeout: float | None = None, batch_size: int = 32,
              trajectory_every: int = 1, progress: bool = False) -> dict:
    """The ``dao relax`` job: relax every readable structure under ``potential`` ("dao": DAO-P checkpoint
    ``model``; "chgnet": CHGNet), ``batch_size`` structures at a time; write ``<name>.cif`` per relaxed
    structure, ``<name>.traj.extxyz`` (energy, forces, stress per frame; when ``trajectory_every`` > 0) and
    ``summary.json`` into ``out`` at once (nothing is written when no structure could be read)."""
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    from dao import __version__
    from dao.potentials import load_potential
    from dao.runtime import resolve_device
    from dao.structure_io import staged_output_dir, write_cif, write_json

    t0 = time.time()
    dev = resolve_device(device)
    items, errors = read_inputs(paths)
    report_unreadable(items, errors, on_error)
    pot = load_potential(potential, model, device=str(dev), batch_size=batch_size)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="relaxing", unit="structure", leave=False)
    records = []
    with staged_output_dir(out) as tmp:
        for lo in range(0, len(items), batch_size):
            chunk = items[lo:lo + batch_size]
            base = bar.n if bar is not None else 0
            results = relax_batch([c.to_atoms() for _, c in chunk], pot, steps=steps, fmax=fmax, relax_cell=relax_cell,
                                  max_volume_ratio=max_volume_ratio, timeout=timeout,
                                  trajectory_every=trajectory_every,
                                  progress=(lambda k, n: bar.update(base + k - bar.n) if base + k > bar.n else None)
                                  if bar is not None else None)
            for (name, crystal), r in zip(chunk, results):
                rec = {"name": name, "formula": crystal.to_structure().composition.reduced_formula, **r.record}
                if r.record["status"] in ("converged", "not_converged", "timeout"):
                    write_cif(AseAtomsAdaptor.get_structure(r.atoms), tmp / f"{name}.cif")
                    rec["cif"] = f"{name}.cif"
                elif on_error is not None:
                    on_error(f"{name}: relaxation {r.record['status']} ({r.record.get('reason', '')}); no CIF written")
                if r.trajectory:
                    ase_write(tmp / f"{name}.traj.extxyz", r.trajectory, format="extxyz")
                    rec["trajectory"] = f"{name}.traj.extxyz"
                records.append(rec)
        if bar is not None:
            bar.close()
        summary = {
            "potential": pot.name,
            "optimizer": "FIRE on ase.filters.FrechetCellFilter" if relax_cell else "FIRE (fixed cell)",
            "steps": steps, "fmax": fmax, "max_volume_ratio": max_volume_ratio, "timeout_s": timeout,
            "batch_size": batch_size, "device": str(dev), "energy_unit": pot.energy_unit, "dao_version": __version__,
            "num_inputs": len(items), "num_unreadable": len(errors),
            "num_converged": sum(r.get("status") == "converged" for r in records),
            "num_written": sum("cif" in r for r in records),
            "unreadable": [{"input": k, "error": v} for k, v in errors],
            "structures": records, "seconds": round(time.time() - t0, 2),
        }
        write_json(summary, tmp / "summary.json")
    return summary
