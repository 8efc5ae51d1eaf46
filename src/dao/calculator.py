"""DAO-P at t = 0 as an ASE calculator: energy, forces and stress by autograd (see docs/design.md,
"Energy model (DAO-P) and guidance").

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
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, all_changes

from dao.cell import niggli_transform
from dao.models.checkpoint import load_energy_model
from dao.potentials import DAOPotential, NiggliBasis

__all__ = ["DAOCalculator", "niggli_transform"]  # niggli_transform: re-exported from dao.cell


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

    def __init__(self, model: str | Path | torch.nn.Module = "default", device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float64, niggli: bool = True, niggli_tolerance: float = 0.1,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if isinstance(model, (str, Path)):
            model = load_energy_model(model, "cpu")
        self.potential = DAOPotential(model, device=device, dtype=dtype, niggli=niggli,
                                      niggli_tolerance=niggli_tolerance)

    def reset(self) -> None:
        super().reset()
        self.potential.basis.pop(0, None)

    @property
    def state(self) -> NiggliBasis | None:
        """The per-structure Niggli basis (kept across steps); relaxing several structures with one calculator
        saves and restores it per structure (see :class:`dao.potentials.CalculatorPotential`)."""
        return self.potential.basis.get(0)

    @state.setter
    def state(self, value: NiggliBasis | None) -> None:
        if value is None:
            self.potential.basis.pop(0, None)
        else:
            self.potential.basis[0] = value

    def calculate(self, atoms: Atoms | None = None, properties: Sequence[str] = ("energy",),
                  system_changes: Sequence[str] = all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if not np.all(self.atoms.pbc):
            raise CalculatorSetupError("DAOCalculator needs a cell periodic in all three directions")
        res = self.potential.compute([(0, self.atoms)])[0]
        if isinstance(res, Exception):
            raise CalculatorSetupError(str(res))
        self.results = {"energy": res.energy, "free_energy": res.energy, "forces": res.forces, "stress": res.stress}
