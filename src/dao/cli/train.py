"""``dao train generator|energy|property``: option parsing over :func:`dao.train.train_model` and
:func:`dao.property_models.train_property_task`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from dao.cli.options import DEVICE, METHOD, SEED, echo_stderr, train_options
from dao.errors import DAOError


@click.group("train")
def train() -> None:
    """Train DAO models (Lightning: CPU, GPU, multi-GPU/multi-node DDP)."""


def _devices(value: str) -> int | str:
    """``--devices``: "auto" or a count."""
    if value == "auto":
        return value
    try:
        return int(value)
    except ValueError:
        raise DAOError(f"--devices: expected 'auto' or an integer, got {value!r}") from None


@train.command("generator")
@train_options
@click.option("--method", type=METHOD, default=None,
              help="Diffusion (default; docs/design.md, 'Diffusion (DAO-G)') or flow matching; overrides "
                   "`method:` of the config.")
def train_generator(devices: str, **options: Any) -> None:
    """Train a DAO-G structure generator (diffusion or flow matching)."""
    from dao.train import train_model

    train_model("generator", devices=_devices(devices), log=echo_stderr, **options)


@train.command("energy")
@train_options
def train_energy(devices: str, **options: Any) -> None:
    """Train a DAO-P energy predictor (noise heads + energy head; needs e_above_hull labels).

    Same data, config (plus an optional `energy:` section: beta, loss_weight, max_label) and run
    directory layout as `dao train generator`.
    """
    from dao.train import train_model

    train_model("energy", devices=_devices(devices), log=echo_stderr, **options)


@train.command("property")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="CSV with a cif column and the target column.")
@click.option("--target", required=True, help="Target column (e.g. bulk_modulus, heat_ref, logtc).")
@click.option("--folds", type=click.IntRange(2), default=5, show_default=True,
              help="k-fold cross-validation with fixed, seeded folds (ignored with --val/--test).")
@click.option("--val", type=click.Path(path_type=Path), default=None, help="Validation split CSV (split mode).")
@click.option("--test", type=click.Path(path_type=Path), default=None, help="Test split CSV (split mode).")
@click.option("--init", default=None, help="Pretrained DAO-P (or DAO-G) checkpoint for the backbone; 'default' = bundled DAO-P.")
@click.option("--config", type=click.Path(path_type=Path), default=None,
              help="YAML with model, property (loss: l1|mse) and train sections.")
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Fold assignment and training seed.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score a composition-only ridge regression on the same folds.")
@click.option("--augment", type=click.Path(path_type=Path), default=None,
              help="Extra training structures (CSV with the same target column, e.g. from `dao data tc-augment`): "
                   "added to every training fold, never to a held-out one.")
def train_property(data: Path, target: str, folds: int, val: Path | None, test: Path | None, init: str | None,
                   config: Path | None, out: Path, seed: int, device: str, baseline: bool,
                   augment: Path | None) -> None:
    """Finetune DAO-P on a property (fresh head at t = 0, standardised target, MAE); k-fold CV or splits.

    Writes OUT/predictions.csv, summary.json, parity.png, folds.json and OUT/fold<k>/model.pt (the fold
    ensemble used by `dao predict-property --model OUT`).
    """
    from dao.property_models import train_property_task

    summary = train_property_task(data, target, out, config=config, folds=folds, init=init, val=val, test=test,
                                  device=device, seed=seed, baseline=baseline, augment=augment,
                                  on_skip=lambda msg: click.echo(f"dao: {msg}", err=True))
    click.echo(json.dumps({"target": target, "mode": summary["mode"], "n": summary["n_used"], **summary["scores"]}))
