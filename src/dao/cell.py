"""Cell (lattice) bases shared by the DAO-P calculator and the batched potentials.

:func:`niggli_transform` lives here, below both :mod:`dao.calculator` and :mod:`dao.potentials`, so that
neither has to import the other for it.
"""
from __future__ import annotations

import numpy as np

from dao.crystal import canonical_lattice


def niggli_transform(cell: np.ndarray) -> np.ndarray:
    """Integer matrix M such that M·L is the Niggli-reduced basis of the lattice L (rows).

    It is found by pymatgen's reduction (as used on training data) of the lattice in its canonical
    ``Lattice.from_parameters`` orientation, so M depends only on a, b, c, α, β, γ: the same for every
    rotation of the cell. Identity when the reduction fails.
    """
    from pymatgen.core import Lattice

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
