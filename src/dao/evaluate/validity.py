"""Validity gate of the CSP protocol, reproducing CDVAE/DiffCSP exactly.

DiffCSP's ``scripts/eval_utils.py`` defines two checks, and a crystal is valid only if both pass:

* ``smact_validity(elems, counts)`` on the gcd-reduced composition: single-element compositions pass;
  compositions made only of metals (``smact.metals``) pass ("alloys"); compositions whose product of
  oxidation-state choices exceeds 1e7 fail; otherwise a composition passes when some assignment of one
  oxidation state per element is charge neutral *and* passes SMACT's Pauling electronegativity test.
* ``structure_validity(structure)``: every interatomic distance (minimum image, self excluded)
  ≥ 0.5 Å and cell volume ≥ 0.1 Å³. Non-finite lattices/coordinates make a crystal invalid.

Reproducing this with the SMACT now installed needs two corrections that this module makes:

1. SMACT ≥ 3 changed ``Element.oxidation_states`` to the ICSD-2024 set; DiffCSP ran on SMACT 2.x whose
   default was the original 2014 SMACT set, available today as ``Element.oxidation_states_smact14``.
2. SMACT 2.x's Pauling test compared electronegativities directly: with an element lacking a Pauling
   electronegativity (He, Ne, Ar, Pm, Rn, Lr) the comparison of an opposite-sign pair raised ``TypeError``,
   which DiffCSP caught and treated as *passing*; SMACT 4 returns ``False`` instead. ``_pauling_ok``
   re-implements the 2.x semantics, including the order in which pairs are visited.

The only part of DiffCSP's validity not reproduced is its CrystalNN-fingerprint side effect
(``Crystal.get_fingerprints`` marks a crystal invalid when matminer's CrystalNNFingerprint raises); it needs
matminer and only bites on degenerate structures.
"""

from __future__ import annotations

import itertools
from functools import lru_cache

import numpy as np
from pymatgen.core import Element, Structure

from dao.constants import MIN_DISTANCE  # Å, DiffCSP structure_validity cutoff
from dao.formula import reduced_composition

MIN_VOLUME = 0.1  # Å^3
MAX_OX_COMBINATIONS = 1e7  # DiffCSP: `if oxn > 1e7: return False`


@lru_cache(maxsize=1)
def _smact_tables() -> tuple[dict[str, tuple[tuple[int, ...], float | None]], frozenset[str]]:
    import smact

    table: dict[str, tuple[tuple[int, ...], float | None]] = {}
    for symbol, el in smact.element_dictionary().items():
        ox = getattr(el, "oxidation_states_smact14", None)
        if ox is None:  # SMACT 2.x: the default list *is* the 2014 set
            ox = el.oxidation_states
        table[symbol] = (tuple(int(o) for o in (ox or ())), el.pauling_eneg)
    return table, frozenset(smact.metals)


def _pauling_ok(ox_states: tuple[int, ...], enegs: tuple[float | None, ...]) -> bool:
    """SMACT 2.x ``pauling_test`` (repeat_anions=repeat_cations=True, threshold=0) as DiffCSP called it."""
    for (ox1, en1), (ox2, en2) in itertools.combinations(zip(ox_states, enegs), 2):
        if ox1 > 0 and ox2 < 0:
            if en1 is None or en2 is None:
                return True  # TypeError in SMACT 2.x, caught by DiffCSP: "assume it is okay"
            if en1 >= en2:
                return False
        elif ox1 < 0 and ox2 > 0:
            if en1 is None or en2 is None:
                return True
            if en1 <= en2:
                return False
    return True


@lru_cache(maxsize=65536)
def smact_validity(symbols: tuple[str, ...], counts: tuple[int, ...]) -> bool:
    """DiffCSP/CDVAE ``smact_validity(comp, count, use_pauling_test=True, include_alloys=True)``.

    ``symbols`` sorted by atomic number, ``counts`` the gcd-reduced integer counts (as DiffCSP's
    ``Crystal.get_composition`` builds them). Result is exact; the search over oxidation-state choices is
    vectorised (the answer is an existence test, so visiting order does not matter).
    """
    table, metals = _smact_tables()
    try:
        data = [table[s] for s in symbols]
    except KeyError:  # SMACT knows no such element: DiffCSP would raise; count as invalid
        return False
    if len(set(symbols)) == 1:
        return True
    if all(s in metals for s in symbols):
        return True
    ox_combos = [d[0] for d in data]
    enegs = tuple(d[1] for d in data)
    oxn = 1
    for oxc in ox_combos:
        oxn *= len(oxc)
    if oxn > MAX_OX_COMBINATIONS:
        return False
    if oxn == 0:
        return False
    # charge of every oxidation-state combination, in itertools.product order
    charge = np.zeros(1, dtype=np.int64)
    for oxc, c in zip(ox_combos, counts):
        charge = (charge[:, None] + np.asarray(oxc, dtype=np.int64)[None, :] * int(c)).ravel()
    neutral = np.flatnonzero(charge == 0)
    if neutral.size == 0:
        return False
    shape = tuple(len(o) for o in ox_combos)
    for flat in neutral.tolist():
        idx = np.unravel_index(flat, shape)
        ox_states = tuple(ox_combos[i][j] for i, j in enumerate(idx))
        if _pauling_ok(ox_states, enegs):
            return True
    return False


def composition_validity(numbers: np.ndarray | list[int]) -> bool:
    """SMACT validity (:func:`smact_validity`) of the reduced composition of these atomic numbers."""
    comp = reduced_composition(numbers)
    if not comp:
        return False
    try:
        symbols = tuple(Element.from_Z(z).symbol for z, _ in comp)
    except ValueError:
        return False
    return smact_validity(symbols, tuple(c for _, c in comp))


def _too_close(structure: Structure, cutoff: float) -> bool:
    """Some interatomic distance (minimum image, self excluded) is below ``cutoff``."""
    if len(structure) < 2:
        return False
    dist = structure.distance_matrix + np.eye(len(structure)) * (cutoff + 10.0)
    return bool(dist.min() < cutoff)


def structure_validity(structure: Structure, cutoff: float = MIN_DISTANCE) -> bool:
    """DiffCSP ``structure_validity``: min pairwise distance ≥ cutoff and volume ≥ 0.1 Å³."""
    return not (_too_close(structure, cutoff) or structure.volume < MIN_VOLUME)


def validity_detail(structure: Structure) -> tuple[bool, bool, str]:
    """(comp_valid, struct_valid, reason) for an ordered, finite structure; reason '' when valid."""
    numbers = [site.specie.Z for site in structure]
    comp_ok = composition_validity(numbers)
    reasons = []
    if not comp_ok:
        reasons.append("charge_neutrality")
    finite = bool(np.all(np.isfinite(structure.lattice.matrix)) and np.all(np.isfinite(structure.frac_coords)))
    if not finite:
        return comp_ok, False, ",".join(reasons + ["non_finite"])
    vol = structure.volume
    if not vol >= MIN_VOLUME:
        reasons.append("volume")
    if _too_close(structure, MIN_DISTANCE):
        reasons.append("min_distance")
    struct_ok = not any(r in ("volume", "min_distance") for r in reasons)
    return comp_ok, struct_ok, ",".join(reasons)
