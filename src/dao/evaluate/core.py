"""``evaluate()``: orchestration of the CSP protocol (see the package docstring).

canonical structures (:mod:`.canon`) → matcher tasks through the runner (:mod:`.runner`) → per-sample and
per-row records (:mod:`.table`) → optional energy scoring → every registered metric (:mod:`.metrics`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from pymatgen.core import Structure

from dao.evaluate.canon import (
    MISSING,
    POLYMORPH_RANGE,
    Canon,
    Comp,
    UnusableStructure,
    canonical_slot,
    canonicalize,
    to_structure,
)
from dao.evaluate.metrics import compute_metrics, protocol
from dao.evaluate.runner import ResultCache, Runner, Task, task_key
from dao.evaluate.table import PolymorphGroup, SampleTable, row_record, sample_record


@runtime_checkable
class EnergyScorer(Protocol):
    """Slot for a stability oracle (DAO-P, CHGNet, ...): energy above the convex hull in eV/atom.

    ``e_above_hull`` receives every readable generated structure at once (batch as you like) and returns one
    value per structure, ``None`` where it cannot score one.
    """

    def e_above_hull(self, structures: Sequence[Structure]) -> list[float | None]: ...


@dataclass
class EvaluationResult:
    """``summary``: the JSON summary; ``records``: one dict per reference row (``per_structure.csv``);
    ``samples``: one dict per (reference row, sample) slot within the first k."""

    summary: dict[str, Any]
    records: list[dict[str, Any]]
    samples: list[dict[str, Any]] = field(default_factory=list)
    # when the energy scorer relaxes (it exposes ``relaxed``): the relaxed samples, in the ``predictions``
    # format of :func:`evaluate` (None where the sample was unreadable or its relaxation failed)
    relaxed_predictions: dict[int, list[Any]] | None = None


@dataclass
class _Inputs:
    """Canonical references and prediction slots (Canon | ("unreadable", why) | MISSING), k per row."""

    refs: list[Canon]
    ids: list[str]
    slots: list[list[Any]]
    k: int
    unassigned: list[int]


def _prepare(predictions: dict[int, list[Any]], references: list[Structure], k: int | None,
             reference_ids: Sequence[str] | None) -> _Inputs:
    n = len(references)
    ids = [str(i) for i in range(n)] if reference_ids is None else list(reference_ids)
    if len(ids) != n:
        raise ValueError("reference_ids must have one id per reference")
    refs: list[Canon] = []
    for i, s in enumerate(references):
        try:
            refs.append(canonicalize(s))
        except UnusableStructure as exc:
            raise ValueError(f"reference {i} ({ids[i]}) cannot be scored: {exc}") from None
        if not refs[-1].finite:
            raise ValueError(f"reference {i} ({ids[i]}) has a non-finite lattice or coordinates")
    by_row: dict[int, list[Any]] = {}
    for key, v in predictions.items():
        by_row.setdefault(int(key), list(v))
    lens = [len(v) for i, v in by_row.items() if 0 <= i < n]
    kk = int(k) if k is not None else max([1, *lens])
    if kk < 1:
        raise ValueError("k must be >= 1")
    slots = []
    for i in range(n):
        row = by_row.get(i, [])[:kk]
        slots.append([canonical_slot(s) for s in row + [MISSING] * (kk - len(row))])
    return _Inputs(refs, ids, slots, kk, sorted(i for i in by_row if not (0 <= i < n)))


def _composition_groups(refs: list[Canon]) -> dict[Comp, list[int]]:
    """Reference rows by reduced composition, for compositions with enough rows to hold polymorphs."""
    groups: dict[Comp, list[int]] = {}
    for i, c in enumerate(refs):
        groups.setdefault(c.comp, []).append(i)
    return {comp: rows for comp, rows in groups.items() if len(rows) >= POLYMORPH_RANGE[0]}


def _own_tasks(inp: _Inputs, groups: dict[Comp, list[int]]) -> dict[str, list[Task]]:
    """Phase 1: reference validity, every readable sample against its own reference, polymorph grouping."""
    hi = POLYMORPH_RANGE[1]
    return {
        "ref": [("ref", task_key("ref", c.key), (c,)) for c in inp.refs],
        "pair": [("pair", task_key("pair", s.key, inp.refs[i].key), (s, inp.refs[i]))
                 for i, row in enumerate(inp.slots) for s in row if isinstance(s, Canon)],
        "dedupe": [("dedupe", task_key("dedupe", str(hi), *(inp.refs[i].key for i in rows)),
                    ([inp.refs[i] for i in rows], hi)) for rows in groups.values()],
    }


def _polymorph_groups(inp: _Inputs, groups: dict[Comp, list[int]], dedupe_tasks: list[Task],
                      results: dict[str, dict[str, Any]]) -> list[PolymorphGroup]:
    """Compositions whose grouping found a number of distinct structures within POLYMORPH_RANGE."""
    lo, hi = POLYMORPH_RANGE
    out = []
    for (comp, rows), task in zip(groups.items(), dedupe_tasks):
        res = results[task[1]]
        reps = [rows[r] for r in res["reps"]]
        if res["complete"] and lo <= len(reps) <= hi:
            out.append(PolymorphGroup(comp, rows, reps))
    return out


def _cross_tasks(inp: _Inputs, polymorphs: list[PolymorphGroup]) -> dict[tuple[int, int, int], Task]:
    """Phase 2: pooled samples of a composition against every distinct polymorph of it, by (row, sample, rep)."""
    tasks = {}
    for g in polymorphs:
        for r in g.polymorph_rows:
            ref = inp.refs[r]
            for i in g.rows:
                if i == r:
                    continue
                for j, s in enumerate(inp.slots[i]):
                    if isinstance(s, Canon) and s.comp == ref.comp:
                        tasks[(i, j, r)] = ("match", task_key("match", s.key, ref.key), (s, ref))
    return tasks


def _fill_hits(inp: _Inputs, rows: list[list[dict[str, Any]]], polymorphs: list[PolymorphGroup],
               cross: dict[tuple[int, int, int], Task], results: dict[str, dict[str, Any]]) -> None:
    """``hits`` of every polymorph group: a sample matches its own row's structure when its pair matched."""
    for g in polymorphs:
        for r in g.polymorph_rows:
            hits = g.hits.setdefault(r, [])
            for i in g.rows:
                for j, s in enumerate(inp.slots[i]):
                    if not isinstance(s, Canon):
                        continue
                    if i == r:
                        hit = rows[i][j]["outcome_unfiltered"] == "match"
                    else:
                        hit = (i, j, r) in cross and results[cross[(i, j, r)][1]]["rms"] is not None
                    if hit:
                        hits.append((i, j, rows[i][j]["valid"]))


