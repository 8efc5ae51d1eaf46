"""Scoring engine: canonicalisation, exact pre-filter, worker pool, resumable cache, aggregation.

Everything a worker process runs is a top-level function of this module (spawn-safe). The per-pair
computation is DiffCSP's: ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist(pred, ref)``
on structures rebuilt the way DiffCSP's ``Crystal`` rebuilds them (``Lattice.from_parameters`` of the
cell lengths/angles, species by atomic number, fractional coordinates as given).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from pymatgen.core import Composition, Element, Lattice, Structure

from dao.evaluate.validity import reduced_composition, validity_detail

MATCHER_KWARGS: dict[str, float] = {"stol": 0.5, "angle_tol": 10, "ltol": 0.3}
STABILITY_THRESHOLD = 0.08  # eV/atom
POLYMORPH_RANGE = (2, 4)
CACHE_VERSION = "dao-evaluate-1"

# row-level miss reasons, from least to most progress (a row reports its most advanced sample)
_GATED_RANK = {"missing": 0, "unreadable": 1, "invalid": 2, "wrong_composition": 3, "no_match": 4, "match": 5}
_UNF_RANK = {"missing": 0, "unreadable": 1, "wrong_composition": 3, "no_match": 4, "match": 5}


class _Missing:
    """Sentinel for a sample slot with no prediction (e.g. file ``12_3.cif`` absent while ``12_4.cif`` exists)."""

    _instance: _Missing | None = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING = _Missing()


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


# --------------------------------------------------------------------------------------------------
# canonical structures


class UnusableStructure(ValueError):
    """A parsed structure the protocol cannot score (disordered, dummy species, no sites)."""


@dataclass(frozen=True)
class Canon:
    matrix: np.ndarray  # (3, 3) lattice rows, Lattice.from_parameters(a, b, c, alpha, beta, gamma)
    numbers: tuple[int, ...]
    frac: np.ndarray  # (n, 3)
    finite: bool
    comp: tuple[tuple[int, int], ...]  # reduced (Z, count)
    key: str


def canonicalize(structure: Structure) -> Canon:
    """DiffCSP's ``Crystal`` view of a structure: (lengths, angles, atomic numbers, fractional coords)."""
    if not isinstance(structure, Structure):
        raise UnusableStructure(f"not a pymatgen Structure: {type(structure).__name__}")
    if len(structure) == 0:
        raise UnusableStructure("no sites")
    if not structure.is_ordered:
        raise UnusableStructure("disordered (partial occupancies)")
    numbers = tuple(int(site.specie.Z) for site in structure)
    if min(numbers) < 1:
        raise UnusableStructure("dummy species")
    lat = structure.lattice
    frac = np.ascontiguousarray(structure.frac_coords, dtype=np.float64)
    params = np.array(list(lat.abc) + list(lat.angles), dtype=np.float64)
    finite = bool(np.all(np.isfinite(params)) and np.all(np.isfinite(frac)))
    matrix = np.ascontiguousarray(lat.matrix, dtype=np.float64)
    if finite:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = np.ascontiguousarray(Lattice.from_parameters(*params.tolist()).matrix, dtype=np.float64)
        if np.all(np.isfinite(m)):
            matrix = m
        else:
            finite = False
    h = hashlib.sha1()
    h.update(matrix.tobytes())
    h.update(np.asarray(numbers, dtype=np.int64).tobytes())
    h.update(frac.tobytes())
    return Canon(matrix, numbers, frac, finite, reduced_composition(numbers), h.hexdigest()[:24])


def to_structure(c: Canon) -> Structure:
    return Structure(Lattice(c.matrix), list(c.numbers), c.frac, coords_are_cartesian=False)


def _formula(comp: tuple[tuple[int, int], ...]) -> str:
    return Composition({Element.from_Z(z): n for z, n in comp}).reduced_formula


def is_valid(structure: Structure) -> tuple[bool, str]:
    """DiffCSP validity (SMACT charge neutrality with the 2014 oxidation-state set and all-metal pass;
    min interatomic distance ≥ 0.5 Å; volume ≥ 0.1 Å³; finite lattice). Returns (valid, reason); reason is
    '' when valid, else comma-separated codes: charge_neutrality, min_distance, volume, non_finite,
    unusable:<why>."""
    try:
        c = canonicalize(structure)
    except UnusableStructure as exc:
        return False, f"unusable:{exc}"
    v = _validity(c)
    return v["valid"], v["reason"]


