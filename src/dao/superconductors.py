"""Superconductors (see docs/design.md, 'Properties and Tc'): Tc training data augmented with generated structures, and ``dao tc``.

SuperCon lists far more superconductors by formula than with a structure. For a formula that can be
written as a whole-atom cell of at most ``max_atoms`` atoms, DAO-G (optionally energy-guided) generates a
structure; it joins the Tc training folds (never the held-out folds) with ln Tc as its label. Formulas
that also occur in the evaluation pool (same reduced formula) are left out, so nothing about a test
compound leaks into training.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from dao.crystal import Crystal
from dao.errors import DAOError, FormulaError
from dao.formula import integer_cell, reduced_formula


def generate_augmentation(rows: Iterable[dict], generator: Any, exclude: set[str], max_atoms: int | None = None,
                          seed: int = 0, steps: int | None = None, guidance: Sequence = (), batch_size: int = 64,
                          formula_key: str = "Formula", tc_key: str = "Tc") -> tuple[list[Crystal], dict]:
    """One generated structure per usable (formula, Tc) row; returns (crystals with meta target = ln Tc,
    counts of rows used and skipped by reason)."""
    from dao.prediction import generate

    limit = min(max_atoms or generator.config.max_atoms, generator.config.max_atoms)
    cells, meta, counts = [], [], {"rows": 0, "no_tc": 0, "not_whole_atoms_within_limit": 0,
                                   "in_evaluation_pool": 0, "duplicate_formula": 0}
    seen = set()
    for row in rows:
        counts["rows"] += 1
        try:
            tc = float(row[tc_key])
        except (KeyError, TypeError, ValueError):
            tc = math.nan
        if not (tc > 0 and math.isfinite(tc)):
            counts["no_tc"] += 1
            continue
        red = reduced_formula(row[formula_key])
        cell = integer_cell(row[formula_key], limit)
        if cell is None or red is None:
            counts["not_whole_atoms_within_limit"] += 1
            continue
        if red in exclude:
            counts["in_evaluation_pool"] += 1
            continue
        if red in seen:
            counts["duplicate_formula"] += 1
            continue
        seen.add(red)
        cells.append(cell)
        meta.append({"id": f"gen:{row[formula_key]}", "target": math.log(tc), "formula": row[formula_key],
                     "family": row.get("Materials_family", "")})
    samples = generate(generator, cells, 1, seed=seed, steps=steps, batch_size=batch_size, guidance=guidance)
    out = []
    for s, m in zip(samples, meta):
        if s.structure is None:
            counts["generation_failed"] = counts.get("generation_failed", 0) + 1
            continue
        out.append(Crystal.from_structure(s.structure, meta=m))
    counts["generated"] = len(out)
    return out, counts


def write_structures_csv(crystals: Sequence[Crystal], path: str | Path, target: str = "logtc") -> None:
    """DiffCSP-style CSV (material_id, formula, <target>, cif), written atomically."""
    import csv
    import io

    from dao.structure_io import atomic_write_text

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["material_id", "formula", "family", target, "cif"])
    w.writeheader()
    for c in crystals:
        w.writerow({"material_id": c.meta["id"], "formula": c.meta.get("formula", ""), "family": c.meta.get("family", ""),
                    target: c.meta["target"], "cif": c.to_structure().to(fmt="cif")})
    atomic_write_text(path, buf.getvalue())


def predict_tc(formula: str, generator: Any, tc_models: Sequence, n: int = 5, seed: int = 0, steps: int | None = None,
               guidance: Sequence = (), max_atoms: int | None = None) -> dict:
    """Generate ``n`` structures for ``formula`` and predict ln Tc with every fold model. Reports Tc (K) as
    exp of the mean ln Tc, with the spread over structures and over fold models."""
    import numpy as np

    from dao.prediction import generate
    from dao.property import predict_property

    cell = integer_cell(formula, max_atoms or generator.config.max_atoms)
    if cell is None:
        raise FormulaError(f"{formula!r} cannot be written as a cell of at most "
                           f"{max_atoms or generator.config.max_atoms} whole atoms")
    samples = [s for s in generate(generator, [cell], n, seed=seed, steps=steps, guidance=guidance)
               if s.structure is not None]
    if not samples:
        raise DAOError(f"no usable structure was generated for {formula}")
    crystals = [Crystal.from_structure(s.structure) for s in samples]
    per_model = np.array([predict_property(m, crystals) for m in tc_models])  # (models, structures)
    ln_tc = per_model.mean(0)
    return {"formula": formula, "cell": cell.formula, "structures": len(crystals),
            "tc_kelvin": float(np.exp(ln_tc.mean())), "ln_tc_mean": float(ln_tc.mean()),
            "ln_tc_std_over_structures": float(ln_tc.std()),
            "ln_tc_std_over_models": float(per_model.mean(1).std()),
            "tc_kelvin_per_structure": [float(x) for x in np.exp(ln_tc)], "models": len(tc_models)}
