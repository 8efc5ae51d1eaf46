"""Relaxation under DAO-P at t = 0: ``dao relax`` and the building block of dataset relaxation (DESIGN §5).

Optimiser: ASE's L-BFGS on ``FrechetCellFilter(atoms)`` (positions and cell jointly, the cell through a
log-strain parametrisation) with :class:`~dao.calculator.DAOCalculator` (float64 autograd forces and
stress). Guards: at most ``steps`` optimiser steps, and a structure is abandoned ("aborted") as soon as its
volume leaves [V₀/r, r·V₀] (r = ``max_volume_ratio``, 3 by default) or its energy, positions or cell stop
being finite — a learned energy can run away where it has seen no data.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from dao.errors import DAOError, StructureReadError


class _Runaway(Exception):
    pass


def relax_atoms(atoms, calculator, steps: int = 200, fmax: float = 0.05, max_volume_ratio: float = 3.0,
                relax_cell: bool = True, maxstep: float = 0.2) -> tuple[object, dict]:
    """Relax a copy of ``atoms``; returns (relaxed atoms, record).

    ``record["status"]`` is ``"converged"`` (max force — and with the cell, the filter's stress term — below
    ``fmax``), ``"not_converged"`` (``steps`` exhausted; the last structure is returned) or ``"aborted"``
    (volume change beyond ``max_volume_ratio`` or non-finite values; the returned atoms are the last
    finite ones). Energies are per atom (eV/atom).
    """
    from ase.filters import FrechetCellFilter
    from ase.optimize import LBFGS

    atoms = atoms.copy()
    atoms.calc = calculator
    n = len(atoms)
    v0 = float(atoms.get_volume())
    e0 = float(atoms.get_potential_energy()) / n
    record = {"num_atoms": n, "energy_initial": e0, "volume_initial": v0}
    last_good = atoms.copy()

    def guard() -> None:
        nonlocal last_good
        v = float(atoms.get_volume())
        finite = np.all(np.isfinite(atoms.positions)) and np.all(np.isfinite(atoms.cell.array)) and math.isfinite(v)
        if not finite:
            raise _Runaway("non-finite positions or cell")
        if not (v0 / max_volume_ratio <= v <= v0 * max_volume_ratio):
            raise _Runaway(f"volume changed by ×{v / v0:.3g} (limit ×{max_volume_ratio:g})")
        e = float(atoms.get_potential_energy())
        if not math.isfinite(e):
            raise _Runaway("non-finite energy")
        last_good = atoms.copy()

    target = FrechetCellFilter(atoms) if relax_cell else atoms
    opt = LBFGS(target, logfile=None, maxstep=maxstep)
    opt.attach(guard, interval=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converged = bool(opt.run(fmax=fmax, steps=steps))
        record["status"] = "converged" if converged else "not_converged"
        out = atoms
    except _Runaway as exc:
        record.update(status="aborted", reason=str(exc))
        out = last_good
    out.calc = calculator
    forces = out.get_forces()
    record.update({
        "steps": int(opt.nsteps),
        "energy_final": float(out.get_potential_energy()) / n,
        "volume_final": float(out.get_volume()),
        "max_force": float(np.sqrt((forces**2).sum(1)).max()) if n else 0.0,
        "max_stress": float(np.abs(out.get_stress()).max()),
    })
    return out, record


def read_inputs(paths: Sequence[str | Path]) -> tuple[list[tuple[str, object]], list[tuple[str, str]]]:
    """Read structure files into (name, Crystal); unreadable files or entries as (name, reason)."""
    from dao.data.readers import read_any

    items, errors, used = [], [], set()
    for p in paths:
        p = Path(p)
        try:
            crystals, skipped = read_any(p)
        except StructureReadError as exc:
            msg = str(exc)
            errors.append((str(p), msg if str(p) in msg else f"{p}: {msg}"))
            continue
        errors += [(f"{p}:{item}", f"{p} ({item}): {reason}") for item, reason in skipped]
        if not crystals and not skipped:
            errors.append((str(p), f"{p}: no structures found"))
        for i, c in enumerate(crystals):
            stem = p.name[:-4] if p.name.lower().endswith(".cif") else str(c.meta.get("id") or f"{p.stem}_{i}")
            stem = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in stem)
            name, k = stem, 1
            while name in used:
                k += 1
                name = f"{stem}_{k}"
            used.add(name)
            items.append((name, c))
    return items, errors


def report_unreadable(items: list, errors: list[tuple[str, str]], on_error=None) -> None:
    """Pass every read error to ``on_error``; when nothing was readable, raise the last one as a DAOError
    instead (so a single bad input gives exactly one error line)."""
    if not items:
        for _, msg in errors[:-1]:
            if on_error is not None:
                on_error(msg)
        raise DAOError(errors[-1][1] if errors else "no structures given")
    for _, msg in errors:
        if on_error is not None:
            on_error(msg)


def run_relax(paths: Sequence[str | Path], model: str, out: str | Path, steps: int = 200, fmax: float = 0.05,
              device: str = "cpu", max_volume_ratio: float = 3.0, relax_cell: bool = True,
              on_error=None) -> dict:
    """The ``dao relax`` job: relax every readable structure, write ``<name>.cif`` per relaxed structure
    and ``summary.json`` into ``out`` at once (nothing is written when no structure could be read)."""
    from dao import __version__
    from dao.calculator import DAOCalculator
    from dao.models.checkpoint import load_energy_model
    from dao.runtime import resolve_device
    from dao.structure_io import staged_output_dir, write_cif, write_json

    t0 = time.time()
    dev = resolve_device(device)
    model_obj = load_energy_model(model, "cpu")
    items, errors = read_inputs(paths)
    report_unreadable(items, errors, on_error)
    calc = DAOCalculator(model_obj, device=dev)
    records = []
    with staged_output_dir(out) as tmp:
        for name, crystal in items:
            calc.reset()
            rec = {"name": name, "formula": crystal.to_structure().composition.reduced_formula}
            try:
                relaxed, r = relax_atoms(crystal.to_atoms(), calc, steps=steps, fmax=fmax,
                                         max_volume_ratio=max_volume_ratio, relax_cell=relax_cell)
            except Exception as exc:  # a calculator setup error on a degenerate cell etc.
                rec.update(status="error", reason=f"{type(exc).__name__}: {str(exc)[:160]}")
                records.append(rec)
                if on_error is not None:
                    on_error(f"{name}: relaxation failed ({rec['reason']})")
                continue
            rec.update(r)
            if r["status"] != "aborted":
                from pymatgen.io.ase import AseAtomsAdaptor

                write_cif(AseAtomsAdaptor.get_structure(relaxed), tmp / f"{name}.cif")
                rec["cif"] = f"{name}.cif"
            elif on_error is not None:
                on_error(f"{name}: relaxation aborted ({r['reason']}); no CIF written")
            records.append(rec)
        summary = {
            "model": {"path": model_obj.checkpoint_path, "kind": "energy"},
            "optimizer": "ase.optimize.LBFGS on ase.filters.FrechetCellFilter" if relax_cell else "ase.optimize.LBFGS (fixed cell)",
            "steps": steps, "fmax": fmax, "max_volume_ratio": max_volume_ratio, "device": str(dev),
            "energy_unit": "eV/atom (predicted energy above hull)", "dao_version": __version__,
            "num_inputs": len(items), "num_unreadable": len(errors),
            "num_converged": sum(r.get("status") == "converged" for r in records),
            "num_written": sum("cif" in r for r in records),
            "unreadable": [{"input": k, "error": v} for k, v in errors],
            "structures": records, "seconds": round(time.time() - t0, 2),
        }
        write_json(summary, tmp / "summary.json")
    return summary
