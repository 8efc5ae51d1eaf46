"""Candidate structures for a composition, whatever proposed them (docs/design.md, 'Ranked prediction').

A candidate source (the template index, a generator, random symmetric structures) turns a cell composition
into :class:`Candidate` objects; the ranking deduplicates and judges them all alike. ``source`` names the
proposer and ``info`` carries what a user needs to trace the proposal (for a template: which corpus entry,
which species assignment; for a generated sample: method and sample index).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dao.formula import CellComposition

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: the candidate sources DAO knows (the values of ``Candidate.source``)
SOURCES = ("template", "generated", "random")


@dataclass
class Candidate:
    """One proposed structure for ``cell``. ``prior`` is the source's own plausibility score (higher is
    better; comparable within one source), used to order candidates when no judge ranks them."""

    cell: CellComposition
    structure: Structure
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    prior: float = 0.0