# --------------------------------------------------------------------------------------------------
# worker side (top-level, spawn-safe)

_MATCHER = None


def _matcher():
    global _MATCHER
    if _MATCHER is None:
        from pymatgen.analysis.structure_matcher import StructureMatcher

        _MATCHER = StructureMatcher(**MATCHER_KWARGS)
    return _MATCHER


def _clear_reduction_cache() -> None:
    """pymatgen memoises primitive/Niggli reductions in a class-level LRU cache whose keys compare
    structures *within tolerance*: a pair could then be scored with the reduction of an earlier, nearly
    identical structure, making the last digits depend on what the process saw before (and on how tasks are
    spread over workers). Clearing it before each pair makes every result a function of the pair alone; the
    reductions cost ~1 ms of a ~10 ms match."""
    from pymatgen.analysis.structure_matcher import StructureMatcher

    fn = getattr(StructureMatcher, "_get_reduced_istructure", None)
    clear = getattr(fn, "cache_clear", None)
    if clear is not None:
        clear()


def _validity(c: Canon) -> dict[str, Any]:
    from dao.evaluate.validity import composition_validity

    if not c.finite:
        comp_ok = composition_validity(c.numbers)
        reason = ("" if comp_ok else "charge_neutrality,") + "non_finite"
        return {"valid": False, "comp_valid": comp_ok, "struct_valid": False, "reason": reason}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        comp_ok, struct_ok, reason = validity_detail(to_structure(c))
    return {"valid": comp_ok and struct_ok, "comp_valid": comp_ok, "struct_valid": struct_ok, "reason": reason}


def _rms(pred: Canon, ref: Canon) -> tuple[float | None, str | None]:
    """StructureMatcher.get_rms_dist(pred, ref)[0] or None; (rms, error)."""
    if not (pred.finite and ref.finite):
        return None, None  # cannot be matched; the validity reason says non_finite
    if pred.comp != ref.comp:
        # Exact: get_rms_dist needs, after primitive reduction, equal site counts (len(s1)*fu == len(s2))
        # and a zero-cost species assignment (SpeciesComparator). Primitive reduction preserves the
        # reduced composition, so different reduced compositions always give None.
        return None, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _clear_reduction_cache()
            r = _matcher().get_rms_dist(to_structure(pred), to_structure(ref))
    except Exception as exc:  # DiffCSP: any exception = no match
        return None, f"matcher_error: {type(exc).__name__}: {exc}"[:300]
    return (None if r is None else float(r[0])), None


def _dedupe(refs: list[Canon], max_reps: int) -> dict[str, Any]:
    """Greedy grouping of same-composition references into distinct structures (a reference joins the
    first representative it matches). Stops once more than ``max_reps`` representatives exist."""
    reps: list[int] = []
    for i, c in enumerate(refs):
        for r in reps:
            if _rms(c, refs[r])[0] is not None:
                break
        else:
            reps.append(i)
            if len(reps) > max_reps:
                return {"reps": reps, "complete": False}
    return {"reps": reps, "complete": True}


def run_task(task: tuple[str, str, tuple]) -> tuple[str, dict[str, Any]]:
    kind, key, payload = task
    if kind == "pair":
        pred, ref = payload
        out = _validity(pred)
        out["comp_match"] = pred.comp == ref.comp
        out["rms"], out["error"] = _rms(pred, ref)
    elif kind == "match":
        pred, ref = payload
        rms, err = _rms(pred, ref)
        out = {"rms": rms, "error": err}
    elif kind == "ref":
        (ref,) = payload
        out = _validity(ref)
    elif kind == "dedupe":
        refs, max_reps = payload
        out = _dedupe(refs, max_reps)
    else:  # pragma: no cover
        raise ValueError(f"unknown task kind {kind}")
    return key, out


def _init_worker() -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    torch = sys.modules.get("torch")  # never imported here; limit it if something else did
    if torch is not None:
        torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS")


@contextmanager
def _single_thread_env() -> Iterator[None]:
    """Spawned children inherit os.environ at start: set BLAS/OpenMP to one thread while they start."""
    saved = {v: os.environ.get(v) for v in _THREAD_VARS}
    for v in _THREAD_VARS:
        os.environ[v] = "1"
    try:
        yield
    finally:
        for v, old in saved.items():
            if old is None:
                os.environ.pop(v, None)
            else:
                os.environ[v] = old


# --------------------------------------------------------------------------------------------------
# resumable cache


