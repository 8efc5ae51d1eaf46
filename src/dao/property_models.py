"""Trained property models as a library: ``dao train property``, ``dao predict-property`` and ``dao tc``.

A ``dao train property`` folder holds one model per fold (``fold<k>/model.pt``); its fold models form an
ensemble whose mean is the prediction and whose standard deviation is reported beside it (see
docs/design.md, "Properties and Tc"). Training and scoring themselves are :func:`dao.property.run_property`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from dao.crystal import Crystal
from dao.data.readers import read_inputs, report_unreadable
from dao.models.checkpoint import load_checkpoint, load_generator, resolve_model_path
from dao.prediction import guidance_for
from dao.property import ensemble_predictions, load_property_models, run_property
from dao.runtime import resolve_device
from dao.superconductors import predict_tc
from dao.train_config import load_config


def ensemble_predict(models: Sequence, crystals: Sequence[Crystal], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Per-structure mean and standard deviation of the predictions of several property models."""
    per_model = ensemble_predictions(models, crystals, batch_size)  # (models, structures)
    return per_model.mean(axis=0), per_model.std(axis=0)


def predict_property_files(files: Sequence[str | Path], model: str | Path, device: str = "cpu",
                           on_error: Callable[[str], None] | None = None) -> list[dict]:
    """One row per readable structure of ``files``: name, reduced formula, the ensemble mean under the
    target's name, ``ensemble_std`` and the number of models. ``model`` is a property ``model.pt`` or a
    ``dao train property`` folder. Unreadable inputs go to ``on_error`` (DAOError when none is readable)."""
    models = load_property_models(model, resolve_device(device))
    items, errors = read_inputs(files)
    report_unreadable(items, errors, on_error)
    mean, spread = ensemble_predict(models, [c for _, c in items])
    target = models[0].config.target
    return [{"name": name, "formula": c.to_structure().composition.reduced_formula, target: round(float(m), 6),
             "ensemble_std": round(float(sd), 6), "models": len(models)}
            for (name, c), m, sd in zip(items, mean, spread)]


def predict_tc_for_formula(formula: str, model: str | Path, n: int = 5, generator: str | Path = "default",
                           energy_model: str | Path | None = None, guidance_scale: float | None = None,
                           steps: int | None = None, seed: int = 0, device: str = "auto") -> dict:
    """Tc of ``formula``: ``n`` structures from ``generator`` (energy-guided with ``energy_model``), scored
    by the ln Tc fold ensemble in ``model``; see :func:`dao.superconductors.predict_tc`."""
    dev = resolve_device(device)
    models = load_property_models(model, dev)
    gen = load_generator(generator, dev)
    guidance, _ = guidance_for(gen, energy_model, guidance_scale, dev)
    return predict_tc(formula, gen, models, n=n, seed=seed, steps=steps, guidance=guidance)


def property_config(config: str | Path | None, seed: int = 0, init: str | None = None) -> tuple[dict, str | None]:
    """The configuration of a property run and its backbone checkpoint: the YAML ``config`` with
    ``train.seed`` defaulting to ``seed``; ``init="default"`` names the bundled DAO-P, and an ``init``
    checkpoint brings its own model architecture."""
    cfg = load_config(config)
    cfg.setdefault("train", {}).setdefault("seed", seed)
    if init == "default":
        init = str(resolve_model_path("default", "energy"))
    if init is not None:
        cfg["model"] = load_checkpoint(init)["config"]["model"]  # the backbone's architecture comes with it
    return cfg, init


def train_property_task(data: str | Path, target: str, out: str | Path, config: str | Path | None = None,
                        folds: int = 5, init: str | None = None, val: str | Path | None = None,
                        test: str | Path | None = None, device: str = "auto", seed: int = 0, baseline: bool = True,
                        augment: str | Path | None = None,
                        on_skip: Callable[[str], None] | None = None) -> dict:
    """Everything ``dao train property`` does (see :func:`dao.property.run_property`); returns the summary."""
    cfg, init = property_config(config, seed, init)
    return run_property(data, target, out, cfg, folds=folds, init=init, val=val, test=test,
                        device=resolve_device(device).type, seed=seed, baseline=baseline, augment=augment,
                        on_skip=on_skip)