def _score_energy(scorer: EnergyScorer, inp: _Inputs, rows: list[list[dict[str, Any]]]
                  ) -> dict[int, list[Any]] | None:
    """Put ``e_above_hull`` into the readable samples' records; the relaxed predictions when the scorer
    exposes ``relaxed`` (one structure per scored one), else None."""
    idx = [(i, j) for i, row in enumerate(inp.slots) for j, s in enumerate(row) if isinstance(s, Canon)]
    structs = [to_structure(inp.slots[i][j]) for i, j in idx]
    energies = list(scorer.e_above_hull(structs)) if structs else []
    if len(energies) != len(structs):
        raise ValueError(f"energy scorer returned {len(energies)} values for {len(structs)} structures")
    for (i, j), e in zip(idx, energies):
        rows[i][j]["e_above_hull"] = None if e is None or not math.isfinite(float(e)) else float(e)
    relaxed = getattr(scorer, "relaxed", None)
    if relaxed is None or len(relaxed) != len(structs):
        return None
    out = {i: [MISSING if s is MISSING else None for s in row] for i, row in enumerate(inp.slots)}
    for (i, j), s in zip(idx, relaxed):
        out[i][j] = s
    return out


def evaluate(
    predictions: dict[int, list[Structure | None]],
    references: list[Structure],
    k: int | None = None,
    workers: int = 1,
    cache_path: Path | None = None,
    energy_scorer: EnergyScorer | None = None,
    progress: bool = True,
    *,
    reference_ids: Sequence[str] | None = None,
) -> EvaluationResult:
    """Score predictions against references with the CSP protocol (see the package docstring).

    ``predictions[i]`` lists the samples generated for reference row ``i`` (list position = sample index);
    ``None`` marks an unreadable prediction and ``MISSING`` an absent one; rows absent from the dict are
    missing. ``k`` defaults to the longest sample list. Keys outside ``range(len(references))`` are ignored
    (counted in the summary). The summary holds every metric registered in :mod:`dao.evaluate.metrics`.
    """
    t0 = time.perf_counter()
    inp = _prepare(predictions, references, k, reference_ids)
    groups = _composition_groups(inp.refs)
    with Runner(workers, ResultCache(cache_path), progress) as runner:
        own = _own_tasks(inp, groups)
        runner.run(own["ref"] + own["pair"] + own["dedupe"], "evaluate")
        polymorphs = _polymorph_groups(inp, groups, own["dedupe"], runner.results)
        cross = _cross_tasks(inp, polymorphs)
        runner.run(cross.values(), "polymorphs")
    results = runner.results
    pair = iter(results[t[1]] for t in own["pair"])
    rows = [[sample_record(i, j, s, next(pair) if isinstance(s, Canon) else None, inp.refs[i])
             for j, s in enumerate(row)] for i, row in enumerate(inp.slots)]
    relaxed = _score_energy(energy_scorer, inp, rows) if energy_scorer is not None else None
    _fill_hits(inp, rows, polymorphs, cross, results)
    ref_valid = [results[t[1]]["valid"] for t in own["ref"]]
    records = [row_record(i, inp.ids[i], inp.refs[i], ref_valid[i], rows[i], energy_scorer is not None)
               for i in range(len(inp.refs))]
    table = SampleTable(inp.k, rows, records, ref_valid, polymorphs, energy_scored=energy_scorer is not None)
    summary: dict[str, Any] = {"n_references": len(inp.refs), "k": inp.k, **compute_metrics(table),
                               "n_unassigned_prediction_keys": len(inp.unassigned), "protocol": protocol(),
                               "timing": {"seconds": time.perf_counter() - t0, "tasks_computed": runner.computed,
                                          "tasks_from_cache": runner.reused, "workers": runner.workers}}
    return EvaluationResult(summary=summary, records=records, samples=table.samples, relaxed_predictions=relaxed)
