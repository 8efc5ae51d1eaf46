"""Canonical structures and the protocol's per-pair computations (matcher, validity, de-duplication).

Every structure is rebuilt the way DiffCSP's ``Crystal`` rebuilds it (``Lattice.from_parameters`` of the
cell lengths/angles, species by atomic number, fractional coordinates as given) into a :class:`Canon`, a
small picklable value that worker processes receive. The per-pair computation is DiffCSP's:
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(pred, ref)``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from pymatgen.core import Lattice, Structure

from dao.evaluate.validity import composition_validity, validity_detail
from dao.formula import reduced_composition

if TYPE_CHECKING:
    from pymatgen.analysis.structure_matcher import StructureMatcher

MATCHER_KWARGS: dict[str, float] = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}
#: a reduced composition with this many distinct reference structures (inclusive) is a polymorph group
POLYMORPH_RANGE = (2, 4)

Comp = tuple[tuple[int, int], ...]  # reduced composition: ((Z, count), ...) sorted by Z


class _Missing:
    """Sentinel for a sample slot with no prediction (e.g. file ``12_3.cif`` absent while ``12_4.cif`` exists)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING = _Missing()


class UnusableStructure(ValueError):
    """A parsed structure the protocol cannot score (disordered, dummy species, no sites)."""


@dataclass(frozen=True)
class Canon:
    matrix: np.ndarray  # (3, 3) lattice rows, Lattice.from_parameters(a, b, c, alpha, beta, gamma)
    numbers: tuple[int, ...]
    frac: np.ndarray  # (n, 3)
    finite: bool
    comp: Comp  # reduced (Z, count)
    key: str


def canonicalize(structure: Structure) -> Canon:
    """DiffCSP's ``Crystal`` view of a structure: (lengths, angles, atomic numbers, fractional coords)."""
    if not isinstance(structure, Structure):
        raise UnusableStructure(f"not a pymatgen Structure: {type(structure).__name__}")
    if len(structure) == 0:
        raise UnusableStructure("no sites")
    if not structure.is_ordered:
        raise UnusableStructure("disordered (partial occupancies)")
    numbers = tuple(int(site.specie.Z) for site in structure)
    if min(numbers) < 1:
        raise UnusableStructure("dummy species")
    lat = structure.lattice
    frac = np.ascontiguousarray(structure.frac_coords, dtype=np.float64)
    params = np.array(list(lat.abc) + list(lat.angles), dtype=np.float64)
    finite = bool(np.all(np.isfinite(params)) and np.all(np.isfinite(frac)))
    matrix = np.ascontiguousarray(lat.matrix, dtype=np.float64)
    if finite:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = np.ascontiguousarray(Lattice.from_parameters(*params.tolist()).matrix, dtype=np.float64)
        if np.all(np.isfinite(m)):
            matrix = m
        else:
            finite = False
    h = hashlib.sha1()
    h.update(matrix.tobytes())
    h.update(np.asarray(numbers, dtype=np.int64).tobytes())
    h.update(frac.tobytes())
    return Canon(matrix, numbers, frac, finite, reduced_composition(numbers), h.hexdigest()[:24])


def canonical_slot(sample: Any) -> Canon | tuple[str, str] | Any:
    """One prediction slot as the evaluation tracks it: a :class:`Canon`, ``MISSING``, or
    ``("unreadable", why)`` for ``None`` (unparseable) and structures the protocol cannot score."""
    if sample is MISSING:
        return MISSING
    if sample is None:
        return ("unreadable", "could not be parsed")
    try:
        return canonicalize(sample)
    except UnusableStructure as exc:
        return ("unreadable", str(exc))


def to_structure(c: Canon) -> Structure:
    """The pymatgen structure of a canonical view (what the matcher and the energy scorer see)."""
    return Structure(Lattice(c.matrix), list(c.numbers), c.frac, coords_are_cartesian=False)


def validity(c: Canon) -> dict[str, Any]:
    """``{"valid", "comp_valid", "struct_valid", "reason"}`` of a canonical structure (see :mod:`.validity`)."""
    if not c.finite:
        comp_ok = composition_validity(c.numbers)
        reason = ("" if comp_ok else "charge_neutrality,") + "non_finite"
        return {"valid": False, "comp_valid": comp_ok, "struct_valid": False, "reason": reason}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp_ok, struct_ok, reason = validity_detail(to_structure(c))
    return {"valid": comp_ok and struct_ok, "comp_valid": comp_ok, "struct_valid": struct_ok, "reason": reason}


def is_valid(structure: Structure) -> tuple[bool, str]:
    """DiffCSP validity (SMACT charge neutrality with the 2014 oxidation-state set and all-metal pass;
    min interatomic distance ≥ 0.5 Å; volume ≥ 0.1 Å³; finite lattice). Returns (valid, reason); reason is
    '' when valid, else comma-separated codes: charge_neutrality, min_distance, volume, non_finite,
    unusable:<why>."""
    try:
        c = canonicalize(structure)
    except UnusableStructure as exc:
        return False, f"unusable:{exc}"
    v = validity(c)
    return v["valid"], v["reason"]


_MATCHER: StructureMatcher | None = None


def matcher() -> StructureMatcher:
    """The protocol's StructureMatcher (one per process)."""
    global _MATCHER
    if _MATCHER is None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        _MATCHER = StructureMatcher(**MATCHER_KWARGS)
    return _MATCHER


def _clear_reduction_cache() -> None:
    """pymatgen memoises primitive/Niggli reductions in a class-level LRU cache whose keys compare
    structures *within tolerance*: a pair could then be scored with the reduction of an earlier, nearly
    identical structure, making the last digits depend on what the process saw before (and on how tasks are
    spread over workers). Clearing it before each pair makes every result a function of the pair alone; the
    reductions cost ~1 ms of a ~10 ms match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    fn = getattr(StructureMatcher, "_get_reduced_istructure", None)
    clear = getattr(fn, "cache_clear", None)
    if clear is not None:
        clear()


def rms(pred: Canon, ref: Canon) -> tuple[float | None, str | None]:
    """``StructureMatcher.get_rms_dist(pred, ref)[0]`` or None, as (rms, error message or None)."""
    if not (pred.finite and ref.finite):
        return None, None  # cannot be matched; the validity reason says non_finite
    if pred.comp != ref.comp:
        # Exact: get_rms_dist needs, after primitive reduction, equal site counts (len(s1)*fu == len(s2))
        # and a zero-cost species assignment (SpeciesComparator). Primitive reduction preserves the
        # reduced composition, so different reduced compositions always give None.
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _clear_reduction_cache()
            r = matcher().get_rms_dist(to_structure(pred), to_structure(ref))
    except Exception as exc:  # DiffCSP: any exception = no match
        return None, f"matcher_error: {type(exc).__name__}: {exc}"[:300]
    return (None if r is None else float(r[0])), None


def dedupe(refs: list[Canon], max_reps: int) -> dict[str, Any]:
    """Greedy grouping of same-composition references into distinct structures (a reference joins the
    first representative it matches): ``{"reps": [index, ...], "complete": bool}``. Stops (incomplete)
    once more than ``max_reps`` representatives exist."""
    reps: list[int] = []
    for i, c in enumerate(refs):
        for r in reps:
            if rms(c, refs[r])[0] is not None:
                break
        else:
            reps.append(i)
            if len(reps) > max_reps:
                return {"reps": reps, "complete": False}
    return {"reps": reps, "complete": True}
