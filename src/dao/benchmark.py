"""``dao benchmark``: sample k structures for every composition of a CSP split, then evaluate them.

Predictions are written as ``<out>/predictions/<row>_<sample>.cif`` (the convention ``dao evaluate``
reads), so a benchmark run can be re-scored or compared with other generators' CIFs.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from dao.evaluate import evaluate, load_predictions, load_references, write_report
from dao.formula import CellComposition
from dao.models.checkpoint import load_generator
from dao.prediction import generate
from dao.runtime import resolve_device
from dao.structure_io import write_cif


def run_benchmark(split: str | Path, model: str, k: int, out: str | Path, limit: int | None = None, seed: int = 0,
                  steps: int | None = None, device: str = "auto", batch_size: int = 64, workers: int = 1,
                  progress: bool = True, compile: bool = False) -> dict[str, Any]:
    out = Path(out)
    refs, ids = load_references(split)
    if limit is not None:
        refs, ids = refs[:limit], ids[:limit]
    t0 = time.time()
    gen_model = load_generator(model, resolve_device(device), compile=compile)
    pred_dir = out / "predictions"
    pred_dir.mkdir(parents=True, exist_ok=True)
    def done(i: int, j: int) -> bool:
        return (pred_dir / f"{i}_{j}.cif").is_file() or (pred_dir / f"{i}_{j}.failed").is_file()

    todo = [i for i in range(len(refs)) if not all(done(i, j) for j in range(k))]
    sample_seconds = 0.0
    bar = tqdm(total=len(todo), desc="generating", unit="comp", disable=not progress)
    per_batch = max(1, batch_size // k)
    for start in range(0, len(todo), per_batch):  # resumable: finished rows are skipped on a rerun
        rows = todo[start:start + per_batch]
        ts = time.time()
        cells = [CellComposition.of_structure(refs[i]) for i in rows]
        samples = generate(gen_model, cells, k, seed=seed + rows[0], steps=steps, batch_size=len(cells) * k)
        sample_seconds += time.time() - ts
        for n, s in enumerate(samples):  # generate() returns k samples per cell, cells in order
            if s.structure is not None:
                write_cif(s.structure, pred_dir / f"{rows[n // k]}_{s.index}.cif")
            else:  # unusable sample (e.g. degenerate lattice): scored as missing, not regenerated on rerun
                (pred_dir / f"{rows[n // k]}_{s.index}.failed").write_text(f"{s.error}\n")
        bar.update(len(rows))
    bar.close()
    predictions = load_predictions(pred_dir, ids, k=k)
    result = evaluate(predictions, refs, k=k, workers=workers, cache_path=out / "cache.jsonl", progress=progress,
                      reference_ids=ids)
    result.summary["generation"] = {
        "model": gen_model.checkpoint_path, "k": k, "steps": gen_model.process.resolve_steps(steps), "method": gen_model.method,
        "seed": seed, "split": str(split), "num_compositions": len(refs), "rows_generated_this_run": len(todo),
        "sampling_seconds_this_run": round(sample_seconds, 1),
        "seconds_per_structure_this_run": round(sample_seconds / max(1, len(todo) * k), 3),
        "device": str(next(gen_model.parameters()).device), "total_seconds": round(time.time() - t0, 1),
    }
    write_report(result, out)
    return result.summary
