"""Structure deduplication by pymatgen's StructureMatcher, one implementation for the whole package.

:class:`StructureDeduplicator` groups structures greedily: structures are bucketed by a key (the reduced
formula, or the reduced formula and the primitive site count), and a structure is compared only with the
excluded structures of its bucket (tolerances never tighter than pymatgen's defaults), then with the
representatives already kept in it (the given tolerances); the first match wins. Structures are reduced
once, lazily, when a comparison needs them. :func:`greedy_representatives` is the bare greedy loop for
callers with their own comparison. Used by CrysDB building and :func:`remove_overlap`.
"""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import TYPE_CHECKING, Any, Callable, Hashable, Sequence, TypeVar

from dao.crystal import Crystal
from dao.formula import reduced_formula_of

if TYPE_CHECKING:
    from pymatgen.core import Structure

T = TypeVar("T")


def greedy_representatives(items: Sequence[T], same: Callable[[T, T], bool],
                           max_reps: int | None = None) -> tuple[list[int], bool]:
    """Greedy grouping: an item joins the first representative it is ``same`` as, or becomes one.
    Returns (representative indices, complete); stops (complete False) once more than ``max_reps`` exist."""
    reps: list[int] = []
    for i, item in enumerate(items):
        if any(same(item, items[r]) for r in reps):
            continue
        reps.append(i)
        if max_reps is not None and len(reps) > max_reps:
            return reps, False
    return reps, True


def matcher_reduced(structure: Structure) -> Structure:
    """The primitive, Niggli-reduced structure that StructureMatcher (default settings) compares. Two
    structures can only match when these have the same number of sites (no supercell matching), so the
    count is a safe bucket key, and matching the reduced forms skips the reduction on every comparison."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher._get_reduced_structure(structure, True, True)


class _Entry:
    """A structure (or a function making it) with its label; reduced on first use."""

    def __init__(self, label: Any, structure: Any) -> None:
        self.label, self._source, self._reduced = label, structure, None

    @property
    def reduced(self) -> Structure:
        if self._reduced is None:
            s = self._source() if callable(self._source) else self._source
            self._reduced = matcher_reduced(s)
        return self._reduced


class StructureDeduplicator:
    """Greedy StructureMatcher deduplication (see the module docstring). ``add`` returns
    ``("matches_excluded", excluded label)``, ``("duplicate", representative label)`` or ``("kept", None)``."""

    def __init__(self, ltol: float = 0.2, stol: float = 0.3, angle_tol: float = 5.0) -> None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        default = StructureMatcher()
        self.matcher = StructureMatcher(ltol=ltol, stol=stol, angle_tol=angle_tol)
        self.exclude_matcher = StructureMatcher(ltol=max(ltol, default.ltol), stol=max(stol, default.stol),
                                                angle_tol=max(angle_tol, default.angle_tol))
        self.excluded: dict[Hashable, list[_Entry]] = defaultdict(list)
        self.reps: dict[Hashable, list[_Entry]] = defaultdict(list)

    def exclude(self, key: Hashable, structure: Any, label: Any) -> None:
        """Register an excluded structure (or a function returning it) under bucket ``key``."""
        self.excluded[key].append(_Entry(label, structure))

    @staticmethod
    def _first(entry: _Entry, among: list[_Entry], matcher: Any) -> _Entry | None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for other in among:
                if len(other.reduced) == len(entry.reduced) and matcher.fit(entry.reduced, other.reduced,
                                                                            skip_structure_reduction=True):
                    return other
        return None

    def add(self, key: Hashable, structure: Any, label: Any, keep: bool = True) -> tuple[str, Any]:
        """Decide one structure (or a function returning it); with ``keep`` False it is only compared
        with the excluded structures and never becomes a representative."""
        entry = _Entry(label, structure)
        hit = self._first(entry, self.excluded.get(key, []), self.exclude_matcher)
        if hit is not None:
            return "matches_excluded", hit.label
        if not keep:
            return "kept", None
        rep = self._first(entry, self.reps.get(key, []), self.matcher)
        if rep is not None:
            return "duplicate", rep.label
        self.reps[key].append(entry)
        return "kept", None


def remove_overlap(crystals: Sequence[Crystal], exclude: Sequence[Crystal]) -> tuple[list[Crystal], int]:
    """Drop every crystal whose id is in ``exclude`` or that matches an excluded structure of the same
    reduced formula (pymatgen StructureMatcher, default tolerances). Returns (kept, number removed).

    Structures are only compared within a reduced-formula bucket, so the cost is linear in the corpus
    for the usual case of few shared formulas.
    """
    ids = {c.meta.get("id") for c in exclude if c.meta.get("id")}
    dedup = StructureDeduplicator()
    for c in exclude:
        dedup.exclude(reduced_formula_of(c.atomic_numbers), c.to_structure, c.meta.get("id"))
    kept = [c for c in crystals if c.meta.get("id") not in ids
            and dedup.add(reduced_formula_of(c.atomic_numbers), c.to_structure, None, keep=False)[0] == "kept"]
    return kept, len(crystals) - len(kept)
