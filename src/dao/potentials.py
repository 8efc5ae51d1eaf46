"""Interatomic potentials for relaxation, behind one batched interface.

A potential maps a list of ``(key, ase.Atoms)`` to one :class:`PotentialResult` (total energy in eV, forces in
eV/Å, stress in eV/Å³ in ASE's sign convention and Voigt order) or one exception per structure. The key
identifies a structure across the steps of a relaxation (a potential may keep per-structure state).

* :class:`CalculatorPotential` — any ASE calculator, structure by structure.
* :class:`DAOPotential` — DAO-P at t = 0, all structures of a step in one batched pass.
* :class:`CHGNetPotential` — the pretrained CHGNet universal potential (``pip install 'dao-csp[chgnet]'``),
  structures evaluated in batches. CHGNet was trained on MPtrj energies with the Materials Project 2020
  compatibility corrections applied, so its energies are on the scale of MP's corrected total energies
  (see :mod:`dao.stability`).

:func:`load_potential` builds either from a CLI-style name.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, Hashable, Protocol, Sequence

import numpy as np

from dao.cell import niggli_transform
from dao.crystal import CrystalBatch
from dao.errors import DAOError

if TYPE_CHECKING:
    import os

    import torch
    from ase import Atoms
    from ase.calculators.calculator import Calculator

#: per-structure state of :class:`DAOPotential`: (atomic numbers, the cell it was chosen for, the basis change M)
NiggliBasis = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass
class PotentialResult:
    energy: float  # eV (total)
    forces: np.ndarray  # (N, 3) eV/Å
    stress: np.ndarray  # (6,) eV/Å³, Voigt xx yy zz yz xz xy

    def is_finite(self) -> bool:
        return bool(np.isfinite(self.energy) and np.isfinite(self.forces).all() and np.isfinite(self.stress).all())


class Potential(Protocol):
    name: str
    energy_unit: str

    def compute(self, items: Sequence[tuple[Hashable, Atoms]]) -> list[PotentialResult | Exception]: ...


class CalculatorPotential:
    """Wrap one ASE calculator. Calculators that keep per-structure state across steps (DAOCalculator's
    Niggli basis) expose it as ``state``; it is saved and restored per key."""

    def __init__(self, calculator: Calculator, name: str = "calculator", energy_unit: str = "eV/atom") -> None:
        self.calc, self.name, self.energy_unit = calculator, name, energy_unit
        self._state: dict[Hashable, object] = {}

    def compute(self, items: Sequence[tuple[Hashable, Atoms]]) -> list[PotentialResult | Exception]:
        out: list[PotentialResult | Exception] = []
        keeps_state = hasattr(self.calc, "state")
        for key, atoms in items:
            self.calc.reset()
            if keeps_state:
                self.calc.state = self._state.get(key)
            try:
                a = atoms.copy()
                a.calc = self.calc
                out.append(PotentialResult(float(a.get_potential_energy()), np.array(a.get_forces(), dtype=float),
                                           np.array(a.get_stress(voigt=True), dtype=float)))
            except Exception as exc:  # one bad structure must not stop the others
                out.append(exc)
            if keeps_state:
                self._state[key] = self.calc.state
        return out


class DAOPotential:
    """DAO-P at t = 0 for many structures in one batched forward/backward pass (float64 by default).

    Energy, forces = −∂E/∂x and stress = (1/V)·∂E/∂ε by autograd through F = x·L⁻¹ and a symmetric strain
    ε of each cell, evaluated on the Niggli-reduced basis that the model saw in training (chosen once per
    structure key, see :meth:`_op`). :class:`~dao.calculator.DAOCalculator` is this for one structure.
    ``energies`` gives single points without forces.
    """

    energy_unit = "eV/atom (DAO-P predicted energy above hull)"
    #: structures per forward/backward pass (about 64 crystals per batch is fastest per crystal on a CPU)
    BATCH = 64

    def __init__(self, model: str | os.PathLike | torch.nn.Module = "default", device: str | torch.device = "cpu",
                 dtype: torch.dtype | None = None, niggli: bool = True, niggli_tolerance: float = 0.1,
                 batch_size: int = BATCH) -> None:
        import copy

        import torch

        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from dao.models.checkpoint import load_energy_model

            model = load_energy_model(model, "cpu")
        self.name = f"dao-p:{getattr(model, 'checkpoint_path', 'model')}"
        self.dtype = dtype or torch.float64
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval().requires_grad_(False)
        self.niggli, self.niggli_tolerance = niggli, niggli_tolerance
        self.batch_size = max(1, int(batch_size))
        self.basis: dict[Hashable, NiggliBasis] = {}  # key -> (numbers, cell, M)

    def _op(self, key: Hashable, numbers: np.ndarray, cell: np.ndarray) -> np.ndarray:
        """The integer basis change to the Niggli-reduced cell, kept per key while the atoms stay the same
        and the cell within ``niggli_tolerance`` (relative) of the cell it was computed for (a key of None:
        computed, not kept)."""
        if not self.niggli:
            return np.eye(3)
        if key is None:  # not kept (single points)
            return niggli_transform(cell)
        got = self.basis.get(key)
        if got is not None:
            nums, ref, op = got
            if np.array_equal(nums, numbers) and np.abs(cell - ref).max() <= self.niggli_tolerance * np.abs(ref).max():
                return op
        op = niggli_transform(cell)
        self.basis[key] = (numbers.copy(), cell.copy(), op)
        return op

    def compute(self, items: Sequence[tuple[Hashable, Atoms]]) -> list[PotentialResult | Exception]:
        """Energy, forces and stress of each structure; one autograd graph per chunk of ``batch_size``
        structures (one graph for thousands of cells would hold all their activations at once)."""
        out: list[PotentialResult | Exception | None] = [None] * len(items)
        good = []
        for j, (key, a) in enumerate(items):
            bad = _bad_cell(a)
            if bad is not None:
                out[j] = bad
            else:
                good.append((j, key, a))
        for lo in range(0, len(good), self.batch_size):
            chunk = good[lo:lo + self.batch_size]
            for (j, _, _), res in zip(chunk, self._compute_chunk([(key, a) for _, key, a in chunk])):
                out[j] = res
        return out

    def energies(self, structures: Sequence[Any]) -> list[float | None]:
        """Single-point energies per atom of pymatgen structures without forces (no backward pass), in chunks
        of ``batch_size``; None where the cell is degenerate or the model's energy is not finite."""
        import torch
        from pymatgen.io.ase import AseAtomsAdaptor

        atoms = [AseAtomsAdaptor.get_atoms(st) for st in structures]
        out: list[float | None] = [None] * len(atoms)
        good = [j for j, a in enumerate(atoms) if _bad_cell(a) is None]
        for lo in range(0, len(good), self.batch_size):
            chunk = good[lo:lo + self.batch_size]
            with torch.no_grad():
                batch, _, _ = self._batch([(None, atoms[j]) for j in chunk], requires_grad=False)
                e = self.model.energy_per_atom(batch)
            for j, v in zip(chunk, e.cpu().double().tolist()):
                out[j] = v if np.isfinite(v) else None
        return out

    def _batch(self, items: Sequence[tuple[Hashable, Atoms]], requires_grad: bool
               ) -> tuple[CrystalBatch, list[torch.Tensor], torch.Tensor]:
        """The model's batch of ``items`` on their Niggli-reduced bases (a key of None: not cached), with
        positions and a symmetric strain per cell as leaves to differentiate when ``requires_grad``."""
        import torch

        kw = {"dtype": self.dtype, "device": self.device}
        pos = [torch.as_tensor(a.positions, **kw).requires_grad_(requires_grad) for _, a in items]
        strain = torch.zeros(len(items), 3, 3, **kw).requires_grad_(requires_grad)
        deform = torch.eye(3, **kw) + 0.5 * (strain + strain.transpose(1, 2))
        fracs, lattices = [], []
        for i, (key, a) in enumerate(items):
            cell = np.asarray(a.cell.array, dtype=np.float64)
            basis = torch.as_tensor(self._op(key, a.numbers, cell), **kw)
            reduced = basis @ (torch.as_tensor(cell, **kw) @ deform[i])
            fracs.append((pos[i] @ deform[i]) @ torch.linalg.inv(reduced))
            lattices.append(reduced)
        n = torch.tensor([len(a) for _, a in items], device=self.device)
        batch = CrystalBatch(atom_types=torch.cat([torch.as_tensor(a.numbers, dtype=torch.long) for _, a in items]).to(self.device),
                             frac=torch.cat(fracs), lattice=torch.stack(lattices), num_atoms=n,
                             batch=torch.repeat_interleave(torch.arange(len(items), device=self.device), n))
        return batch, pos, strain

    def _compute_chunk(self, items: Sequence[tuple[Hashable, Atoms]]) -> list[PotentialResult]:
        import torch

        with torch.enable_grad():
            batch, pos, strain = self._batch(items, requires_grad=True)
            energy = self.model.energy_per_atom(batch) * batch.num_atoms.to(self.dtype)
            grads = torch.autograd.grad(energy.sum(), [*pos, strain], allow_unused=True)
        g_strain = grads[-1] if grads[-1] is not None else torch.zeros_like(strain)
        out = []
        for i, (_, a) in enumerate(items):
            gx = grads[i] if grads[i] is not None else torch.zeros_like(pos[i])
            st = g_strain[i].detach().cpu().double().numpy() / abs(float(np.linalg.det(a.cell.array)))
            out.append(PotentialResult(float(energy[i].detach()), -gx.detach().cpu().double().numpy(),
                                       np.array([st[0, 0], st[1, 1], st[2, 2], st[1, 2], st[0, 2], st[0, 1]])))
        return out


