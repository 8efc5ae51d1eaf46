"""Element similarity for template substitution (docs/templates.md, 'Species assignment').

Every similarity is an element distance matrix ``D[Z_a, Z_b]`` (row/column Z, 0 unused, symmetric, zero on the
diagonal), built once per process. :data:`DISTANCES` names the measured ones:

* ``en``: |ΔX| (Pauling electronegativity), in units of its spread over the elements;
* ``en_radius``: |ΔX|/σ_X + |Δr|/σ_r with r pymatgen's empirical atomic radius;
* ``mendeleev``: |ΔM|/σ_M, M Pettifor's Mendeleev number (the chemical scale used for structure maps);
* ``embedding``: Euclidean distance between the 92-dim descriptors of :func:`dao.nn.embeddings.atom_feature_table`,
  divided by its median over element pairs;
* ``substitution``: −log of the element-level pair correlation of pymatgen's ``SubstitutionProbability``
  (Hautier et al. 2011; the largest over the two elements' oxidation states), capped at the largest finite value.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np

from dao.constants import MAX_Z

_FALLBACK_RADIUS = 1.5  # Å, for the few elements pymatgen gives no radius


@lru_cache(maxsize=1)
def element_table() -> dict[str, np.ndarray]:
    """Per-element arrays indexed by Z (0 unused): ``X`` electronegativity, ``r`` atomic radius (Å),
    ``M`` Mendeleev number. Missing values take the mean of the known ones (noble gases have no X)."""
    import warnings

    from pymatgen.core import Element

    cols = {"X": np.full(MAX_Z + 1, np.nan), "r": np.full(MAX_Z + 1, np.nan), "M": np.full(MAX_Z + 1, np.nan)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, MAX_Z + 1):
            el = Element.from_Z(z)
            cols["X"][z] = el.X if el.X and np.isfinite(el.X) else np.nan
            radius = el.atomic_radius or el.atomic_radius_calculated
            cols["r"][z] = float(radius) if radius else _FALLBACK_RADIUS
            cols["M"][z] = el.mendeleev_no if el.mendeleev_no else np.nan
    for v in cols.values():
        v[1:][np.isnan(v[1:])] = np.nanmean(v[1:])
        v[0] = 0.0
    return cols


def _abs_diff(v: np.ndarray) -> np.ndarray:
    return np.abs(v[:, None] - v[None, :]) / np.std(v[1:])


def _en() -> np.ndarray:
    return _abs_diff(element_table()["X"])


def _en_radius() -> np.ndarray:
    t = element_table()
    return _abs_diff(t["X"]) + _abs_diff(t["r"])


def _mendeleev() -> np.ndarray:
    return _abs_diff(element_table()["M"])


def _embedding() -> np.ndarray:
    from dao.nn.embeddings import atom_feature_table

    f = atom_feature_table().double().numpy()[: MAX_Z + 1]
    d = np.sqrt(((f[:, None, :] - f[None, :, :]) ** 2).sum(-1))
    return d / np.median(d[1:, 1:][np.triu_indices(MAX_Z, 1)])


def _substitution() -> np.ndarray:
    import warnings

    from pymatgen.analysis.structure_prediction.substitution_probability import SubstitutionProbability

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = SubstitutionProbability()
        corr = np.zeros((MAX_Z + 1, MAX_Z + 1))
        species = [s for s in sp.species if s.element.Z <= MAX_Z]
        for a in species:
            for b in species:
                za, zb = a.element.Z, b.element.Z
                corr[za, zb] = max(corr[za, zb], sp.pair_corr(a, b))
    with np.errstate(divide="ignore"):
        d = -np.log(corr)
    d = d - np.nanmin(d[np.isfinite(d)])
    d[~np.isfinite(d)] = np.max(d[np.isfinite(d)])
    d = np.minimum(d, d.T)
    np.fill_diagonal(d, 0.0)
    return d


DISTANCES: dict[str, Callable[[], np.ndarray]] = {
    "en": _en, "en_radius": _en_radius, "mendeleev": _mendeleev, "embedding": _embedding,
    "substitution": _substitution,
}
#: the slow ones (seconds to tens of seconds: torch, pymatgen's substitution tables) ship precomputed in
#: ``dao/resources/element_distances.npz`` (written by ``tools/make_element_distances.py``)
CACHED = ("embedding", "substitution")
CACHE_FILE = "element_distances.npz"


def compute_distance_matrix(name: str) -> np.ndarray:
    """Build the distance matrix of ``name`` from its definition (no cache)."""
    from dao.errors import DAOError

    if name not in DISTANCES:
        raise DAOError(f"unknown element similarity {name!r} (known: {', '.join(DISTANCES)})")
    d = np.asarray(DISTANCES[name](), dtype=np.float64)
    np.fill_diagonal(d, 0.0)
    return d


@lru_cache(maxsize=None)
def distance_matrix(name: str) -> np.ndarray:
    """The (MAX_Z+1)² element distance matrix of similarity ``name`` (one of :data:`DISTANCES`); the
    :data:`CACHED` ones come from the bundled file when it holds them."""
    if name in CACHED:
        from importlib import resources

        path = resources.files("dao.resources").joinpath(CACHE_FILE)
        if path.is_file():
            with np.load(str(path), allow_pickle=False) as z:
                if name in z.files and z[name].shape == (MAX_Z + 1, MAX_Z + 1):
                    return np.asarray(z[name], dtype=np.float64)
    return compute_distance_matrix(name)


def atomic_volume(numbers: np.ndarray) -> float:
    """Σ r³ over the given atoms (the radius volume, up to 4π/3), for volume ratios between substitutions."""
    return float(np.sum(element_table()["r"][np.asarray(numbers)] ** 3))