def _task_key(kind: str, *keys: str) -> str:
    return hashlib.sha1("|".join((CACHE_VERSION, kind, *keys)).encode()).hexdigest()


class ResultCache:
    """JSON-lines store of finished task results; one ``os.write`` of a whole line per result (O_APPEND),
    so an interrupted run leaves at most a torn last line, which is ignored on reload."""

    def __init__(self, path: Path | None):
        self.path = Path(path) if path is not None else None
        self.results: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = self.path.read_bytes()
            for line in data.split(b"\n"):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    self.results[rec["key"]] = rec["result"]
                except (ValueError, KeyError, TypeError):
                    continue  # torn or foreign line
            torn = bool(data) and not data.endswith(b"\n")
        else:
            torn = False
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if torn:
            os.write(self._fd, b"\n")

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def put(self, key: str, result: dict[str, Any]) -> None:
        self.results[key] = result
        if self._fd is not None:
            os.write(self._fd, (json.dumps({"key": key, "result": result}) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def run_batch(tasks: list[tuple[str, str, tuple]]) -> list[tuple[str, dict[str, Any]]]:
    return [run_task(t) for t in tasks]


def _spawn_possible() -> bool:
    """Spawned workers re-import the parent's __main__ script; impossible for `python -` (stdin)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


class _Runner:
    """Runs tasks in-process (workers=1) or in a spawn process pool, storing results in the cache."""

    def __init__(self, workers: int, cache: ResultCache, progress: bool):
        self.workers = max(1, int(workers))
        if self.workers > 1 and not _spawn_possible():
            warnings.warn("dao.evaluate: worker processes cannot re-import a __main__ read from stdin; "
                          "running with workers=1", stacklevel=3)
            self.workers = 1
        self.cache = cache
        self.progress = progress
        self._executor = None
        self.computed = 0
        self.reused = 0

    def run(self, tasks: Iterable[tuple[str, str, tuple]], desc: str) -> None:
        seen: set[str] = set()
        todo = []
        for t in tasks:
            if t[1] in seen:
                continue
            seen.add(t[1])
            if t[1] in self.cache:
                self.reused += 1
            else:
                todo.append(t)
        if not todo:
            return
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=desc, file=sys.stderr, disable=not self.progress, unit="task",
                   dynamic_ncols=True)
        try:
            if self.workers == 1 or len(todo) < 4:
                for t in todo:
                    key, res = run_task(t)
                    self._put(key, res, bar)
            else:
                from concurrent.futures import as_completed
                from concurrent.futures.process import BrokenProcessPool

                ex = self._get_executor()
                size = max(1, min(8, len(todo) // (self.workers * 16)))
                with _single_thread_env():  # workers are spawned during submit(): one BLAS/OpenMP thread each
                    futures = [ex.submit(run_batch, todo[i:i + size]) for i in range(0, len(todo), size)]
                try:
                    for fut in as_completed(futures):
                        for key, res in fut.result():
                            self._put(key, res, bar)
                except BrokenProcessPool as exc:
                    raise RuntimeError("an evaluation worker process died (out of memory or killed?); finished "
                                       "results are kept in the cache, rerun to resume") from exc
        finally:
            bar.close()

    def _put(self, key: str, res: dict[str, Any], bar) -> None:
        self.cache.put(key, res)
        self.computed += 1
        bar.update(1)

    def _get_executor(self):
        if self._executor is None:
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker)
        return self._executor

    def close(self, terminate: bool = False) -> None:
        ex, self._executor = self._executor, None
        if ex is None:
            return
        if terminate:
            procs = list((getattr(ex, "_processes", None) or {}).values())
            ex.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                if p.is_alive():
                    p.terminate()
            for p in procs:
                p.join(timeout=5)
        else:
            ex.shutdown(wait=True)


# --------------------------------------------------------------------------------------------------
# evaluation


def _seq_mean(values: list[float]) -> float | None:
    """Mean with left-to-right summation (what numpy does on DiffCSP's object arrays)."""
    if not values:
        return None
    s = values[0]
    for v in values[1:]:
        s = s + v
    return s / len(values)


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
    (counted in the summary).
    """
    t0 = time.perf_counter()
    n = len(references)
    if reference_ids is None:
        reference_ids = [str(i) for i in range(n)]
    if len(reference_ids) != n:
        raise ValueError("reference_ids must have one id per reference")
    ref_c: list[Canon] = []
    for i, s in enumerate(references):
        try:
            ref_c.append(canonicalize(s))
        except UnusableStructure as exc:
            raise ValueError(f"reference {i} ({reference_ids[i]}) cannot be scored: {exc}") from None
        if not ref_c[-1].finite:
            raise ValueError(f"reference {i} ({reference_ids[i]}) has a non-finite lattice or coordinates")

    by_row: dict[int, list[Any]] = {}
    for key_, v in predictions.items():
        by_row.setdefault(int(key_), list(v))
    unassigned = sorted(i for i in by_row if not (0 <= i < n))
    lens = [len(v) for i, v in by_row.items() if 0 <= i < n]
    K = int(k) if k is not None else max([1, *lens])
    if K < 1:
        raise ValueError("k must be >= 1")

    # per-slot status: Canon | ("unreadable", detail) | MISSING
    slots: list[list[Any]] = []
    for i in range(n):
        row = by_row.get(i, [])[:K]
        row += [MISSING] * (K - len(row))
        out = []
        for s in row:
            if s is MISSING:
                out.append(MISSING)
            elif s is None:
                out.append(("unreadable", "could not be parsed"))
            else:
                try:
                    out.append(canonicalize(s))
                except UnusableStructure as exc:
                    out.append(("unreadable", str(exc)))
        slots.append(out)

    cache = ResultCache(cache_path)
    runner = _Runner(workers, cache, progress)
    try:
        # phase 1: reference validity, (sample, own reference) pairs, polymorph de-duplication
        ref_keys = [_task_key("ref", c.key) for c in ref_c]
        pair_keys: dict[tuple[int, int], str] = {}
        tasks: list[tuple[str, str, tuple]] = []
        for i, c in enumerate(ref_c):
            tasks.append(("ref", ref_keys[i], (c,)))
        for i in range(n):
            for j, s in enumerate(slots[i]):
                if isinstance(s, Canon):
                    key = _task_key("pair", s.key, ref_c[i].key)
                    pair_keys[(i, j)] = key
                    tasks.append(("pair", key, (s, ref_c[i])))
        groups: dict[tuple, list[int]] = {}
        for i, c in enumerate(ref_c):
            groups.setdefault(c.comp, []).append(i)
        lo, hi = POLYMORPH_RANGE
        dedupe_keys: dict[tuple, str] = {}
        for comp, rows in groups.items():
            if len(rows) >= lo:
                key = _task_key("dedupe", str(hi), *(ref_c[i].key for i in rows))
                dedupe_keys[comp] = key
                tasks.append(("dedupe", key, ([ref_c[i] for i in rows], hi)))
        runner.run(tasks, "evaluate")

        # phase 2: pooled samples of a composition against every distinct polymorph
        poly_groups: list[tuple[tuple, list[int], list[int]]] = []  # (comp, rows, representative rows)
        cross_tasks: list[tuple[str, str, tuple]] = []
        cross_keys: dict[tuple[int, int, int], str] = {}
        for comp, key in dedupe_keys.items():
            res = cache.results[key]
            rows = groups[comp]
            reps = [rows[r] for r in res["reps"]]
            if not (res["complete"] and lo <= len(reps) <= hi):
                continue
            poly_groups.append((comp, rows, reps))
            for r in reps:
                for i in rows:
                    if i == r:
                        continue
                    for j, s in enumerate(slots[i]):
                        if isinstance(s, Canon) and s.comp == ref_c[r].comp:
                            key2 = _task_key("match", s.key, ref_c[r].key)
                            cross_keys[(i, j, r)] = key2
                            cross_tasks.append(("match", key2, (s, ref_c[r])))
        runner.run(cross_tasks, "polymorphs")
    except BaseException:
        runner.close(terminate=True)
        cache.close()
        raise
    runner.close()
    cache.close()
    R = cache.results

    # ---------------------------------------------------------------- per-sample records
    samples: list[dict[str, Any]] = []
    sample_state: list[list[dict[str, Any]]] = []
    for i in range(n):
        states = []
        for j, s in enumerate(slots[i]):
            st: dict[str, Any] = {"ref_index": i, "sample": j, "valid": False, "comp_valid": False,
                                  "struct_valid": False, "rms": None, "detail": ""}
            if s is MISSING:
                st.update(outcome="missing", outcome_unfiltered="missing")
            elif isinstance(s, tuple):
                st.update(outcome="unreadable", outcome_unfiltered="unreadable", detail=s[1])
            else:
                r = R[pair_keys[(i, j)]]
                st.update(valid=r["valid"], comp_valid=r["comp_valid"], struct_valid=r["struct_valid"],
                          rms=r["rms"], formula=_formula(s.comp))
                if r["rms"] is not None:
                    unf = "match"
                elif not r["comp_match"]:
                    unf = "wrong_composition"
                    st["detail"] = f"predicted {_formula(s.comp)}, reference {_formula(ref_c[i].comp)}"
                else:
                    unf = "no_match"
                    if r.get("error"):
                        st["detail"] = r["error"]
                st["outcome_unfiltered"] = unf
                st["outcome"] = unf if r["valid"] else "invalid"
                if not r["valid"]:
                    st["detail"] = ("; ".join(x for x in (f"invalid: {r['reason']}", st["detail"]) if x))
            states.append(st)
            samples.append(st)
        sample_state.append(states)

    # ---------------------------------------------------------------- energy scorer
    stability: dict[str, Any] | None = None
    relaxed_predictions = None
    if energy_scorer is not None:
        idx = [(i, j) for i in range(n) for j, s in enumerate(slots[i]) if isinstance(s, Canon)]
        structs = [to_structure(slots[i][j]) for i, j in idx]
        energies = list(energy_scorer.e_above_hull(structs)) if structs else []
        if len(energies) != len(structs):
            raise ValueError(f"energy scorer returned {len(energies)} values for {len(structs)} structures")
        for (i, j), e in zip(idx, energies):
            e = None if e is None or not math.isfinite(float(e)) else float(e)
            sample_state[i][j]["e_above_hull"] = e
        relaxed = getattr(energy_scorer, "relaxed", None)
        if relaxed is not None and len(relaxed) == len(structs):
            relaxed_predictions = {i: [MISSING if s is MISSING else None for s in slots[i]] for i in range(n)}
            for (i, j), s in zip(idx, relaxed):
                relaxed_predictions[i][j] = s
        n_present = sum(1 for st in samples if st["outcome"] != "missing")
        n_scored = sum(1 for st in samples if st.get("e_above_hull") is not None)
        n_stable = sum(1 for st in samples if (st.get("e_above_hull") is not None
                                               and st["e_above_hull"] <= STABILITY_THRESHOLD))
        stability = {
            "stability_rate": (n_stable / n_present) if n_present else None,
            "threshold_ev_per_atom": STABILITY_THRESHOLD,
            "n_stable": n_stable, "n_scored": n_scored, "n_generated": n_present,
            "mean_e_above_hull": _seq_mean([st["e_above_hull"] for st in samples
                                            if st.get("e_above_hull") is not None]),
        }

    # ---------------------------------------------------------------- per-row records
    records: list[dict[str, Any]] = []
    ref_valid = [R[key] for key in ref_keys]
    for i in range(n):
        states = sample_state[i]
        gated = [st["rms"] if (st["outcome"] == "match") else None for st in states]
        unf = [st["rms"] if (st["outcome_unfiltered"] == "match") else None for st in states]

        def best(vals: list[float | None]) -> tuple[float | None, int | None, int | None]:
            m = [(v, j) for j, v in enumerate(vals) if v is not None]
            if not m:
                return None, None, None
            v, j = min(m)
            return v, j, m[0][1] + 1

        rms_g, best_g, first_g = best(gated)
        rms_u, best_u, first_u = best(unf)
        reason_g = max((st["outcome"] for st in states), key=lambda o: _GATED_RANK[o])
        reason_u = max((st["outcome_unfiltered"] for st in states), key=lambda o: _UNF_RANK[o])
        detail = "; ".join(f"s{st['sample']}: {st['detail']}" for st in states if st["detail"])
        rec: dict[str, Any] = {
            "ref_index": i,
            "material_id": reference_ids[i],
            "formula": _formula(ref_c[i].comp),
            "n_atoms": len(ref_c[i].numbers),
            "ref_valid": ref_valid[i]["valid"],
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
            "detail": detail,
        }
        if energy_scorer is not None:
            es = [st.get("e_above_hull") for st in states if st.get("e_above_hull") is not None]
            rec["min_e_above_hull"] = min(es) if es else None
        records.append(rec)

    # ---------------------------------------------------------------- summary
    def curve(which: str) -> tuple[list[float], list[float | None]]:
        rates, rmses = [], []
        for kk in range(1, K + 1):
            vals = []
            for i in range(n):
                ms = [st["rms"] for st in sample_state[i][:kk] if st[which] == "match"]
                if ms:
                    vals.append(min(ms))
            rates.append(len(vals) / n if n else 0.0)
            rmses.append(_seq_mean(vals))
        return rates, rmses

    rate_g, rmse_g = curve("outcome")
    rate_u, rmse_u = curve("outcome_unfiltered")

    # DiffCSP RecEval (single sample): a pair counts only if prediction AND reference are valid
    k1 = [sample_state[i][0]["rms"] for i in range(n)
          if sample_state[i][0]["outcome"] == "match" and ref_valid[i]["valid"]]

    # polymorph recovery
    def matches(i: int, j: int, r: int) -> bool:
        if i == r:
            return sample_state[i][j]["outcome_unfiltered"] == "match"
        key = cross_keys.get((i, j, r))
        return key is not None and R[key]["rms"] is not None

    poly_rows = []
    n_rec_g = n_rec_u = 0
    for comp, rows, reps in poly_groups:
        ok_g = ok_u = True
        for r in reps:
            hit_u = hit_g = False
            for i in rows:
                for j, s in enumerate(slots[i]):
                    if isinstance(s, Canon) and matches(i, j, r):
                        hit_u = True
                        if sample_state[i][j]["valid"]:
                            hit_g = True
            ok_g &= hit_g
            ok_u &= hit_u
        n_rec_g += ok_g
        n_rec_u += ok_u
        poly_rows.append({"formula": _formula(comp), "n_rows": len(rows), "n_polymorphs": len(reps),
                          "polymorph_rows": reps, "recovered": ok_g, "recovered_unfiltered": ok_u})
    n_poly = len(poly_groups)

    n_present = sum(1 for st in samples if st["outcome"] != "missing")
    counts = {o: sum(1 for r in records if r["reason"] == o) for o in _GATED_RANK if o != "match"}
    counts_u = {o: sum(1 for r in records if r["reason_unfiltered"] == o) for o in _UNF_RANK if o != "match"}

    from importlib.metadata import PackageNotFoundError, version

    def _ver(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    summary: dict[str, Any] = {
        "n_references": n,
        "k": K,
        "match_rate": rate_g[-1],
        "rmse": rmse_g[-1],
        "match_rate_unfiltered": rate_u[-1],
        "rmse_unfiltered": rmse_u[-1],
        "n_matched": sum(r["matched"] for r in records),
        "n_matched_unfiltered": sum(r["matched_unfiltered"] for r in records),
        "match_rate_diffcsp_k1": (len(k1) / n) if n else 0.0,
        "rmse_diffcsp_k1": _seq_mean(k1),
        "match_rate_vs_k": rate_g,
        "rmse_vs_k": rmse_g,
        "match_rate_unfiltered_vs_k": rate_u,
        "rmse_unfiltered_vs_k": rmse_u,
        "miss_reasons": counts,
        "miss_reasons_unfiltered": counts_u,
        "validity": {
            "n_samples_present": n_present,
            "n_samples_missing": len(samples) - n_present,
            "n_unreadable": sum(1 for st in samples if st["outcome"] == "unreadable"),
            "valid_rate": (sum(st["valid"] for st in samples) / n_present) if n_present else None,
            "comp_valid_rate": (sum(st["comp_valid"] for st in samples) / n_present) if n_present else None,
            "struct_valid_rate": (sum(st["struct_valid"] for st in samples) / n_present) if n_present else None,
            "reference_valid_rate": (sum(v["valid"] for v in ref_valid) / n) if n else None,
        },
        "polymorph_recovery": {
            "n_compositions": n_poly,
            "n_recovered": n_rec_g,
            "rate": (n_rec_g / n_poly) if n_poly else None,
            "n_recovered_unfiltered": n_rec_u,
            "rate_unfiltered": (n_rec_u / n_poly) if n_poly else None,
            "compositions": poly_rows,
        },
        "n_unassigned_prediction_keys": len(unassigned),
        "protocol": {
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
            "versions": {"pymatgen": _ver("pymatgen") or _ver("pymatgen-core"), "smact": _ver("SMACT") or _ver("smact")},
        },
        "timing": {
            "seconds": time.perf_counter() - t0,
            "tasks_computed": runner.computed,
            "tasks_from_cache": runner.reused,
            "workers": runner.workers,
        },
    }
    if stability is not None:
        summary["stability"] = stability
        summary["stability_rate"] = stability["stability_rate"]
    return EvaluationResult(summary=summary, records=records, samples=samples, relaxed_predictions=relaxed_predictions)
