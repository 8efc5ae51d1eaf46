"""Property prediction with DAO-P (see docs/design.md, 'Properties and Tc'): ``dao train property`` and ``dao predict-property``.

A task is a CSV with a ``cif`` column and a numeric target column. Training either uses k fixed folds
(cross-validation: every entry is predicted once by the model that did not see it) or given val/test
splits. Every fold trains the same way (``dao.train.fit``); ``--init`` starts each fold's backbone from a
pretrained DAO-P (a fresh head at t = 0). A composition-only ridge regression on the same folds is the
honest baseline (:func:`composition_baseline`). Outputs: ``predictions.csv``, ``summary.json``,
``parity.png``, ``folds.json`` and one ``fold<k>/model.pt`` per fold (the fold ensemble).
"""
from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dao.constants import MAX_Z
from dao.crystal import Crystal
from dao.data.records import iter_csv_rows, label_value, record_from_row, record_id
from dao.errors import DAOError, StructureReadError

#: columns naming a property-task row (its id in predictions.csv and folds.json)
_NAME_COLUMNS = ("material_id", "name")


def read_property_data(path: str | Path, target: str) -> tuple[list[Crystal], list[tuple[str, str]]]:
    """Crystals with ``meta["target"]`` from a CSV (``cif`` + ``target`` columns); rows with a missing or
    non-finite target, an unparsable CIF or an element outside the model's table are skipped with a reason."""
    path = Path(path)
    if not path.is_file():
        raise DAOError(f"data file not found: {path}")
    crystals, skipped = [], []
    for i, row in enumerate(iter_csv_rows(path)):
        if i == 0:
            missing = [c for c in ("cif", target) if c not in row]
            if missing:
                raise DAOError(f"{path} has no column {missing[0]!r} (columns: {', '.join(k for k in row if k)})")
        name = record_id(row, _NAME_COLUMNS) or f"{path.name}:{i}"
        if math.isnan(label_value(row[target])):
            skipped.append((name, f"target {target!r} is missing or not a finite number ({row[target]!r})"))
            continue
        try:
            c = record_from_row(row, {"target": (target,)}, _NAME_COLUMNS).to_crystal(id=name)
        except StructureReadError as exc:
            skipped.append((name, str(exc)))
            continue
        if int(c.atomic_numbers.max()) > MAX_Z:
            skipped.append((name, f"element Z = {int(c.atomic_numbers.max())} is beyond the model's table (Z ≤ {MAX_Z})"))
            continue
        crystals.append(c)
    return crystals, skipped


