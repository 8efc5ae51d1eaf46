"""The ``dao`` command line. Every user error is one line on stderr and a non-zero exit.

One module per command group, each a thin layer of option parsing over one library function:
:mod:`dao.cli.predict` (predict, benchmark, info), :mod:`dao.cli.train` (train generator|energy|property),
:mod:`dao.cli.energy`, :mod:`dao.cli.property` (tc, predict-property), :mod:`dao.cli.relax`,
:mod:`dao.cli.data` (data ...) and :mod:`dao.cli.evaluate`. Heavy libraries (torch) are imported inside
the commands, so ``dao --help`` stays fast.
"""
from __future__ import annotations

import sys

import click

from dao.cli.convert import convert_checkpoint_command
from dao.cli.data import data_group
from dao.cli.energy import energy
from dao.cli.evaluate import evaluate_command
from dao.cli.predict import benchmark, info, predict
from dao.cli.property import predict_property_command, tc
from dao.cli.relax import relax
from dao.cli.train import train
from dao.cli.xrd import xrd
from dao.errors import DAOError

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dao-csp", prog_name="dao")
@click.option("--threads", type=click.IntRange(1), default=None, envvar="DAO_NUM_THREADS", show_envvar=True,
              help="CPU threads for torch (default: torch's own choice, one per core). Use 1 per process when "
                   "several jobs share a machine: oversubscribed threads can slow sampling many times over.")
def cli(threads: int | None) -> None:
    """DAO: crystal structure prediction with Siamese foundation models (Crysformer, DAO-G, DAO-P)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


for _command in (predict, benchmark, info, train, energy, tc, predict_property_command, relax, xrd):
    cli.add_command(_command)
cli.add_command(convert_checkpoint_command)
cli.add_command(data_group, "data")
cli.add_command(evaluate_command, "evaluate")
cli.add_command(__import__("dao.cli.templates", fromlist=["x"]).templates_group, "templates")


def main(argv: list[str] | None = None) -> None:
    """Run ``dao`` with ``argv`` (default: the process's arguments); errors become one line and an exit code."""
    try:
        cli.main(args=argv, prog_name="dao", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("dao: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DAOError as exc:
        click.echo(f"dao: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("dao: interrupted", err=True)
        sys.exit(130)
    except OSError as exc:
        click.echo(f"dao: error: {exc.strerror or exc}: {getattr(exc, 'filename', '') or ''}".rstrip(": "), err=True)
        sys.exit(2)
