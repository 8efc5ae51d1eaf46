"""How well a structure explains a measured powder pattern (docs/xrd.md, 'The score').

Both profiles are compared on the measured pattern's uniform 2θ grid after its background is removed: the
structure's pymatgen ``XRDCalculator`` sticks are drawn as Gaussians of a common width W, the measurement is
broadened to the same W, and the score is the weighted cross-correlation (de Gelder et al. 2001) of the
two under a triangular window, on a square-root intensity scale (so that the strongest peak, the one
preferred orientation distorts most, does not decide alone; weak peaks count), maximised over an
isotropic lattice scale factor within ±``SCALE_RANGE`` (the peaks move as sin θ' = sin θ / s, so the
sticks are computed once). It lies in [0, 1]; 1 is a perfect match up to intensity scale.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from dao.errors import DAOError
from dao.xrd.pattern import GRID_STEP, Pattern, on_grid, peak_fwhm

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: lattice scale factors searched: 1 ± SCALE_RANGE in steps of SCALE_STEP (a prediction's cell is often a few % off)
SCALE_RANGE, SCALE_STEP = 0.04, 0.002
#: the narrowest common Gaussian FWHM (degrees) both profiles are brought to
MIN_COMMON_FWHM = 0.25
#: half-width (degrees) of the triangular window of the weighted cross-correlation: peaks this far apart still overlap
WINDOW = 0.3
#: a structure "matches" the pattern at or above this score (docs/xrd.md, 'Threshold')
MATCH_THRESHOLD = 0.6
#: in a combined ranking, eV/atom of judge energy above the lowest that cost one unit of score
ENERGY_WEIGHT = 1.0


@dataclass(frozen=True)
class XRDMatch:
    """One structure's agreement with a pattern: ``score`` in [0, 1], the best lattice ``scale`` factor and
    whether the score reaches the threshold (``matched``)."""

    name: str
    formula: str
    score: float
    scale: float
    matched: bool


@dataclass(frozen=True)
class Prepared:
    """A pattern made ready for comparisons: grid, broadened measured profile, common width W (degrees)."""

    pattern: Pattern
    grid: np.ndarray
    profile: np.ndarray
    fwhm: float
    measured_fwhm: float


def _gaussian_kernel(fwhm: float, step: float = GRID_STEP) -> np.ndarray:
    sigma = fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / step
    half = max(1, int(math.ceil(4.0 * sigma)))
    k = np.exp(-0.5 * (np.arange(-half, half + 1) / sigma) ** 2)
    return k / k.sum()


def _triangle(half_width: float = WINDOW, step: float = GRID_STEP) -> np.ndarray:
    h = max(1, int(round(half_width / step)))
    return 1.0 - np.abs(np.arange(-h, h + 1)) / (h + 1)


def prepare(pattern: Pattern) -> Prepared:
    """Background removed, peak width measured, the measurement broadened to the common width
    W = max(measured FWHM, ``MIN_COMMON_FWHM``) and put on the square-root scale."""
    grid, net = on_grid(pattern)
    w = peak_fwhm(net)
    common = max(w, MIN_COMMON_FWHM)
    extra = math.sqrt(max(common ** 2 - w ** 2, 0.0))
    profile = np.convolve(net, _gaussian_kernel(extra), mode="same") if extra > GRID_STEP else net
    profile = np.sqrt(profile / max(profile.max(), 1e-300))  # square-root scale: see the module docstring
    return Prepared(pattern, grid, profile, common, w)


def sticks(structure: Structure, wavelength: float, two_theta_range: tuple[float, float],
           margin: float = SCALE_RANGE) -> tuple[np.ndarray, np.ndarray]:
    """pymatgen's powder pattern of ``structure`` (peak 2θ, intensity scaled to 100) over the range that any
    lattice scale within ±``margin`` can move into ``two_theta_range`` (empty arrays when no reflection falls
    there, e.g. a degenerate cell)."""
    from pymatgen.analysis.diffraction.xrd import XRDCalculator

    lo, hi = two_theta_range
    s_lo = (1 - margin) * math.sin(math.radians(lo / 2))
    s_hi = min(1.0, (1 + margin) * math.sin(math.radians(hi / 2)))
    rng = (max(0.01, 2 * math.degrees(math.asin(s_lo))), min(179.99, 2 * math.degrees(math.asin(s_hi))))
    try:
        pat = XRDCalculator(wavelength=wavelength).get_pattern(structure, scaled=True, two_theta_range=rng)
    except ValueError as exc:
        if "not enough values to unpack" in str(exc):  # pymatgen's way of saying: no reflection in the range
            return np.zeros(0), np.zeros(0)
        raise DAOError(f"cannot simulate the XRD pattern of {structure.composition.reduced_formula}: {exc}") from None
    except Exception as exc:  # pymatgen raises KeyError etc. for species it has no scattering data for
        raise DAOError(f"cannot simulate the XRD pattern of {structure.composition.reduced_formula}: {exc}") from None
    return np.asarray(pat.x, dtype=float), np.asarray(pat.y, dtype=float)


def stretch(two_theta: np.ndarray, scale: float) -> np.ndarray:
    """Peak positions of the same crystal with every lattice length multiplied by ``scale`` (Bragg's law)."""
    s = np.sin(np.radians(two_theta / 2)) / scale
    out = np.full_like(two_theta, np.nan)
    ok = s < 1
    out[ok] = 2 * np.degrees(np.arcsin(s[ok]))
    return out


def render(grid: np.ndarray, positions: np.ndarray, heights: np.ndarray, fwhm: float) -> np.ndarray:
    """Sticks drawn as Gaussians of ``fwhm`` on the uniform ``grid`` (each split linearly between its two bins)."""
    step = grid[1] - grid[0]
    u = (positions - grid[0]) / step
    ok = np.isfinite(u) & (u >= 0) & (u <= len(grid) - 1)
    u, h = u[ok], heights[ok]
    i = np.floor(u).astype(int)
    frac = u - i
    hist = np.bincount(i, h * (1 - frac), minlength=len(grid) + 1)
    hist += np.bincount(i + 1, h * frac, minlength=len(grid) + 1)
    return np.convolve(hist[:len(grid)], _gaussian_kernel(fwhm, step), mode="same")


def similarity(f: np.ndarray, g: np.ndarray, window: np.ndarray | None = None) -> float:
    """Weighted cross-correlation <f, T g> / √(<f, T f><g, T g>) with T the triangular window (0 when a
    profile is empty)."""
    t = _triangle() if window is None else window
    fg = float(f @ np.convolve(g, t, mode="same"))
    ff = float(f @ np.convolve(f, t, mode="same"))
    gg = float(g @ np.convolve(g, t, mode="same"))
    return fg / math.sqrt(ff * gg) if ff > 0 and gg > 0 else 0.0


def score_structure(prep: Prepared, structure: Structure, name: str = "",
                    threshold: float = MATCH_THRESHOLD) -> XRDMatch:
    """The best similarity of ``structure``'s simulated pattern to the prepared measurement over lattice
    scale factors 1 ± ``SCALE_RANGE``."""
    x, y = sticks(structure, prep.pattern.wavelength, prep.pattern.range)
    window = _triangle()
    best, best_scale = 0.0, 1.0
    for scale in np.arange(1 - SCALE_RANGE, 1 + SCALE_RANGE + 1e-9, SCALE_STEP):
        sim = render(prep.grid, stretch(x, scale), y, prep.fwhm)
        s = similarity(prep.profile, np.sqrt(np.maximum(sim, 0.0)), window)
        if s > best:
            best, best_scale = s, float(scale)
    return XRDMatch(name or structure.composition.reduced_formula, structure.composition.reduced_formula,
                    round(best, 4), round(best_scale, 4), best >= threshold)


def compare(pattern: Pattern, structures: Sequence[tuple[str, Structure]],
            threshold: float = MATCH_THRESHOLD) -> list[XRDMatch]:
    """Every named structure scored against ``pattern``, best first (ties keep input order)."""
    return sorted(score_all(prepare(pattern), structures, threshold), key=lambda m: -m.score)


def score_all(prep: Prepared, structures: Sequence[tuple[str, Structure]],
              threshold: float = MATCH_THRESHOLD) -> list[XRDMatch]:
    """Every named structure scored against a prepared pattern, in input order."""
    if not structures:
        raise DAOError("no structures to compare with the pattern")
    return [score_structure(prep, s, name, threshold) for name, s in structures]


def rerank_by_pattern(structures: Sequence[Structure], pattern: Pattern,
                      energies: Sequence[float | None] | None = None,
                      threshold: float = MATCH_THRESHOLD) -> tuple[list[int], list[float]]:
    """Order candidates (given best first by energy) by agreement with a measured pattern; returns the new
    order (indices into ``structures``) and every structure's score (input order).

    Matching candidates (score ≥ ``threshold``) come first, by score − ``ENERGY_WEIGHT``·(E − E_min) where
    judge energies exist (so 0.05 eV/atom above the lowest weighs as 0.05 of score), else by score; the
    others follow in their given (energy) order: the measurement decides what is consistent, the energy
    breaks near-ties among what is."""
    if not structures:
        return [], []
    prep = prepare(pattern)
    scores = [m.score for m in score_all(prep, [("", s) for s in structures], threshold)]
    known = [e for e in (energies or []) if e is not None and math.isfinite(e)]
    e_min = min(known) if known else 0.0

    def key(i: int) -> float:
        e = energies[i] if energies is not None else None
        penalty = ENERGY_WEIGHT * (e - e_min) if e is not None and math.isfinite(e) else 0.0
        return scores[i] - penalty

    matched = sorted((i for i, s in enumerate(scores) if s >= threshold), key=lambda i: (-key(i), i))
    rest = [i for i, s in enumerate(scores) if s < threshold]
    return matched + rest, scores


def rerank_ranking(ranking: Any, pattern: Pattern, threshold: float = MATCH_THRESHOLD) -> dict[str, Any]:
    """Re-order a :class:`dao.ranking.Ranking` in place by :func:`rerank_by_pattern` (each item's ``flags``
    gain ``xrd_score``, ranks are renumbered); returns the ``xrd`` entry of the prediction's summary.json."""
    items = list(ranking.ranked)
    order, scores = rerank_by_pattern([it.structure for it in items], pattern,
                                      [it.energy_per_atom for it in items], threshold)
    ranking.ranked = [items[i] for i in order]
    for k, i in enumerate(order, 1):
        items[i].rank = k
        items[i].flags["xrd_score"] = scores[i]
    n_match = sum(s >= threshold for s in scores)
    verdict = (f"{n_match} of {len(scores)} candidates match the pattern" if n_match else
               f"no candidate matches the pattern (best score {max(scores, default=0.0):.3f} < {threshold})")
    return {"pattern": pattern.source, "wavelength": pattern.wavelength, "threshold": threshold, "verdict": verdict,
            "rule": "matching candidates (score >= threshold) first, by score - ENERGY_WEIGHT * (E - E_min); "
                    "the rest in energy order", "energy_weight": ENERGY_WEIGHT}
