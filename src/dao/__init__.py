"""DAO: Siamese foundation models for crystal structure prediction.

The public API is small and imported lazily (importing ``dao`` does not import torch):

>>> import dao
>>> structures = dao.predict("CsV3Sb5", n=5)          # list of pymatgen Structures
>>> model = dao.load_generator("default")              # DAO-G checkpoint with its config
>>> atoms.calc = dao.DAOCalculator("runs/dao_p/model.pt")   # DAO-P at t = 0 as an ASE calculator
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "predict": ("dao.prediction", "predict"),
    "load_generator": ("dao.models.checkpoint", "load_generator"),
    "load_energy_model": ("dao.models.checkpoint", "load_energy_model"),
    "DAOCalculator": ("dao.calculator", "DAOCalculator"),
    "Crystal": ("dao.crystal", "Crystal"),
    "CrystalBatch": ("dao.crystal", "CrystalBatch"),
    "DAOError": ("dao.errors", "DAOError"),
}

__all__ = sorted(_LAZY) + ["__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from dao.calculator import DAOCalculator
    from dao.crystal import Crystal, CrystalBatch
    from dao.errors import DAOError
    from dao.models.checkpoint import load_energy_model, load_generator
    from dao.prediction import predict


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'dao' has no attribute {name!r}")
