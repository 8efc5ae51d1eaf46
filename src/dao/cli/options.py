"""Option types and decorators shared by several ``dao`` commands."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, TypeVar

import click

from dao.diffusion.registry import methods

F = TypeVar("F", bound=Callable)

#: the ``--device`` choice of every command that runs a model
DEVICE = click.Choice(["auto", "cpu", "cuda"])
#: the ``--method`` choice: every registered generative process (dao.diffusion.registry), e.g. diffusion, flow
METHOD = click.Choice(methods())
#: ``--overwrite`` of every command that writes a whole output folder (dao.structure_io.claim_output_dir)
OVERWRITE = click.option("--overwrite", is_flag=True,
                         help="Replace a non-empty --out folder (as a whole, atomically); without it such a folder "
                              "is refused.")
#: the ``--seed`` type of every command: 0 ≤ seed < 2**63 (what torch's and numpy's generators accept)
SEED = click.IntRange(0, 2**63 - 1)

_TRAIN_OPTIONS = [
    click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
                 help="Training structures: CSV(.gz) in DiffCSP format, CIF folder or extxyz. Repeatable."),
    click.option("--val", "val", multiple=True, type=click.Path(path_type=Path), help="Validation structures (repeatable)."),
    click.option("--exclude", multiple=True, type=click.Path(path_type=Path),
                 help="Held-out structures: matching training entries (same id or same structure) are dropped."),
    click.option("--config", type=click.Path(path_type=Path), help="YAML with model/diffusion/train sections."),
    click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory."),
    click.option("--resume/--no-resume", default=True, show_default=True,
                 help="Continue from OUT/checkpoints/last.ckpt if present."),
    click.option("--seed", type=SEED, default=None, help="Overrides train.seed of the config."),
    click.option("--device", type=DEVICE, default="auto", show_default=True),
    click.option("--devices", default="auto", show_default=True, help="GPUs (or CPU processes) per node."),
    click.option("--num-nodes", type=int, default=1, show_default=True),
    click.option("--max-time", default=None, help="Wall-clock budget DD:HH:MM:SS (overrides config)."),
    click.option("--init", "init", default=None,
                 help="Start from this checkpoint's weights and model config (stage II, finetuning); the train "
                      "section still comes from --config."),
]


def train_options(f: F) -> F:
    """The options shared by ``dao train generator`` and ``dao train energy``."""
    for option in reversed(_TRAIN_OPTIONS):
        f = option(f)
    return f


def echo_error(message: str) -> None:
    """Report one unreadable input as a ``dao: error:`` line on stderr (the command goes on)."""
    click.echo(f"dao: error: {message}", err=True)


#: exit code of a multi-file command that processed its good inputs but was given bad ones
EXIT_SOME_INPUTS_BAD = 1


class BadInputs:
    """The rule of multi-file commands (energy, relax, predict-property): every good input is processed and
    every bad one reported as a ``dao: error:`` line; then the command exits 1 if any input was bad. When no
    input is usable at all, the command fails with exit code 2 before writing anything."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str) -> None:
        self.count += 1
        echo_error(message)

    def exit_if_any(self) -> None:
        if self.count:
            click.echo(f"dao: {self.count} input(s) could not be used (listed above); the others were processed",
                       err=True)
            sys.exit(EXIT_SOME_INPUTS_BAD)


def echo_stderr(message: str) -> None:
    """A progress or status line on stderr (stdout is for results)."""
    click.echo(message, err=True)
