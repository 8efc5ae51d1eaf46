"""The summary's metrics, one function each over a :class:`~dao.evaluate.table.SampleTable`, and the
registry :func:`evaluate` fills the summary from.

Adding a metric is one place: a function here (or anywhere that is imported before :func:`evaluate` runs)
decorated with ``@metric("name")``, taking the table and returning the summary keys it adds::

    @metric("n_perfect")
    def n_perfect(table: SampleTable) -> dict[str, Any]:
        return {"n_perfect": sum(r["rms"] is not None and r["rms"] < 1e-6 for r in table.records)}

Metrics run in registration order and may not write a key another metric wrote.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from dao.constants import STABILITY_THRESHOLD
from dao.evaluate.canon import POLYMORPH_RANGE
from dao.formula import formula_of
from dao.evaluate.table import GATED_RANK, UNFILTERED_RANK, SampleTable

Metric = Callable[[SampleTable], dict[str, Any]]
METRICS: dict[str, Metric] = {}


def metric(name: str) -> Callable[[Metric], Metric]:
    """Register ``fn(table) -> {summary key: value}`` under ``name`` (names are unique)."""
    def register(fn: Metric) -> Metric:
        if name in METRICS:
            raise ValueError(f"a metric named {name!r} is already registered")
        METRICS[name] = fn
        return fn
    return register


def compute_metrics(table: SampleTable) -> dict[str, Any]:
    """Every registered metric's summary keys, in registration order."""
    summary: dict[str, Any] = {}
    for name, fn in METRICS.items():
        values = fn(table)
        clash = sorted(summary.keys() & values.keys())
        if clash:
            raise ValueError(f"metric {name!r} writes summary keys another metric wrote: {', '.join(clash)}")
        summary.update(values)
    return summary


def seq_mean(values: list[float]) -> float | None:
    """Mean with left-to-right summation (what numpy does on DiffCSP's object arrays)."""
    if not values:
        return None
    s = values[0]
    for v in values[1:]:
        s = s + v
    return s / len(values)


def _rate_at(table: SampleTable, outcome: str, k: int) -> tuple[float, float | None]:
    """(match rate, RMSE) using the first ``k`` samples; ``outcome``: "outcome" (valid-gated) or
    "outcome_unfiltered"."""
    vals = []
    for row in table.rows:
        ms = [st["rms"] for st in row[:k] if st[outcome] == "match"]
        if ms:
            vals.append(min(ms))
    return (len(vals) / table.n if table.n else 0.0), seq_mean(vals)


@metric("match_rate")
def match_rate(table: SampleTable) -> dict[str, Any]:
    """Match rate and RMSE with all k samples, valid-gated and unfiltered, and the matched row counts."""
    rate_g, rmse_g = _rate_at(table, "outcome", table.k)
    rate_u, rmse_u = _rate_at(table, "outcome_unfiltered", table.k)
    return {"match_rate": rate_g, "rmse": rmse_g, "match_rate_unfiltered": rate_u, "rmse_unfiltered": rmse_u,
            "n_matched": sum(r["matched"] for r in table.records),
            "n_matched_unfiltered": sum(r["matched_unfiltered"] for r in table.records)}


@metric("diffcsp_k1")
def diffcsp_k1(table: SampleTable) -> dict[str, Any]:
    """DiffCSP RecEval (single sample): sample 0 only, prediction and reference must both be valid."""
    k1 = [row[0]["rms"] for row, ref_ok in zip(table.rows, table.ref_valid)
          if row[0]["outcome"] == "match" and ref_ok]
    return {"match_rate_diffcsp_k1": (len(k1) / table.n) if table.n else 0.0, "rmse_diffcsp_k1": seq_mean(k1)}


@metric("match_rate_vs_k")
def match_rate_vs_k(table: SampleTable) -> dict[str, Any]:
    """Match rate and RMSE using the first 1, 2, ..., k samples, valid-gated and unfiltered."""
    out: dict[str, Any] = {}
    for outcome, suffix in (("outcome", ""), ("outcome_unfiltered", "_unfiltered")):
        curve = [_rate_at(table, outcome, kk) for kk in range(1, table.k + 1)]
        out[f"match_rate{suffix}_vs_k"] = [rate for rate, _ in curve]
        out[f"rmse{suffix}_vs_k"] = [rmse for _, rmse in curve]
    return {key: out[key] for key in ("match_rate_vs_k", "rmse_vs_k", "match_rate_unfiltered_vs_k",
                                      "rmse_unfiltered_vs_k")}


@metric("miss_reasons")
def miss_reasons(table: SampleTable) -> dict[str, Any]:
    """Unmatched rows by reason (the row's most advanced sample), valid-gated and unfiltered."""
    recs = table.records
    return {"miss_reasons": {o: sum(1 for r in recs if r["reason"] == o) for o in GATED_RANK if o != "match"},
            "miss_reasons_unfiltered": {o: sum(1 for r in recs if r["reason_unfiltered"] == o)
                                        for o in UNFILTERED_RANK if o != "match"}}


