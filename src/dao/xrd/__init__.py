"""Matching structures to a measured powder X-ray pattern (docs/xrd.md).

:mod:`dao.xrd.pattern` reads and checks the measurement, :mod:`dao.xrd.score` scores structures against it
(and re-ranks a prediction's candidates), :mod:`dao.xrd.output` writes the ``dao xrd`` results.
"""
from __future__ import annotations

from dao.xrd.pattern import DEFAULT_WAVELENGTH, Pattern, check_pattern, read_pattern, wavelength_of
from dao.xrd.score import MATCH_THRESHOLD, XRDMatch, compare, rerank_by_pattern

__all__ = ["DEFAULT_WAVELENGTH", "MATCH_THRESHOLD", "Pattern", "XRDMatch", "check_pattern", "compare",
           "read_pattern", "rerank_by_pattern", "wavelength_of"]
