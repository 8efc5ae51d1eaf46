"""Remove training crystals that duplicate held-out ones (same id, or same structure by StructureMatcher)."""
from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Sequence

from dao.crystal import Crystal


def reduced_formula(c: Crystal) -> str:
    from pymatgen.core import Composition, Element

    counts: dict = defaultdict(int)
    for z in c.atomic_numbers:
        counts[Element.from_Z(int(z))] += 1
    return Composition(counts).reduced_formula


def remove_overlap(crystals: Sequence[Crystal], exclude: Sequence[Crystal]) -> tuple[list[Crystal], int]:
    """Drop every crystal whose id is in ``exclude`` or that matches an excluded structure of the same
    reduced formula (pymatgen StructureMatcher, default tolerances). Returns (kept, number removed).

    Structures are only compared within a reduced-formula bucket, so the cost is linear in the corpus
    for the usual case of few shared formulas.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    ids = {c.meta.get("id") for c in exclude if c.meta.get("id")}
    buckets: dict[str, list] = defaultdict(list)
    for c in exclude:
        buckets[reduced_formula(c)].append(c)
    matcher = StructureMatcher()
    kept, removed = [], 0
    ref_structs: dict[int, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for c in crystals:
            if c.meta.get("id") in ids:
                removed += 1
                continue
            bucket = buckets.get(reduced_formula(c))
            if bucket:
                s = c.to_structure()
                hit = False
                for ref in bucket:
                    rs = ref_structs.setdefault(id(ref), ref.to_structure())
                    if matcher.fit(s, rs):
                        hit = True
                        break
                if hit:
                    removed += 1
                    continue
            kept.append(c)
    return kept, removed
