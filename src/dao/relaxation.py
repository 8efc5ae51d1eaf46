"""Batched structure relaxation: the optimisers and :func:`relax_batch`, the engine of ``dao relax``
(:mod:`dao.relax`), dataset relaxation (:mod:`dao.data.crysdb.relax`) and the stability check.

Optimiser: FIRE (Bitzek et al. 2006, with ASE's default parameters) on ``FrechetCellFilter(atoms)``
(positions and cell jointly, the cell through a log-strain parametrisation), run in lock-step over many
structures so that a potential evaluates all unfinished structures of a step in one batch
(:mod:`dao.potentials`: DAO-P or CHGNet). Guards, per structure: at most ``steps`` steps, a wall-clock
``timeout``, and a structure is stopped ("aborted", its last finite state kept) as soon as its volume leaves
[V₀/r, r·V₀] (r = ``max_volume_ratio``) or its energy, forces, positions or cell stop being finite — a
learned energy can run away where it has seen no data.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


class Fire:
    """FIRE state of one structure (ASE's parameters: dt 0.1, dtmax 1.0, Nmin 5, finc 1.1, fdec 0.5,
    astart 0.1, fa 0.99); ``maxstep`` caps the norm of one step."""

    def __init__(self, maxstep: float = 0.2, dt: float = 0.1, dtmax: float = 1.0, nmin: int = 5,
                 finc: float = 1.1, fdec: float = 0.5, astart: float = 0.1, fa: float = 0.99) -> None:
        self.maxstep, self.dt, self.dtmax, self.nmin = maxstep, dt, dtmax, nmin
        self.finc, self.fdec, self.astart, self.fa = finc, fdec, astart, fa
        self.a, self.n_pos, self.v = astart, 0, None

    def step(self, r: np.ndarray, f: np.ndarray) -> np.ndarray:
        """Displacement at coordinates ``r`` with generalised forces ``f``."""
        if self.v is None:
            self.v = np.zeros_like(f)
        else:
            vf = float(np.vdot(f, self.v))
            if vf > 0.0:
                fnorm = math.sqrt(float(np.vdot(f, f)))
                vnorm = math.sqrt(float(np.vdot(self.v, self.v)))
                self.v = (1.0 - self.a) * self.v + self.a * f / max(fnorm, 1e-300) * vnorm
                if self.n_pos > self.nmin:
                    self.dt = min(self.dt * self.finc, self.dtmax)
                    self.a *= self.fa
                self.n_pos += 1
            else:
                self.v = np.zeros_like(f)
                self.a, self.dt, self.n_pos = self.astart, self.dt * self.fdec, 0
        self.v = self.v + self.dt * f
        dr = self.dt * self.v
        norm = math.sqrt(float(np.vdot(dr, dr)))
        return dr * (self.maxstep / norm) if norm > self.maxstep else dr


class Lbfgs:
    """L-BFGS state of one structure (as ASE's LBFGS: memory 100, initial inverse Hessian 1/α with α = 70
    eV/Å², no line search); ``maxstep`` caps the largest per-row displacement."""

    def __init__(self, maxstep: float = 0.2, memory: int = 100, alpha: float = 70.0) -> None:
        self.maxstep, self.memory, self.h0 = maxstep, memory, 1.0 / alpha
        self.s: list[np.ndarray] = []
        self.y: list[np.ndarray] = []
        self.rho: list[float] = []
        self.r0 = self.f0 = None

    def step(self, r: np.ndarray, f: np.ndarray) -> np.ndarray:
        if self.r0 is not None:
            s0, y0 = (r - self.r0).ravel(), (self.f0 - f).ravel()
            sy = float(np.dot(y0, s0))
            if sy > 1e-12:  # keep the curvature pairs that preserve a positive-definite inverse Hessian
                self.s.append(s0)
                self.y.append(y0)
                self.rho.append(1.0 / sy)
                if len(self.s) > self.memory:
                    self.s.pop(0), self.y.pop(0), self.rho.pop(0)
        q = -f.ravel().copy()
        a = np.empty(len(self.s))
        for i in range(len(self.s) - 1, -1, -1):
            a[i] = self.rho[i] * np.dot(self.s[i], q)
            q -= a[i] * self.y[i]
        z = self.h0 * q
        for i in range(len(self.s)):
            b = self.rho[i] * np.dot(self.y[i], z)
            z += self.s[i] * (a[i] - b)
        dr = -z.reshape(f.shape)
        longest = float(np.sqrt((dr**2).sum(1)).max()) if len(dr) else 0.0
        if longest > self.maxstep:
            dr *= self.maxstep / longest
        self.r0, self.f0 = r.copy(), f.copy()
        return dr


OPTIMIZERS = {"fire": Fire, "lbfgs": Lbfgs}


@dataclass
class Relaxation:
    """Result for one structure: final ``atoms`` (the last finite state when aborted), ``record`` (status,
    steps, energies per atom, volumes, max force/stress, reason) and ``trajectory`` frames (ase.Atoms with
    energy, forces and stress attached) when requested."""

    atoms: object
    record: dict
    trajectory: list = field(default_factory=list)


def _with_results(atoms, res):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=res.energy, free_energy=res.energy, forces=res.forces,
                                       stress=res.stress)
    return atoms


class _Job:
    def __init__(self, atoms: Any, relax_cell: bool, maxstep: float, optimizer: str = "fire") -> None:
        from ase.filters import FrechetCellFilter

        self.atoms = atoms.copy()
        self.atoms.calc = None
        self.target = FrechetCellFilter(self.atoms) if relax_cell else self.atoms
        self.opt = OPTIMIZERS[optimizer](maxstep=maxstep)
        self.n = len(self.atoms)
        self.v0 = float(self.atoms.get_volume())
        self.record: dict = {"num_atoms": self.n, "volume_initial": self.v0}
        self.last_good = None  # (atoms copy with results, max force, max stress)
        self.trajectory: list = []
        self.steps = 0
        self.seconds = 0.0  # compute time attributed to this structure

    def accept(self, res: Any) -> float:
        """Take the potential's result at the current state; returns the convergence measure."""
        _with_results(self.atoms, res)
        g = self.target.get_forces()
        fnow = float(np.sqrt((g**2).sum(1)).max()) if len(g) else 0.0
        snap = _with_results(self.atoms.copy(), res)
        self.last_good = (snap, float(np.sqrt((res.forces**2).sum(1)).max()) if self.n else 0.0,
                          float(np.abs(res.stress).max()))
        if "energy_initial" not in self.record:
            self.record["energy_initial"] = res.energy / self.n
        self._g = g
        return fnow

    def move(self, max_volume_ratio: float) -> str | None:
        x = self.target.get_positions()
        self.target.set_positions(x + self.opt.step(x, self._g))
        self.steps += 1
        v = float(self.atoms.get_volume())
        if not (np.isfinite(self.atoms.positions).all() and np.isfinite(self.atoms.cell.array).all() and math.isfinite(v)):
            return "non-finite positions or cell"
        if not (self.v0 / max_volume_ratio <= v <= self.v0 * max_volume_ratio):
            return f"volume changed by ×{v / self.v0:.3g} (limit ×{max_volume_ratio:g})"
        return None

    def finish(self, status: str, reason: str | None = None) -> Relaxation:
        rec = dict(self.record, status=status, steps=self.steps, seconds=round(self.seconds, 3))
        if reason:
            rec["reason"] = reason
        if self.last_good is None:
            return Relaxation(self.atoms, rec, self.trajectory)
        atoms, fmax_atoms, smax = self.last_good
        rec.update(energy_final=float(atoms.get_potential_energy()) / self.n, volume_final=float(atoms.get_volume()),
                   max_force=fmax_atoms, max_stress=smax)
        return Relaxation(atoms, rec, self.trajectory)


