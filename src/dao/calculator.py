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

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes


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
        from dao.potentials import DAOPotential

        if isinstance(model, (str, Path)):
            from dao.models.checkpoint import load_energy_model

            model = load_energy_model(model, "cpu")
        self.potential = DAOPotential(model, device=device, dtype=dtype, niggli=niggli,
                                      niggli_tolerance=niggli_tolerance)

    def reset(self) -> None:
        super().reset()
        self.potential.basis.pop(0, None)

    @property
    def state(self):
        """The per-structure Niggli basis (kept across steps); relaxing several structures with one calculator
        saves and restores it per structure (see :class:`dao.potentials.CalculatorPotential`)."""
        return self.potential.basis.get(0)

    @state.setter
    def state(self, value) -> None:
        if value is None:
            self.potential.basis.pop(0, None)
        else:
            self.potential.basis[0] = value

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if not np.all(self.atoms.pbc):
            raise CalculatorSetupError("DAOCalculator needs a cell periodic in all three directions")
        res = self.potential.compute([(0, self.atoms)])[0]
        if isinstance(res, Exception):
            raise CalculatorSetupError(str(res))
        self.results = {"energy": res.energy, "free_energy": res.energy, "forces": res.forces, "stress": res.stress}
