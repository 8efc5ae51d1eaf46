"""Interatomic potentials for relaxation, behind one batched interface.

A potential maps a list of ``(key, ase.Atoms)`` to one :class:`PotentialResult` (total energy in eV, forces in
eV/Å, stress in eV/Å³ in ASE's sign convention and Voigt order) or one exception per structure. The key
identifies a structure across the steps of a relaxation (a potential may keep per-structure state).

* :class:`CalculatorPotential` — any ASE calculator, structure by structure (DAO-P through
  :class:`~dao.calculator.DAOCalculator`).
* :class:`CHGNetPotential` — the pretrained CHGNet universal potential (``pip install 'dao-csp[chgnet]'``),
  structures evaluated in batches. CHGNet was trained on MPtrj energies with the Materials Project 2020
  compatibility corrections applied, so its energies are on the scale of MP's corrected total energies
  (see :mod:`dao.stability`).

:func:`load_potential` builds either from a CLI-style name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Protocol, Sequence

import numpy as np

from dao.errors import DAOError


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

    def compute(self, items: Sequence[tuple[Hashable, object]]) -> list[PotentialResult | Exception]: ...


class CalculatorPotential:
    """Wrap one ASE calculator. Calculators that keep per-structure state across steps (DAOCalculator's
    Niggli basis) expose it as ``state``; it is saved and restored per key."""

    def __init__(self, calculator, name: str = "calculator", energy_unit: str = "eV/atom") -> None:
        self.calc, self.name, self.energy_unit = calculator, name, energy_unit
        self._state: dict[Hashable, object] = {}

    def compute(self, items):
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


class CHGNetPotential:
    """CHGNet (Deng et al. 2023) with its bundled pretrained weights (loaded offline from the wheel)."""

    energy_unit = "eV/atom (CHGNet, MP2020-compatible total energy)"

    def __init__(self, model: str = "0.3.0", device: str = "cpu", batch_size: int = 32) -> None:
        chgnet = require_chgnet()
        self.model = chgnet.CHGNet.load(model_name=model, use_device=str(device), verbose=False)
        self.name = f"chgnet-{model}"
        self.batch_size = batch_size

    def _predict(self, structures):
        import warnings

        with warnings.catch_warnings():  # CHGNet warns about its own volume tensor on every call
            warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad")
            preds = self.model.predict_structure(structures, task="efs", batch_size=self.batch_size)
        return [preds] if isinstance(preds, dict) else list(preds)

    def compute(self, items):
        from ase.stress import full_3x3_to_voigt_6_stress
        from ase.units import GPa
        from pymatgen.io.ase import AseAtomsAdaptor

        structures = [AseAtomsAdaptor.get_structure(a) for _, a in items]
        try:
            preds: list = self._predict(structures)
        except Exception:  # find the structure(s) that fail (e.g. an atom with no neighbour within 5 Å)
            preds = []
            for s in structures:
                try:
                    preds.append(self._predict([s])[0])
                except Exception as exc:
                    preds.append(exc)
        out: list[PotentialResult | Exception] = []
        for s, p in zip(structures, preds):
            if isinstance(p, Exception):
                out.append(p)
                continue
            stress = full_3x3_to_voigt_6_stress(np.asarray(p["s"], dtype=float)) * GPa
            out.append(PotentialResult(float(p["e"]) * len(s), np.asarray(p["f"], dtype=float), stress))
        return out


def require_chgnet():
    """Import the optional ``chgnet`` package or fail with an installation hint."""
    try:
        import chgnet.model as chgnet_model
    except ImportError:
        raise DAOError("CHGNet is not installed: pip install -c constraints.txt 'dao-csp[chgnet]' "
                       "(the constraint keeps the CPU build of torch)") from None
    return chgnet_model


def load_potential(name: str = "dao", model: str = "default", device: str = "cpu", batch_size: int = 32):
    """``"dao"`` (DAO-P checkpoint ``model``) or ``"chgnet"`` (``model`` is a CHGNet version, default 0.3.0)."""
    if name == "chgnet":
        return CHGNetPotential("0.3.0" if model == "default" else model, device=device, batch_size=batch_size)
    if name == "dao":
        from dao.calculator import DAOCalculator
        from dao.models.checkpoint import load_energy_model

        e_model = load_energy_model(model, "cpu")
        pot = CalculatorPotential(DAOCalculator(e_model, device=device), name=f"dao-p:{e_model.checkpoint_path}",
                                  energy_unit="eV/atom (DAO-P predicted energy above hull)")
        return pot
    raise DAOError(f"unknown potential {name!r}: use 'dao' or 'chgnet'")
