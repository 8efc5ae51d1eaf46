"""The per-sample table every metric reads: one record per (reference row, sample) slot within the first k,
one record per reference row, and the polymorph groups with the sample slots that match each polymorph.

Records are plain dicts (they are written to ``per_structure.csv`` and returned in
:class:`dao.evaluate.EvaluationResult`); their keys are documented on :func:`sample_record` and
:func:`row_record`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dao.evaluate.canon import MISSING, Canon, Comp
from dao.formula import formula_of as formula

# row-level miss reasons, from least to most progress (a row reports its most advanced sample)
GATED_RANK = {"missing": 0, "unreadable": 1, "invalid": 2, "wrong_composition": 3, "no_match": 4, "match": 5}
UNFILTERED_RANK = {"missing": 0, "unreadable": 1, "wrong_composition": 3, "no_match": 4, "match": 5}


@dataclass
class PolymorphGroup:
    """A reduced composition with several distinct reference structures (``polymorph_rows``: one
    representative row each); ``hits[r]``: the (row, sample) slots of any row of the composition whose
    sample matches representative ``r``, with that sample's validity."""

    comp: Comp
    rows: list[int]
    polymorph_rows: list[int]
    hits: dict[int, list[tuple[int, int, bool]]] = field(default_factory=dict)


@dataclass
class SampleTable:
    """What metrics read. ``rows[i][j]``: the record of sample ``j`` of reference ``i`` (:func:`sample_record`);
    ``records[i]``: the record of reference ``i`` (:func:`row_record`)."""

    k: int
    rows: list[list[dict[str, Any]]]
    records: list[dict[str, Any]]
    ref_valid: list[bool]
    polymorphs: list[PolymorphGroup]
    energy_scored: bool = False  # whether an energy scorer filled ``e_above_hull``

    @property
    def n(self) -> int:
        """Number of reference rows."""
        return len(self.rows)

    @property
    def samples(self) -> list[dict[str, Any]]:
        """Every sample record, row by row."""
        return [st for row in self.rows for st in row]


def sample_record(i: int, j: int, slot: Any, result: dict[str, Any] | None, ref: Canon) -> dict[str, Any]:
    """Record of sample ``j`` of reference ``i``: ``valid``/``comp_valid``/``struct_valid``, ``rms`` (with
    its own reference, validity ignored), ``outcome`` (match, invalid, wrong_composition, no_match,
    unreadable, missing), ``outcome_unfiltered`` (the same without invalid), ``detail`` and, when
    readable, ``formula``. ``result`` is the ``pair`` task's result for a readable slot."""
    st: dict[str, Any] = {"ref_index": i, "sample": j, "valid": False, "comp_valid": False,
                          "struct_valid": False, "rms": None, "detail": ""}
    if slot is MISSING:
        st.update(outcome="missing", outcome_unfiltered="missing")
        return st
    if not isinstance(slot, Canon):
        st.update(outcome="unreadable", outcome_unfiltered="unreadable", detail=slot[1])
        return st
    r = result
    assert r is not None
    st.update(valid=r["valid"], comp_valid=r["comp_valid"], struct_valid=r["struct_valid"], rms=r["rms"],
              formula=formula(slot.comp))
    if r["rms"] is not None:
        unf = "match"
    elif not r["comp_match"]:
        unf = "wrong_composition"
        st["detail"] = f"predicted {formula(slot.comp)}, reference {formula(ref.comp)}"
    else:
        unf = "no_match"
        if r.get("error"):
            st["detail"] = r["error"]
    st["outcome_unfiltered"] = unf
    st["outcome"] = unf if r["valid"] else "invalid"
    if not r["valid"]:
        st["detail"] = "; ".join(x for x in (f"invalid: {r['reason']}", st["detail"]) if x)
    return st


def _best(vals: list[float | None]) -> tuple[float | None, int | None, int | None]:
    """(minimum, its sample, 1 + the first matching sample) over the matching samples' RMS values."""
    m = [(v, j) for j, v in enumerate(vals) if v is not None]
    if not m:
        return None, None, None
    v, j = min(m)
    return v, j, m[0][1] + 1


def row_record(i: int, material_id: str, ref: Canon, ref_valid: bool, states: list[dict[str, Any]],
               energy_scored: bool) -> dict[str, Any]:
    """Record of reference ``i`` from its sample records (one ``per_structure.csv`` row): match, RMS, best
    sample and first matching k, gated and unfiltered, the miss reason of its most advanced sample, and
    ``min_e_above_hull`` when energies were scored."""
    rms_g, best_g, first_g = _best([st["rms"] if st["outcome"] == "match" else None for st in states])
    rms_u, best_u, first_u = _best([st["rms"] if st["outcome_unfiltered"] == "match" else None for st in states])
    reason_g = max((st["outcome"] for st in states), key=lambda o: GATED_RANK[o])
    reason_u = max((st["outcome_unfiltered"] for st in states), key=lambda o: UNFILTERED_RANK[o])
    rec: dict[str, Any] = {
        "ref_index": i,
        "material_id": material_id,
        "formula": formula(ref.comp),
        "n_atoms": len(ref.numbers),
        "ref_valid": ref_valid,
        "n_samples": sum(1 for st in states if st["outcome"] != "missing"),
        "n_valid": sum(1 for st in states if st["valid"]),
        "matched": rms_g is not None,
        "rms": rms_g,
        "best_sample": best_g,
        "first_match_k": first_g,
        "reason": "" if rms_g is not None else reason_g,
        "matched_unfiltered": rms_u is not None,
        "rms_unfiltered": rms_u,
        "best_sample_unfiltered": best_u,
        "first_match_k_unfiltered": first_u,
        "reason_unfiltered": "" if rms_u is not None else reason_u,
        "sample_outcomes": " ".join(f"{st['sample']}:{st['outcome']}" for st in states),
        "detail": "; ".join(f"s{st['sample']}: {st['detail']}" for st in states if st["detail"]),
    }
    if energy_scored:
        es = [st.get("e_above_hull") for st in states if st.get("e_above_hull") is not None]
        rec["min_e_above_hull"] = min(es) if es else None
    return rec