@metric("validity")
def validity_rates(table: SampleTable) -> dict[str, Any]:
    """Validity rates of the present samples (composition, structure, both) and of the references."""
    samples = table.samples
    n_present = sum(1 for st in samples if st["outcome"] != "missing")

    def rate(key: str) -> float | None:
        return (sum(st[key] for st in samples) / n_present) if n_present else None

    return {"validity": {
        "n_samples_present": n_present,
        "n_samples_missing": len(samples) - n_present,
        "n_unreadable": sum(1 for st in samples if st["outcome"] == "unreadable"),
        "valid_rate": rate("valid"),
        "comp_valid_rate": rate("comp_valid"),
        "struct_valid_rate": rate("struct_valid"),
        "reference_valid_rate": (sum(table.ref_valid) / table.n) if table.n else None,
    }}


@metric("polymorph_recovery")
def polymorph_recovery(table: SampleTable) -> dict[str, Any]:
    """Share of polymorph compositions whose every distinct reference structure is matched by some sample
    of any row of that composition (samples pooled), valid-gated and unfiltered."""
    rows = []
    n_rec_g = n_rec_u = 0
    for g in table.polymorphs:
        ok_g = all(any(valid for _, _, valid in g.hits.get(r, [])) for r in g.polymorph_rows)
        ok_u = all(bool(g.hits.get(r)) for r in g.polymorph_rows)
        n_rec_g += ok_g
        n_rec_u += ok_u
        rows.append({"formula": formula_of(g.comp), "n_rows": len(g.rows), "n_polymorphs": len(g.polymorph_rows),
                     "polymorph_rows": g.polymorph_rows, "recovered": ok_g, "recovered_unfiltered": ok_u})
    n = len(table.polymorphs)
    return {"polymorph_recovery": {
        "n_compositions": n,
        "n_recovered": n_rec_g,
        "rate": (n_rec_g / n) if n else None,
        "n_recovered_unfiltered": n_rec_u,
        "rate_unfiltered": (n_rec_u / n) if n else None,
        "compositions": rows,
    }}


@metric("stability")
def stability_rate(table: SampleTable) -> dict[str, Any]:
    """With an energy scorer: share of present samples with E_hull ≤ STABILITY_THRESHOLD (unscored count as
    unstable), counts and mean E_hull of the scored ones. Nothing without a scorer."""
    if not table.energy_scored:
        return {}
    samples = table.samples
    e_hull = [st["e_above_hull"] for st in samples if st.get("e_above_hull") is not None]
    n_present = sum(1 for st in samples if st["outcome"] != "missing")
    n_stable = sum(1 for e in e_hull if e <= STABILITY_THRESHOLD)
    stability = {
        "stability_rate": (n_stable / n_present) if n_present else None,
        "threshold_ev_per_atom": STABILITY_THRESHOLD,
        "n_stable": n_stable, "n_scored": len(e_hull), "n_generated": n_present,
        "mean_e_above_hull": seq_mean(e_hull),
    }
    return {"stability": stability, "stability_rate": stability["stability_rate"]}


def _version(*packages: str) -> str | None:
    for pkg in packages:
        try:
            return version(pkg)
        except PackageNotFoundError:
            continue
    return None


def protocol() -> dict[str, Any]:
    """The summary's ``protocol`` entry: what the metrics mean, and the versions of pymatgen and SMACT."""
    lo, hi = POLYMORPH_RANGE
    return {
        "matcher": "pymatgen StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(pred, ref)[0]",
        "match_rate": "matched reference rows / number of reference rows; a row matches if any of its "
                      "first k samples matches; RMSE = mean over matched rows of the minimum RMS over "
                      "matching samples",
        "gating": "match_rate/rmse count only valid predictions (DiffCSP multi-sample RecEvalBatch); "
                  "*_unfiltered ignore validity; match_rate_diffcsp_k1 uses sample 0 and requires the "
                  "prediction and the reference to be valid (DiffCSP single-sample RecEval)",
        "validity": "SMACT charge neutrality + Pauling test with the SMACT-2014 oxidation states, "
                    "single-element and all-metal compositions pass; min distance >= 0.5 A; "
                    "volume >= 0.1 A^3; finite lattice",
        "polymorph_recovery": f"reduced compositions with {lo}-{hi} distinct reference structures "
                              "(greedy StructureMatcher grouping); recovered if every one is matched by "
                              "a sample of any reference row of that composition",
        "versions": {"pymatgen": _version("pymatgen", "pymatgen-core"), "smact": _version("SMACT", "smact")},
    }
