"""Species assignments of a template to a target composition (docs/templates.md, 'Species assignment').

A template with elements e₁..e_k and a target with elements t₁..t_k of the same prototype (equal sorted site
counts) admit the assignments that map each template element to a target element with the same number of
sites. ``assignments`` lists them with their distance Σ_e (n_e/N)·D[e, σ(e)] (D an element distance of
:mod:`dao.templates.elements`), best first. Groups of equal multiplicity larger than :data:`MAX_GROUP` are
solved by the Hungarian method (best assignment only) instead of enumerated.

``en_order`` is the naive rule it is measured against: in each multiplicity group, template and target
elements are paired in order of electronegativity (one assignment per template).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Sequence

import numpy as np

from dao.templates.elements import element_table

MAX_GROUP = 5  # 5! = 120 permutations per group at most
Assignment = tuple[float, dict[int, int]]  # (distance, template Z -> target Z)


def _groups(counts: Sequence[tuple[int, int]]) -> dict[int, list[int]]:
    by_n: dict[int, list[int]] = defaultdict(list)
    for z, n in counts:
        by_n[n].append(z)
    return by_n


def _group_options(src: list[int], dst: list[int], dist: np.ndarray, en_order: bool) -> list[dict[int, int]]:
    if en_order:
        x = element_table()["X"]
        return [dict(zip(sorted(src, key=lambda z: (x[z], z)), sorted(dst, key=lambda z: (x[z], z))))]
    if len(src) > MAX_GROUP:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(dist[np.ix_(src, dst)])
        return [{src[r]: dst[c] for r, c in zip(rows, cols)}]
    return [dict(zip(src, perm)) for perm in itertools.permutations(dst)]


def assignments(template: Sequence[tuple[int, int]], target: Sequence[tuple[int, int]], dist: np.ndarray,
                en_order: bool = False, limit: int | None = None) -> list[Assignment]:
    """Assignments template Z → target Z respecting site counts, with their distances, best first.
    ``template`` and ``target`` are (Z, sites) pairs of the same prototype; [] when they are not."""
    src, dst = _groups(template), _groups(target)
    if sorted((n, len(z)) for n, z in src.items()) != sorted((n, len(z)) for n, z in dst.items()):
        return []
    per_group = [_group_options(src[n], dst[n], dist, en_order) for n in sorted(src)]
    out = []
    for combo in itertools.product(*per_group):
        mapping = {a: b for part in combo for a, b in part.items()}
        out.append((distance(template, mapping, dist), mapping))
    out.sort(key=lambda a: a[0])
    return out[:limit] if limit is not None else out


def distance(template: Sequence[tuple[int, int]], mapping: dict[int, int], dist: np.ndarray) -> float:
    """Σ_e (n_e/N)·D[e, σ(e)] of one assignment σ = ``mapping`` of the template's (Z, sites) pairs."""
    return float(sum(n * dist[z, mapping[z]] for z, n in template) / sum(n for _, n in template))
