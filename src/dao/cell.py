"""Cells (lattices): canonical orientation, sanity checks and bounded Niggli reduction.

Everything that reduces a cell goes through here — structures read from files (:mod:`dao.crystal`), sampled
cells (:func:`dao.prediction.finalize_structure`) and the DAO-P calculator and batched potentials
(:func:`niggli_transform`). pymatgen's Niggli reduction ends by searching every lattice point of the *input*
basis within a sphere (``Lattice.find_mapping``), which for a degenerate or very skewed cell is tens of
millions of points and minutes of time. So a cell is first checked (:func:`cell_problem`: finite, cell
lengths, volume per atom within the bounds of :mod:`dao.constants`), then the size of that search is
estimated; when it is too large the cell is LLL-reduced first (the same lattice, a short basis, a small
search), and a cell whose search is still too large stays LLL-reduced. Reduction therefore takes bounded
time: a degenerate cell is a one-line :class:`~dao.errors.StructureReadError`, never a hang.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from dao.constants import MAX_CELL_LENGTH, MAX_VOLUME_PER_ATOM, MIN_VOLUME_PER_ATOM
from dao.errors import StructureReadError

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: most lattice points pymatgen's Niggli mapping may search (about 0.3 s at ~1.6e-7 s per point)
NIGGLI_SEARCH_BUDGET = 2_000_000


def canonical_lattice(matrix: np.ndarray) -> np.ndarray:
    """Rotate a lattice into pymatgen's ``Lattice.from_parameters`` orientation (same a, b, c, α, β, γ).

    Fractional coordinates are unchanged by a rotation of the lattice, so this only fixes the
    arbitrary orientation of the Cartesian frame.
    """
    from pymatgen.core import Lattice

    lat = Lattice(matrix)
    return np.asarray(Lattice.from_parameters(*lat.abc, *lat.angles).matrix, dtype=np.float64)


def cell_problem(lattice: np.ndarray, num_atoms: int | None = None) -> str | None:
    """Why a cell (rows are lattice vectors, Å) is unusable, or None when it is sane.

    Sane: finite; every length ≤ MAX_CELL_LENGTH Å; volume per atom in [MIN_VOLUME_PER_ATOM,
    MAX_VOLUME_PER_ATOM] Å³ (with ``num_atoms``; without it the volume must only be positive). The angles of
    the given basis are not checked: a skewed basis of a good lattice (e.g. a sampled cell) is fine, LLL
    straightens it; a degenerate *lattice* is one of too little volume (a reduced basis's angles are always
    within about 60°–120°).
    """
    m = np.asarray(lattice, dtype=np.float64)
    if m.shape != (3, 3) or not np.all(np.isfinite(m)):
        return "non-finite lattice"
    lengths = np.linalg.norm(m, axis=1)
    if lengths.max() > MAX_CELL_LENGTH:
        return f"cell length {lengths.max():.3g} Å exceeds {MAX_CELL_LENGTH:g} Å"
    if lengths.min() <= 0:
        return "degenerate lattice (a zero lattice vector)"
    volume = abs(float(np.linalg.det(m)))
    if num_atoms is None or num_atoms < 1:
        return None if volume > 0 else "degenerate lattice (volume 0)"
    per_atom = volume / num_atoms
    if not MIN_VOLUME_PER_ATOM <= per_atom <= MAX_VOLUME_PER_ATOM:
        return (f"volume per atom {per_atom:.3g} Å³ outside [{MIN_VOLUME_PER_ATOM:g}, {MAX_VOLUME_PER_ATOM:g}] Å³ "
                f"(degenerate cell)")
    return None


def niggli_reduce(structure: Structure) -> Structure:
    """The Niggli-reduced structure (pymatgen's reduction, the one used on training data), in bounded time.

    A sane cell whose Niggli search stays too large even on its LLL basis (long and thin, e.g. 999 × 2 × 2 Å)
    is returned LLL-reduced. Raises StructureReadError naming the problem for an insane cell
    (:func:`cell_problem`) or a failed reduction.
    """
    problem = cell_problem(structure.lattice.matrix, len(structure))
    if problem is not None:
        raise StructureReadError(problem)
    lll, niggli = _plan(structure.lattice.matrix)
    try:
        if lll:
            structure = structure.get_reduced_structure("LLL")  # the same lattice in a short basis
        return structure.get_reduced_structure("niggli") if niggli else structure
    except Exception as exc:  # pymatgen raises ValueError("can't find niggli") and numerical errors
        raise StructureReadError(f"Niggli reduction failed: {exc}") from None


def niggli_transform(cell: np.ndarray) -> np.ndarray:
    """Integer matrix M such that M·L is the Niggli-reduced basis of the lattice L (rows).

    It is found by pymatgen's reduction (as used on training data) of the lattice in its canonical
    ``Lattice.from_parameters`` orientation, so M depends only on a, b, c, α, β, γ: the same for every
    rotation of the cell. Identity when the cell is not sane (:func:`cell_problem`) or the reduction fails
    or would take too long.
    """
    from pymatgen.core import Lattice

    cell = np.asarray(cell, dtype=np.float64)
    if cell_problem(cell) is not None:
        return np.eye(3)
    try:
        canonical = canonical_lattice(cell)
        lll, niggli = _plan(canonical)
        if not niggli:
            return np.eye(3)
        basis = Lattice(canonical).lll_matrix if lll else canonical
        reduced = Lattice(basis).get_niggli_reduced_lattice().matrix
        op = np.rint(reduced @ np.linalg.inv(canonical))
    except (ValueError, np.linalg.LinAlgError):
        return np.eye(3)
    if abs(abs(np.linalg.det(op)) - 1) > 1e-6 or not np.allclose(op @ canonical, reduced, atol=1e-5 * np.abs(cell).max()):
        return np.eye(3)
    return op


def _plan(matrix: np.ndarray) -> tuple[bool, bool]:
    """(LLL first?, then Niggli?): Niggli directly when pymatgen's search on ``matrix`` is small, after LLL
    when it is small only on the LLL-reduced basis, else LLL alone (a long, thin but sane cell).

    The search radius is the longest Niggli vector, at most the longest vector of any basis of the lattice
    (in 3-D the Niggli lengths are the successive minima).
    """
    from pymatgen.core import Lattice

    if _search_points(matrix) <= NIGGLI_SEARCH_BUDGET:
        return False, True
    return True, _search_points(np.asarray(Lattice(matrix).lll_matrix, dtype=np.float64)) <= NIGGLI_SEARCH_BUDGET


def _search_points(matrix: np.ndarray) -> float:
    """Lattice points in the box pymatgen's ``get_points_in_sphere`` scans when mapping a Niggli cell onto
    the basis ``matrix`` (radius: its longest vector)."""
    radius = 1.01 * float(np.linalg.norm(matrix, axis=1).max())
    recip = np.linalg.norm(np.linalg.inv(matrix).T, axis=1)  # reciprocal lengths / 2π
    return float(np.prod(2 * np.ceil(radius * recip) + 1))
