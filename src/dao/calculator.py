"""DAO-P at t = 0 as an ASE calculator: energy, forces and stress by autograd (DESIGN §4).

``energy`` is the predicted energy above hull times the number of atoms (eV), ``forces`` = −∂E/∂x (eV/Å),
``stress`` = (1/V)·∂E/∂ε for a symmetric strain ε of the cell (ASE's sign convention and Voigt order
xx, yy, zz, yz, xz, xy; eV/Å³). Positions x and the strain enter the model through the fractional
coordinates F = x·L⁻¹ and the lattice L, so autograd differentiates exactly what the model sees.

>>> from ase.filters import FrechetCellFilter
>>> from ase.optimize import LBFGS
>>> atoms.calc = dao.DAOCalculator("runs/dao_p/model.pt")
>>> LBFGS(FrechetCellFilter(atoms)).run(fmax=0.05, steps=200)
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes

from dao.crystal import CrystalBatch


def niggli_transform(cell: np.ndarray) -> np.ndarray:
    """Integer matrix M such that M·L is the Niggli-reduced basis of the lattice L (rows).

    It is found by pymatgen's reduction (as used on training data) of the lattice in its canonical
    ``Lattice.from_parameters`` orientation, so M depends only on a, b, c, α, β, γ: the same for every
    rotation of the cell. Identity when the reduction fails.
    """
    from pymatgen.core import Lattice

    from dao.crystal import canonical_lattice

    cell = np.asarray(cell, dtype=np.float64)
    try:
        canonical = canonical_lattice(cell)
        reduced = Lattice(canonical).get_niggli_reduced_lattice().matrix
        op = np.rint(reduced @ np.linalg.inv(canonical))
    except (ValueError, np.linalg.LinAlgError):
        return np.eye(3)
    if abs(abs(np.linalg.det(op)) - 1) > 1e-6 or not np.allclose(op @ canonical, reduced, atol=1e-5 * np.abs(cell).max()):
        return np.eye(3)
    return op


class DAOCalculator(Calculator):
    """ASE calculator for a DAO-P model (a checkpoint path, ``"default"``, or a loaded model).

    The calculator evaluates its own copy of the model in ``dtype`` (float64 by default: clean finite
    differences and tight relaxations). Any object with ``energy_per_atom(CrystalBatch) -> (B,)`` (eV/atom)
    works as the model.

    ``niggli=True`` (default) evaluates the model on the Niggli-reduced basis of the cell, as it saw in
    training. The integer basis change is computed at the first call and kept while the cell stays within
    ``niggli_tolerance`` (relative) of the cell it was computed for and the atoms do not change, so that
    the energy is a smooth function during a relaxation.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model="default", device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64,
                 niggli: bool = True, niggli_tolerance: float = 0.1, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(model, (str, Path)):
            from dao.models.checkpoint import load_energy_model

            model = load_energy_model(model, "cpu")
        self.model = copy.deepcopy(model).to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = torch.device(device), dtype
        self.niggli, self.niggli_tolerance = niggli, niggli_tolerance
        self._basis: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # (numbers, cell, M)

    def reset(self) -> None:
        super().reset()
        self._basis = None

    @property
    def state(self):
        """The per-structure Niggli basis (kept across steps); relaxing several structures with one calculator
        saves and restores it per structure (see :class:`dao.potentials.CalculatorPotential`)."""
        return self._basis

    @state.setter
    def state(self, value) -> None:
        self._basis = value

    def basis_transform(self, numbers: np.ndarray, cell: np.ndarray) -> np.ndarray:
        if not self.niggli:
            return np.eye(3)
        if self._basis is not None:
            nums, ref, op = self._basis
            if np.array_equal(nums, numbers) and np.abs(cell - ref).max() <= self.niggli_tolerance * np.abs(ref).max():
                return op
        op = niggli_transform(cell)
        self._basis = (numbers.copy(), cell.copy(), op)
        return op

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        a = self.atoms
        if not np.all(a.pbc):
            raise CalculatorSetupError("DAOCalculator needs a cell periodic in all three directions")
        cell = np.asarray(a.cell.array, dtype=np.float64)
        volume = abs(float(np.linalg.det(cell)))
        if not np.isfinite(volume) or volume < 1e-8 or not np.all(np.isfinite(a.positions)):
            raise CalculatorSetupError(f"degenerate or non-finite cell (volume {volume:.3g} Å³)")
        n = len(a)
        kw = {"dtype": self.dtype, "device": self.device}
        op = torch.as_tensor(self.basis_transform(a.numbers, cell), **kw)
        with torch.enable_grad():  # also when called under torch.no_grad()
            pos = torch.as_tensor(a.positions, **kw).requires_grad_(True)
            strain = torch.zeros(3, 3, **kw).requires_grad_(True)
            deform = torch.eye(3, **kw) + 0.5 * (strain + strain.T)
            lattice = torch.as_tensor(cell, **kw) @ deform  # rows strained: L(1 + ε), x(1 + ε)
            reduced = op @ lattice
            frac = (pos @ deform) @ torch.linalg.inv(reduced)
            batch = CrystalBatch(atom_types=torch.as_tensor(a.numbers, dtype=torch.long, device=self.device),
                                 frac=frac, lattice=reduced.unsqueeze(0),
                                 num_atoms=torch.tensor([n], device=self.device),
                                 batch=torch.zeros(n, dtype=torch.long, device=self.device))
            energy = self.model.energy_per_atom(batch)[0] * n
            grad_x, grad_e = torch.autograd.grad(energy, (pos, strain), allow_unused=True)
        grad_x = torch.zeros_like(pos) if grad_x is None else grad_x  # an energy may ignore positions or cell
        grad_e = torch.zeros_like(strain) if grad_e is None else grad_e
        stress = grad_e.detach().cpu().double().numpy() / volume
        self.results = {
            "energy": float(energy.detach()),
            "free_energy": float(energy.detach()),
            "forces": -grad_x.detach().cpu().double().numpy(),
            "stress": np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]]),
        }
