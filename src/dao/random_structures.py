"""Symmetry-restricted random candidates (docs/design.md, 'Ranked prediction').

For a composition that no template fits, and that the generator may not know, :func:`random_candidates`
draws structures the way random structure search does: a space group at random, then atoms on Wyckoff
positions compatible with the cell's site counts (pyxtal, ``pip install 'dao-csp[random]'``), the volume from
pyxtal's atomic-volume estimate. Each candidate is reduced to its primitive cell and kept only when that has
the requested number of atoms. They are candidates for a judge to rank, not answers by themselves: with
``--judge none`` they come after every template and generated sample.
"""
from __future__ import annotations

import contextlib
import io
import warnings
from types import ModuleType

import numpy as np

from dao.candidates import Candidate
from dao.errors import DAOError
from dao.formula import CellComposition

#: space groups tried per requested candidate before giving up (most are incompatible with a composition)
TRIES_PER_CANDIDATE = 25


def require_pyxtal() -> ModuleType:
    """Import pyxtal or fail with an installation hint."""
    try:
        import pyxtal
    except ImportError:
        raise DAOError("pyxtal is not installed: pip install -c constraints.txt 'dao-csp[random]'") from None
    return pyxtal


def random_candidates(cell: CellComposition, n: int, seed: int = 0) -> list[Candidate]:
    """Up to ``n`` random symmetric structures of ``cell`` (same seed, same structures); fewer when too few
    space groups admit the cell's site counts. ``info`` names the space group and the draw."""
    pyxtal = require_pyxtal()
    rng = np.random.default_rng(seed)
    species = [el for el, _ in cell.counts]
    counts = [k for _, k in cell.counts]
    out: list[Candidate] = []
    for attempt in range(n * TRIES_PER_CANDIDATE):
        if len(out) >= n:
            break
        group = int(rng.integers(1, 231))
        crystal = pyxtal.pyxtal()
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                crystal.from_random(3, group, species, counts, conventional=False,
                                    random_state=int(rng.integers(2**31)))
                if not crystal.valid:
                    continue
                structure = crystal.to_pymatgen().get_primitive_structure()
        except Exception:  # pyxtal: composition incompatible with the group, or no placement found
            continue
        if len(structure) != cell.num_atoms:
            continue
        out.append(Candidate(cell, structure, "random", {"spacegroup": group, "sample": len(out),
                                                         "attempt": attempt}))
    return out
