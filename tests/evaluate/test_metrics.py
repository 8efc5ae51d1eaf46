"""A new evaluation metric is one place: a function registered with ``@metric`` appears in the summary."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from pymatgen.core import Lattice, Structure

from dao.evaluate import METRICS, MISSING, SampleTable, evaluate, metric

warnings.filterwarnings("ignore")


def nacl() -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def cscl() -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])


@pytest.fixture
def registered():
    """Names registered by a test are removed afterwards, so the registry stays as the package defines it."""
    before = dict(METRICS)
    yield
    for name in set(METRICS) - set(before):
        del METRICS[name]


def test_extra_metric_through_the_registry_appears_in_summary(registered):
    @metric("exact_self_matches")
    def exact_self_matches(table: SampleTable) -> dict[str, Any]:
        n = sum(1 for st in table.samples if st["rms"] is not None and st["rms"] < 1e-8)
        return {"n_exact_matches": n, "exact_match_share": n / len(table.samples)}

    refs = [nacl(), cscl()]
    res = evaluate({0: [nacl(), MISSING], 1: [nacl(), cscl()]}, refs, progress=False)
    assert res.summary["n_exact_matches"] == 2  # row 0 sample 0 and row 1 sample 1
    assert res.summary["exact_match_share"] == 0.5
    # the built-in metrics are untouched
    assert res.summary["match_rate"] == 1.0 and res.summary["match_rate_vs_k"] == [0.5, 1.0]

    del METRICS["exact_self_matches"]
    assert "n_exact_matches" not in evaluate({0: [nacl()]}, [nacl()], progress=False).summary


def test_registry_rejects_duplicate_names_and_keys(registered):
    with pytest.raises(ValueError, match="already registered"):
        metric("match_rate")(lambda table: {})

    @metric("shadows_rmse")
    def shadows_rmse(table: SampleTable) -> dict[str, Any]:
        return {"rmse": 0.0}

    with pytest.raises(ValueError, match="rmse"):
        evaluate({0: [nacl()]}, [nacl()], progress=False)
