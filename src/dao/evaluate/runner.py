"""Running the evaluation's tasks: in-process or in a spawn process pool, with a resumable JSON-lines cache.

A task is ``(kind, key, payload)``; ``key`` (from :func:`task_key`) hashes the canonical structures and the
protocol version, so a finished task is never recomputed while its cache file is kept. Everything a worker
process runs is a top-level function of this module (spawn-safe).

Task kinds: ``pair`` (a sample against its own reference: validity, composition and RMS), ``match`` (RMS
only, a sample against another reference of its composition), ``ref`` (validity of a reference) and
``dedupe`` (greedy polymorph grouping of same-composition references).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dao.evaluate.canon import dedupe, rms, validity

CACHE_VERSION = "dao-evaluate-1"

Task = tuple[str, str, tuple]  # (kind, key, payload)
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                "NUMEXPR_NUM_THREADS")


def task_key(kind: str, *keys: str) -> str:
    """Cache key of a task from its kind and the keys of the structures it reads."""
    return hashlib.sha1("|".join((CACHE_VERSION, kind, *keys)).encode()).hexdigest()


def run_task(task: Task) -> tuple[str, dict[str, Any]]:
    """Compute one task; returns ``(key, result)`` with a JSON-serialisable result."""
    kind, key, payload = task
    if kind == "pair":
        pred, ref = payload
        out = validity(pred)
        out["comp_match"] = pred.comp == ref.comp
        out["rms"], out["error"] = rms(pred, ref)
    elif kind == "match":
        pred, ref = payload
        value, err = rms(pred, ref)
        out = {"rms": value, "error": err}
    elif kind == "ref":
        (ref,) = payload
        out = validity(ref)
    elif kind == "dedupe":
        refs, max_reps = payload
        out = dedupe(refs, max_reps)
    else:  # pragma: no cover
        raise ValueError(f"unknown task kind {kind}")
    return key, out


def run_batch(tasks: list[Task]) -> list[tuple[str, dict[str, Any]]]:
    """What a worker process runs: a few tasks per submission."""
    return [run_task(t) for t in tasks]


def _init_worker() -> None:
    for var in _THREAD_VARS:
        os.environ[var] = "1"
    torch = sys.modules.get("torch")  # never imported here; limit it if something else did
    if torch is not None:
        torch.set_num_threads(1)
    warnings.filterwarnings("ignore")


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


class ResultCache:
    """JSON-lines store of finished task results; one ``os.write`` of a whole line per result (O_APPEND),
    so an interrupted run leaves at most a torn last line, which is ignored on reload."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self.results: dict[str, dict[str, Any]] = {}
        self._fd: int | None = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torn = False
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


def _spawn_possible() -> bool:
    """Spawned workers re-import the parent's __main__ script; impossible for `python -` (stdin)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


class Runner:
    """Runs tasks in-process (workers=1) or in a spawn process pool, storing results in the cache.
    Use as a context manager: on an exception the pool is terminated; the cache is closed either way."""

    def __init__(self, workers: int, cache: ResultCache, progress: bool) -> None:
        self.workers = max(1, int(workers))
        if self.workers > 1 and not _spawn_possible():
            warnings.warn("dao.evaluate: worker processes cannot re-import a __main__ read from stdin; "
                          "running with workers=1", stacklevel=3)
            self.workers = 1
        self.cache = cache
        self.progress = progress
        self._executor: Executor | None = None
        self.computed = 0
        self.reused = 0

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        try:
            self.close(terminate=exc_type is not None)
        finally:
            self.cache.close()

    @property
    def results(self) -> dict[str, dict[str, Any]]:
        return self.cache.results

    def run(self, tasks: Iterable[Task], desc: str) -> None:
        """Compute the tasks not in the cache yet (duplicates by key are run once)."""
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
                self._run_pool(todo, bar)
        finally:
            bar.close()

    def _run_pool(self, todo: list[Task], bar: Any) -> None:
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

    def _put(self, key: str, res: dict[str, Any], bar: Any) -> None:
        self.cache.put(key, res)
        self.computed += 1
        bar.update(1)

    def _get_executor(self) -> Executor:
        if self._executor is None:
            from concurrent.futures import ProcessPoolExecutor

            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker)
        return self._executor

    def close(self, terminate: bool = False) -> None:
        """Shut the pool down (``terminate``: cancel pending work and kill the workers)."""
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
