"""Measured powder patterns: reading and checking a two-column 2θ/intensity file, the wavelength, and the
preprocessing every comparison uses (uniform grid, background, peak width estimate). See docs/xrd.md."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dao.errors import DAOError

#: the default X-ray wavelength: Cu Kα (weighted Kα1/Kα2 mean, Å)
DEFAULT_WAVELENGTH = "CuKa"
#: a measured pattern needs at least this many points
MIN_POINTS = 50
#: the uniform 2θ grid every comparison runs on (degrees)
GRID_STEP = 0.02
#: width of the background filter (degrees): wider than any Bragg peak's base, narrower than the background's bends
BACKGROUND_WINDOW = 1.5
#: a pattern "has peaks" when its background-subtracted maximum exceeds this many noise standard deviations
MIN_PEAK_SNR = 8.0
#: width (degrees) of the moving average applied before the background is found (noise would pull SNIP down)
SMOOTH_WIDTH = 0.1
#: smoothed-noise standard deviations removed with the background (the opening follows the noise's lower envelope)
NOISE_FLOOR = 2.0
_SPLIT = re.compile(r"[,;\s]+")


@dataclass(frozen=True)
class Pattern:
    """A measured powder pattern: strictly increasing ``two_theta`` (degrees), non-negative ``intensity``,
    the X-ray ``wavelength`` in Å and where it came from (``source``)."""

    two_theta: np.ndarray
    intensity: np.ndarray
    wavelength: float
    source: str = "pattern"

    @property
    def range(self) -> tuple[float, float]:
        return float(self.two_theta[0]), float(self.two_theta[-1])


def wavelength_of(value: str | float) -> float:
    """A wavelength in Å from a number or an anode line name (CuKa, CuKa1, MoKa, CoKa, ... as pymatgen's
    ``WAVELENGTHS``; case-insensitive). Raises :class:`DAOError` for ≤ 0, non-finite or unknown names."""
    from pymatgen.analysis.diffraction.xrd import WAVELENGTHS

    if isinstance(value, str):
        names = {k.lower(): v for k, v in WAVELENGTHS.items()}
        if value.strip().lower() in names:
            return float(names[value.strip().lower()])
        try:
            value = float(value)
        except ValueError:
            raise DAOError(f"unknown wavelength {value!r}: give Å or one of {', '.join(WAVELENGTHS)}") from None
    if not math.isfinite(value) or value <= 0:
        raise DAOError(f"wavelength must be a positive number of Å, got {value}")
    return float(value)


def _rows(path: Path) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DAOError(f"pattern file not found: {path}") from None
    except IsADirectoryError:
        raise DAOError(f"pattern file {path} is a folder, not a 2θ/intensity text file") from None
    except UnicodeDecodeError:
        raise DAOError(f"pattern file {path} is not a text file (expected two columns 2θ, intensity)") from None
    except OSError as exc:
        raise DAOError(f"cannot read pattern file {path}: {exc.strerror or exc}") from None
    rows, started = [], False
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line[0] in "#!;%'\"":
            continue
        fields = [f for f in _SPLIT.split(line) if f]
        try:
            values = [float(f) for f in fields[:2]]
        except ValueError:
            if started:
                raise DAOError(f"pattern file {path}, line {lineno}: not two numbers: {line[:60]!r}") from None
            continue  # a header line before the data
        if len(values) < 2:
            raise DAOError(f"pattern file {path}, line {lineno}: expected two columns (2θ, intensity)")
        rows.append(values)
        started = True
    if not rows:
        raise DAOError(f"pattern file {path} holds no 2θ/intensity rows")
    return np.asarray(rows, dtype=float)


def read_pattern(path: str | Path, wavelength: str | float = DEFAULT_WAVELENGTH) -> Pattern:
    """Read a measured pattern from a text file of 2θ (degrees) and intensity columns (``.xy``, ``.csv``,
    ``.xye``: a third column, the error, is ignored; comment lines start with ``#``, a header line is
    skipped). Every problem is a one-line :class:`DAOError` (see :func:`check_pattern`)."""
    path = Path(path)
    lam = wavelength_of(wavelength)
    data = _rows(path)
    return check_pattern(data[:, 0], data[:, 1], lam, str(path))


def check_pattern(two_theta: np.ndarray, intensity: np.ndarray, wavelength: float, source: str = "pattern") -> Pattern:
    """A :class:`Pattern` after checking it: ≥ ``MIN_POINTS`` finite points, 2θ strictly increasing within
    (0°, 180°), no negative intensity, and peaks above the noise (a flat or constant pattern is refused)."""
    x, y = np.asarray(two_theta, dtype=float), np.asarray(intensity, dtype=float)
    lam = wavelength_of(wavelength)
    if len(x) < MIN_POINTS:
        raise DAOError(f"{source}: {len(x)} points; a powder pattern needs at least {MIN_POINTS}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise DAOError(f"{source}: NaN or infinite values (row {int(np.argmin(np.isfinite(x) & np.isfinite(y))) + 1})")
    if not (np.diff(x) > 0).all():
        raise DAOError(f"{source}: 2θ is not strictly increasing (row {int(np.argmin(np.diff(x) > 0)) + 2})")
    if x[0] <= 0 or x[-1] >= 180:
        raise DAOError(f"{source}: 2θ must lie within (0°, 180°), got {x[0]:g}° to {x[-1]:g}°")
    if (y < 0).any():
        raise DAOError(f"{source}: negative intensity {y.min():g} at 2θ = {x[np.argmin(y)]:g}° "
                       "(give raw counts, not a background-subtracted pattern with negative values)")
    pattern = Pattern(x, y, lam, source)
    _, net = on_grid(pattern)
    noise = noise_sigma(y)
    if net.max() <= 0 or net.max() < MIN_PEAK_SNR * noise:
        raise DAOError(f"{source}: no peaks (the pattern is flat: its largest peak above background is "
                       f"{net.max():.3g}, noise {noise:.3g})")
    return pattern


def background(y: np.ndarray, width: int) -> np.ndarray:
    """The background of ``y``: a morphological opening (rolling minimum then rolling maximum over ``width``
    points), which removes every feature narrower than ``width`` (the Bragg peaks) and follows anything
    broader, concave humps included (where the SNIP lower-envelope clipping would cut into them), then a
    moving average over ``width`` to smooth the opening's corners."""
    from scipy.ndimage import grey_opening, uniform_filter1d

    return uniform_filter1d(grey_opening(y, size=width, mode="nearest"), size=width, mode="nearest")