def relax_batch(atoms_list: Sequence[Any], potential: Any, *, steps: int = 500, fmax: float = 0.05, relax_cell: bool = True,
                max_volume_ratio: float = 3.0, timeout: float | None = None, maxstep: float = 0.2,
                trajectory_every: int = 0, progress: Callable[[int, int], None] | None = None,
                optimizer: str = "fire") -> list[Relaxation]:
    """Relax copies of ``atoms_list`` together under ``potential`` (see :mod:`dao.potentials`).

    Each structure ends ``"converged"`` (max generalised force — atoms and, with the cell, the filter's
    stress term — below ``fmax``), ``"not_converged"`` (``steps`` used), ``"timeout"`` (more than ``timeout``
    seconds of potential time attributed to it: each batched step's time is shared by atom count, so one
    slow structure times out without stopping the others), ``"aborted"`` (volume or non-finite guard; last finite state kept)
    or ``"error"`` (the potential failed on it, e.g. CHGNet on an atom with no neighbour within 5 Å).
    Energies in the records are per atom. ``trajectory_every`` > 0 keeps every that many steps (and the last).
    ``optimizer``: "fire" (default) or "lbfgs" (the choice for dataset relaxation).
    ``progress(n_done, n_total)`` is called after each step.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r} (fire or lbfgs)")
    jobs = [_Job(a, relax_cell, maxstep, optimizer) for a in atoms_list]
    done: dict[int, Relaxation] = {}
    active = list(range(len(jobs)))
    while active:
        t_step = time.perf_counter()
        results = potential.compute([(i, jobs[i].atoms) for i in active])
        t_step = time.perf_counter() - t_step
        n_active = sum(jobs[i].n for i in active)
        for i in active:  # a batched step's time, shared by atom count
            jobs[i].seconds += t_step * jobs[i].n / max(n_active, 1)
        still = []
        for i, res in zip(active, results):
            job = jobs[i]
            if isinstance(res, Exception):
                done[i] = job.finish("error", f"{type(res).__name__}: {str(res)[:200]}")
                continue
            if not res.is_finite():
                done[i] = job.finish("aborted", "non-finite energy, forces or stress")
                continue
            fnow = job.accept(res)
            if trajectory_every and (job.steps % trajectory_every == 0):
                job.trajectory.append(job.last_good[0])
            if fnow < fmax:
                status = "converged"
            elif job.steps >= steps:
                status = "not_converged"
            elif timeout is not None and job.seconds > timeout:
                status = "timeout"
            else:
                reason = job.move(max_volume_ratio)
                if reason is None:
                    still.append(i)
                else:
                    done[i] = job.finish("aborted", reason)
                continue
            if trajectory_every and job.trajectory and job.trajectory[-1] is not job.last_good[0]:
                job.trajectory.append(job.last_good[0])
            done[i] = job.finish(status)
        active = still
        if progress is not None:
            progress(len(done), len(jobs))
    return [done[i] for i in range(len(jobs))]


def relax_atoms(atoms: Any, calculator: Any, steps: int = 200, fmax: float = 0.05, max_volume_ratio: float = 3.0,
                relax_cell: bool = True, maxstep: float = 0.2) -> tuple[object, dict]:
    """Relax a copy of one structure with an ASE calculator; returns (relaxed atoms, record) as
    :func:`relax_batch` (the atoms carry the calculator)."""
    from dao.potentials import CalculatorPotential

    r = relax_batch([atoms], CalculatorPotential(calculator), steps=steps, fmax=fmax, relax_cell=relax_cell,
                    max_volume_ratio=max_volume_ratio, maxstep=maxstep)[0]
    out = r.atoms.copy()
    out.calc = calculator
    return out, r.record


def _moved(crystal: Any, frac: np.ndarray, lattice: np.ndarray) -> Any:
    """``crystal`` with new coordinates (wrapped into [0, 1)) and lattice on the same basis, as the official
    code stores them; None when they are not finite or the cell is degenerate."""
    from dao.crystal import Crystal

    if not (np.isfinite(frac).all() and np.isfinite(lattice).all()) or abs(np.linalg.det(lattice)) < 1e-6:
        return None
    return Crystal(crystal.atomic_numbers, frac % 1.0, lattice, dict(crystal.meta))


def relax_official(model: Any, crystals: Sequence[Any], lr: float = 1.0, max_iter: int = 5
                   ) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """The official dataset relaxation (docs/official.md): one ``torch.optim.LBFGS`` step (learning rate
    ``lr``, ``max_iter`` iterations, no line search, no step cap) on the fractional coordinates and
    lattices of ``crystals`` jointly, minimising the batch mean of DAO-P's standardised energy
    f_φ(M, 0) (``model.energy``); coordinates are wrapped into [0, 1) afterwards.

    Returns (relaxed crystals on their original basis — None where the relaxed cell is degenerate or not
    finite —, E_hull before and after in eV/atom from ``model.energy_per_atom``, NaN where unusable). The
    basis is kept (no Niggli re-reduction, as in the official code) so that the new label is DAO-P's energy
    of exactly the stored structure: passing entries through ``Crystal.from_structure`` again changed the
    bundled DAO-P's prediction by up to 8.8e-4 eV/atom on 30 MPTS-52 entries whose lattice it left
    unchanged. As in the official code the crystals share one optimiser, so a
    structure's path depends on the batch it is relaxed with."""
    import torch

    from dao.crystal import CrystalBatch

    param = next(model.parameters())
    batch = CrystalBatch.from_crystals(list(crystals)).to(param.device)
    frac = batch.frac.to(param.dtype).clone().requires_grad_(True)
    lattice = batch.lattice.to(param.dtype).clone().requires_grad_(True)
    t0 = torch.zeros(batch.num_crystals, device=param.device, dtype=param.dtype)
    grads_on = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        with torch.no_grad():
            before = model.energy_per_atom(batch.replace(frac=frac, lattice=lattice)).double().cpu().numpy()
        opt = torch.optim.LBFGS([frac, lattice], lr=lr, max_iter=max_iter)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            energy = model.energy(batch.replace(frac=frac, lattice=lattice), t0).mean()
            energy.backward()
            return energy

        with torch.enable_grad():
            opt.step(closure)
        out = [_moved(c, f.numpy(), lat.numpy()) for c, f, lat in
               zip(crystals, frac.detach().double().cpu().split(batch.num_atoms.tolist()), lattice.detach().double().cpu())]
        after = np.full(len(out), np.nan)
        good = [i for i, c in enumerate(out) if c is not None]
        if good:  # the stored structures' energies (wrapping the coordinates does not change them)
            relaxed = CrystalBatch.from_crystals([out[i] for i in good]).to(param.device)
            relaxed = relaxed.replace(frac=relaxed.frac.to(param.dtype), lattice=relaxed.lattice.to(param.dtype))
            with torch.no_grad():
                after[good] = model.energy_per_atom(relaxed).double().cpu().numpy()
    finally:
        for p, on in zip(model.parameters(), grads_on):
            p.requires_grad_(on)
    return out, before, after
