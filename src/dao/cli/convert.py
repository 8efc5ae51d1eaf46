"""``dao convert-checkpoint``: official DAO (GLAD-RUC/DAO) checkpoints → DAO checkpoints (see
:mod:`dao.models.convert`, docs/convert.md)."""
from __future__ import annotations

import math
from pathlib import Path

import click


@click.command("convert-checkpoint")
@click.argument("official", type=click.Path(path_type=Path))
@click.option("--kind", type=click.Choice(["generator", "energy", "property"]), required=True,
              help="What the official checkpoint holds: DAO-G (generator), DAO-P (energy) or a finetuned "
                   "property model (property).")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="DAO checkpoint to write (model.pt).")
@click.option("--heads", type=click.IntRange(1), default=None,
              help="Attention heads, when the checkpoint's hyper-parameters do not say (decoder.head_num).")
@click.option("--mean", type=float, default=0.0, show_default=True,
              help="Mean of the official scalar target (energy/property; the official scaler is not in the checkpoint).")
@click.option("--std", type=float, default=1.0, show_default=True, help="Std of the official scalar target.")
@click.option("--scaler", type=click.Path(path_type=Path), default=None,
              help="The official scaler file (prop_scaler.pt beside the checkpoint): mean and std from it.")
@click.option("--max-atoms", type=click.IntRange(1), default=52, show_default=True,
              help="Largest cell the model is meant for (recorded in the config; MP-20: 20, MPTS-52: 52).")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
def convert_checkpoint_command(official: Path, kind: str, out: Path, heads: int | None, mean: float, std: float,
                               max_atoms: int, scaler: Path | None, overwrite: bool) -> None:
    """Convert an OFFICIAL Lightning checkpoint (.ckpt) of DAO-G, DAO-P or a finetuned model into a DAO
    checkpoint, loaded without executing any code from the file.

    The result works with every command that takes --model / --energy-model, e.g.
    `dao predict Li2O --model dao_g.pt --energy-model dao_p.pt`.
    """
    from dao.errors import DAOError
    from dao.models.convert import convert_checkpoint

    if out.exists() and not overwrite:
        raise DAOError(f"{out} exists (use --overwrite to replace it)")
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise DAOError("--mean and --std must be finite numbers")
    convert_checkpoint(official, kind, out, heads=heads, mean=mean, std=std, max_atoms=max_atoms,
                       scaler=scaler, log=lambda line: click.echo(line, err=True))