def noise_sigma(y: np.ndarray) -> float:
    """Robust noise standard deviation of a profile from its point-to-point differences (MAD)."""
    d = np.diff(y)
    return float(1.4826 * np.median(np.abs(d - np.median(d))) / math.sqrt(2.0))


def on_grid(pattern: Pattern, step: float = GRID_STEP) -> tuple[np.ndarray, np.ndarray]:
    """The pattern interpolated onto a uniform 2θ grid and its background removed (clipped at 0)."""
    lo, hi = pattern.range
    grid = np.arange(lo, hi + 0.5 * step, step)
    y = np.interp(grid, pattern.two_theta, pattern.intensity)
    smooth = np.convolve(y, _box(SMOOTH_WIDTH, step), mode="same")
    edge = len(_box(SMOOTH_WIDTH, step)) // 2
    smooth[:edge], smooth[len(y) - edge:] = y[:edge], y[len(y) - edge:]
    raw_step = float(np.median(np.diff(pattern.two_theta)))
    floor = NOISE_FLOOR * noise_sigma(pattern.intensity) / math.sqrt(max(1.0, SMOOTH_WIDTH / raw_step))
    net = np.maximum(smooth - background(smooth, max(3, int(round(BACKGROUND_WINDOW / step)))) - floor, 0.0)
    return grid, net


def _box(width: float, step: float) -> np.ndarray:
    n = max(1, int(round(width / step))) | 1
    return np.full(n, 1.0 / n)


def peak_fwhm(net: np.ndarray, step: float = GRID_STEP) -> float:
    """Typical peak FWHM (degrees) of a background-free profile: the autocorrelation of Gaussian peaks of FWHM
    w has FWHM w·√2, so half its central width at half height over √2 (overlapping peaks read a little wider)."""
    f = net - net.mean()
    n = len(f)
    spec = np.fft.rfft(f, 2 * n)
    ac = np.fft.irfft(spec * np.conj(spec))[:n]
    if ac[0] <= 0:
        return step
    below = np.nonzero(ac < 0.5 * ac[0])[0]
    half = below[0] if len(below) else n
    return float(2.0 * half * step / math.sqrt(2.0))
