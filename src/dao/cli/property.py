"""``dao tc`` and ``dao predict-property``: trained property-model ensembles (see :mod:`dao.property_models`)."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dao.cli.options import DEVICE, SEED, BadInputs


@click.command("tc")
@click.argument("formula")
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A `dao train property --target logtc` folder (its fold models form the ensemble).")
@click.option("-n", "n", type=click.IntRange(1), default=5, show_default=True, help="Structures to generate.")
@click.option("--generator", default="default", show_default=True, help="DAO-G checkpoint.")
@click.option("--energy-model", default=None, help="DAO-P for energy-guided generation.")
@click.option("--guidance-scale", type=float, default=None)
@click.option("--steps", type=click.IntRange(2), default=None)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def tc(formula: str, model: Path, n: int, generator: str, energy_model: str | None, guidance_scale: float | None,
       steps: int | None, seed: int, device: str) -> None:
    """Predict the superconducting Tc of FORMULA: generate structures, score them with the ln Tc fold
    ensemble, report Tc (K) with the spread over structures and over models. Fractional formulas
    (La1.85Sr0.15CuO4) are scaled to the smallest whole-atom cell the generator supports."""
    from dao.property_models import predict_tc_for_formula

    click.echo(json.dumps(predict_tc_for_formula(formula, model, n=n, generator=generator, energy_model=energy_model,
                                                 guidance_scale=guidance_scale, steps=steps, seed=seed,
                                                 device=device)))


@click.command("predict-property")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A property model.pt, or a `dao train property` folder (mean of its fold models).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
def predict_property_command(files: tuple[Path, ...], model: Path, device: str) -> None:
    """Predict a trained property for structure FILES (CIF, CSV, extxyz, folders); one JSON line each."""
    from dao.property_models import predict_property_files

    bad = BadInputs()
    for row in predict_property_files(files, model, device=device, on_error=bad):
        click.echo(json.dumps(row))
    bad.exit_if_any()