def _bad_cell(a: Atoms) -> Exception | None:
    """Why a structure cannot be evaluated (a degenerate or non-finite cell or positions), else None."""
    vol = abs(float(np.linalg.det(np.asarray(a.cell.array, dtype=np.float64))))
    if not (np.isfinite(vol) and vol > 1e-8 and np.isfinite(a.positions).all()):
        return ValueError(f"degenerate or non-finite cell (volume {vol:.3g} Å³)")
    return None


class CHGNetPotential:
    """CHGNet (Deng et al. 2023) with its bundled pretrained weights (loaded offline from the wheel)."""

    energy_unit = "eV/atom (CHGNet, MP2020-compatible total energy)"
    #: structures per CHGNet call: with forces and stress a batch of 16 small cells took 6.0 s on one CPU core
    #: against 1.0 s in batches of 8 (the backward pass grows faster than the batch); energies alone, 4 is best
    FORCE_BATCH, ENERGY_BATCH = 8, 4

    def __init__(self, model: str = "0.3.0", device: str = "cpu", batch_size: int = FORCE_BATCH) -> None:
        import contextlib
        import sys

        chgnet = require_chgnet()
        with contextlib.redirect_stdout(sys.stderr):  # CHGNet announces itself on stdout; ours is for results
            self.model = chgnet.CHGNet.load(model_name=model, use_device=str(device), verbose=False)
        self.name = f"chgnet-{model}"
        self.batch_size = min(batch_size, self.FORCE_BATCH)  # larger force batches are slower, not faster

    def _predict(self, structures: list, task: str, batch_size: int) -> list:
        import warnings

        with warnings.catch_warnings():  # CHGNet warns about its own volume tensor on every call
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            preds = self.model.predict_structure(structures, task=task, batch_size=batch_size)
        return [preds] if isinstance(preds, dict) else list(preds)

    def _predict_each(self, structures: list, task: str, batch_size: int) -> list:
        """CHGNet's predictions for ``structures``, or the exception in place of each structure it fails on
        (e.g. an atom with no neighbour within 5 Å): a failed batch is retried structure by structure."""
        try:
            return self._predict(structures, task, batch_size)
        except Exception:
            preds: list = []
            for s in structures:
                try:
                    preds.append(self._predict([s], task, batch_size)[0])
                except Exception as exc:
                    preds.append(exc)
            return preds

    def energies(self, structures: Sequence[Any]) -> list[float | None]:
        """Single-point energies per atom of pymatgen structures (no forces: no backward pass), None where
        CHGNet fails on a structure."""
        preds = self._predict_each(list(structures), "e", self.ENERGY_BATCH)
        return [None if isinstance(p, Exception) else float(p["e"]) for p in preds]

    def compute(self, items: Sequence[tuple[Hashable, Atoms]]) -> list[PotentialResult | Exception]:
        from ase.stress import full_3x3_to_voigt_6_stress
        from ase.units import GPa
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for _, a in items]
        preds = self._predict_each(structures, "efs", self.batch_size)
        out: list[PotentialResult | Exception] = []
        for s, p in zip(structures, preds):
            if isinstance(p, Exception):
                out.append(p)
                continue
            stress = full_3x3_to_voigt_6_stress(np.asarray(p["s"], dtype=float)) * GPa
            out.append(PotentialResult(float(p["e"]) * len(s), np.asarray(p["f"], dtype=float), stress))
        return out


def require_chgnet() -> ModuleType:
    """Import the optional ``chgnet`` package or fail with an installation hint."""
    try:
        import chgnet.model as chgnet_model
    except ImportError:
        raise DAOError("CHGNet is not installed: pip install -c constraints.txt 'dao-csp[chgnet]' "
                       "(the constraint keeps the CPU build of torch)") from None
    return chgnet_model


def load_potential(name: str = "dao", model: str = "default", device: str = "cpu",
                   batch_size: int = CHGNetPotential.FORCE_BATCH) -> Potential:
    """``"dao"`` (DAO-P checkpoint ``model``) or ``"chgnet"`` (``model`` is a CHGNet version, default 0.3.0)."""
    if name == "chgnet":
        return CHGNetPotential("0.3.0" if model == "default" else model, device=device, batch_size=batch_size)
    if name == "dao":
        from dao.models.checkpoint import load_energy_model

        return DAOPotential(load_energy_model(model, "cpu"), device=device)
    raise DAOError(f"unknown potential {name!r}: use 'dao' or 'chgnet'")