def fold_indices(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """k fixed folds of ``range(n)``: a seeded permutation cut into k near-equal parts."""
    if k < 2 or k > n:
        raise DAOError(f"cannot make {k} folds of {n} entries")
    return [np.sort(p) for p in np.array_split(np.random.default_rng(seed).permutation(n), k)]


# ----------------------------------------------------------------------------------------------- baseline
def composition_features(crystals: Sequence[Crystal]) -> np.ndarray:
    """Composition-only descriptor: element fractions (Z = 1..100) and the fraction-weighted mean and
    standard deviation of the 92 elemental features that Crysformer embeds. No structure information."""
    from dao.nn.embeddings import atom_feature_table

    table = atom_feature_table().numpy().astype(np.float64)
    out = np.zeros((len(crystals), 100 + 2 * table.shape[1]))
    for i, c in enumerate(crystals):
        z, counts = np.unique(c.atomic_numbers, return_counts=True)
        w = counts / counts.sum()
        out[i, z - 1] = w
        f = table[z]
        mean = w @ f
        out[i, 100:100 + table.shape[1]] = mean
        out[i, 100 + table.shape[1]:] = np.sqrt(np.maximum(w @ (f - mean) ** 2, 0.0))
    return out


def ridge_fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                      alphas: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)) -> np.ndarray:
    """Ridge regression on standardised features; alpha chosen by 5-fold CV inside the training set."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-8
    xt, xs = (x_train - mu) / sd, (x_test - mu) / sd
    ym = y_train.mean()

    def solve(x: np.ndarray, y: np.ndarray, a: float) -> np.ndarray:
        return np.linalg.solve(x.T @ x + a * np.eye(x.shape[1]), x.T @ (y - ym))

    inner = fold_indices(len(xt), 5, seed=123) if len(xt) >= 10 else None
    best = alphas[0]
    if inner is not None:
        errs = []
        for a in alphas:
            e = 0.0
            for f in inner:
                m = np.ones(len(xt), bool)
                m[f] = False
                e += np.abs(xt[f] @ solve(xt[m], y_train[m], a) + ym - y_train[f]).sum()
            errs.append(e)
        best = alphas[int(np.argmin(errs))]
    return xs @ solve(xt, y_train, best) + ym


def composition_baseline(train: Sequence[Crystal], test: Sequence[Crystal]) -> np.ndarray:
    y = np.array([c.meta["target"] for c in train])
    return ridge_fit_predict(composition_features(train), y, composition_features(test))


# ----------------------------------------------------------------------------------------------- training
def _predict(model, crystals: Sequence[Crystal], batch_size: int = 64) -> np.ndarray:
    import torch

    from dao.crystal import CrystalBatch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for lo in range(0, len(crystals), batch_size):
            b = CrystalBatch.from_crystals(list(crystals[lo:lo + batch_size])).to(device)
            out.append(model.predict(b).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def load_property_models(path: str | Path, device: Any = "cpu") -> list[Any]:
    """The models of a ``dao train property`` folder (every ``fold<k>/model.pt``, or ``model/model.pt``), or
    one ``model.pt``."""
    from dao.models.checkpoint import load_model

    path = Path(path)
    paths = (sorted(path.glob("fold*/model.pt")) or sorted(path.glob("model/model.pt"))) if path.is_dir() else [path]
    if not paths:
        raise DAOError(f"no property model found in {path}")
    return [load_model(p, "property", device) for p in paths]


def predict_property(model: Any, crystals: Sequence[Crystal], batch_size: int = 64) -> np.ndarray:
    """Predictions in target units for loaded property model(s); several models give the ensemble mean."""
    models = model if isinstance(model, (list, tuple)) else [model]
    return np.mean([_predict(m.eval(), crystals, batch_size) for m in models], axis=0)


def ensemble_predictions(models: Sequence[Any], crystals: Sequence[Crystal], batch_size: int = 64) -> np.ndarray:
    """Every model's predictions (e.g. a ``dao train property`` folder's fold models): (models, structures)."""
    return np.array([_predict(m.eval(), crystals, batch_size) for m in models])


def _train_one(cfg: dict, train: list, val: list, target: str, init: str | None, out: Path, device: str,
               progress: bool):
    import torch

    from dao.models.checkpoint import load_checkpoint, load_model
    from dao.models.property import DAOPropertyModel
    from dao.train import TrainConfig, fit

    tcfg = TrainConfig.from_dict(cfg.get("train", {}))
    torch.manual_seed(tcfg.seed)  # the seed governs the initial weights too, not only data order and noise
    model = DAOPropertyModel.from_training_data(cfg, train, target)
    if init is not None:
        model.init_backbone_from(load_checkpoint(init))
    path = fit(model, train, val, tcfg, out, resume=True, device=device, devices=1, progress=progress,
               meta={"target": target, "init": init, "num_train": len(train)})
    return load_model(path, "property", "cpu")


def run_property(data: str | Path, target: str, out: str | Path, config: dict, folds: int = 5,
                 init: str | None = None, val: str | Path | None = None, test: str | Path | None = None,
                 device: str = "cpu", seed: int = 0, progress: bool = False, baseline: bool = True,
                 on_skip: Callable[[str], None] | None = None, augment: str | Path | None = None) -> dict:
    """Train and score a property task; see the module docstring. Returns the summary."""
    from dao.structure_io import atomic_write_text, write_json

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    crystals, skipped = read_property_data(data, target)
    report_skips = {"data": skipped}
    if not crystals:
        raise DAOError(f"no usable rows in {data} ({len(skipped)} skipped)")
    extra: list[Crystal] = []
    if augment is not None:  # joins every training set, never a held-out one
        extra, report_skips["augment"] = read_property_data(augment, target)
    rows: list[dict] = []

    def evaluate_on(model: Any, train: list, held: list, fold: int | str) -> dict:
        """Score a trained model, the composition baseline and the mean predictor on ``held``."""
        y = np.array([c.meta["target"] for c in held])
        pred = predict_property(model, held)
        base = composition_baseline(train, held) if baseline else np.full(len(held), np.nan)
        mean_pred = float(np.mean([c.meta["target"] for c in train]))
        for c, p, b in zip(held, pred, base):
            rows.append({"id": c.meta["id"], "fold": fold, "target": c.meta["target"], "prediction": float(p),
                         "baseline_composition": float(b) if baseline else ""})
        return {"mae": float(np.abs(pred - y).mean()),
                "mae_composition_baseline": float(np.abs(base - y).mean()) if baseline else None,
                "mae_mean_predictor": float(np.abs(mean_pred - y).mean()), "n": len(held)}

    if val is not None or test is not None:
        mode = "splits"
        held = {}
        for name, p in (("val", val), ("test", test)):
            if p is not None:
                held[name], report_skips[name] = read_property_data(p, target)
        model = _train_one(config, crystals + extra, held.get("val", []), target, init, out / "model", device, progress)
        summary_scores = {name: evaluate_on(model, crystals, cs, name) for name, cs in held.items() if cs}
    else:
        mode = f"{folds}-fold"
        idx = fold_indices(len(crystals), folds, seed)
        write_json({"seed": seed, "folds": [[crystals[i].meta["id"] for i in f] for f in idx]}, out / "folds.json")
        per_fold = []
        for k, f in enumerate(idx):
            held_out = set(f.tolist())
            train = [c for i, c in enumerate(crystals) if i not in held_out]
            test_fold = [crystals[i] for i in f]
            # the held-out fold only monitors the loss: nothing is selected on it
            model = _train_one(config, train + extra, test_fold, target, init, out / f"fold{k}", device, progress)
            per_fold.append(evaluate_on(model, train, test_fold, k))
        maes = [r["mae"] for r in per_fold]
        summary_scores = {"mae": float(np.mean(maes)), "mae_std_over_folds": float(np.std(maes)), "mae_per_fold": maes,
                          "mae_composition_baseline": float(np.mean([r["mae_composition_baseline"] for r in per_fold]))
                          if baseline else None,
                          "mae_mean_predictor": float(np.mean([r["mae_mean_predictor"] for r in per_fold]))}

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["id", "fold", "target", "prediction", "baseline_composition"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "predictions.csv", buf.getvalue())
    _parity_plot(rows, target, out / "parity.png")
    summary = {"task": str(data), "target": target, "mode": mode, "init": init, "n_used": len(crystals),
               "augment": {"path": str(augment), "n_used": len(extra)} if augment is not None else None,
               "skipped": {k: {"count": len(v), "examples": [f"{a}: {b}" for a, b in v[:10]]} for k, v in report_skips.items()},
               "scores": summary_scores, "train_config": config.get("train", {}), "seconds": round(time.time() - t0, 1)}
    write_json(summary, out / "summary.json")
    if on_skip is not None:
        for k, v in report_skips.items():
            if v:
                on_skip(f"{k}: skipped {len(v)} rows (e.g. {v[0][0]}: {v[0][1]})")
    return summary


def _parity_plot(rows: list[dict], target: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.array([r["target"] for r in rows])
    p = np.array([r["prediction"] for r in rows])
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.scatter(y, p, s=6, alpha=0.5, color="#4477aa", label="DAO-P")
    lo, hi = float(min(y.min(), p.min())), float(max(y.max(), p.max()))
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
    ax.set_xlabel(f"{target} (reference)")
    ax.set_ylabel(f"{target} (predicted)")
    ax.set_title(f"MAE {np.abs(p - y).mean():.4g} (n = {len(y)})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
