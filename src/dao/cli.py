"""The ``dao`` command line. Every user error is one line on stderr and a non-zero exit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from dao.errors import DAOError

DEVICE = click.Choice(["auto", "cpu", "cuda"])


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise DAOError("--device cuda requested but no CUDA GPU is available")
    return device


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="dao-csp", prog_name="dao")
def cli() -> None:
    """DAO: crystal structure prediction with Siamese foundation models (Crysformer, DAO-G, DAO-P)."""


@cli.command()
@click.argument("formula")
@click.option("-n", "--num-samples", "n", type=click.IntRange(1, 10000), default=5, show_default=True,
              help="Structures to generate per cell.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: predictions/<formula>).")
@click.option("--atoms", type=click.IntRange(1), default=None, help="Atoms per cell (a multiple of the reduced formula).")
@click.option("--max-atoms", type=click.IntRange(1), default=None,
              help="Enumerate every cell multiple Z of the reduced formula up to this many atoms.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(2), default=None,
              help="Sampling steps (default: the model's full schedule, diffusion.num_steps in `dao info`).")
@click.option("--model", default="default", show_default=True, help="DAO-G checkpoint (model.pt) or 'default'.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def predict(formula, n, out, atoms, max_atoms, seed, steps, model, device, batch_size, progress) -> None:
    """Predict crystal structures for FORMULA; writes CIFs, samples.extxyz and summary.json."""
    from dao.predict import run_predict

    if out is None:
        out = Path("predictions") / "".join(ch for ch in formula if ch.isalnum() or ch in "()") if formula.strip() else Path("predictions")
    summary = run_predict(formula, n, out, atoms, max_atoms, seed, steps, model, device, batch_size, progress)
    for rec in summary["samples"]:
        if "error" in rec:
            click.echo(f"  {rec['name']}: skipped ({rec['error']})", err=True)
        else:
            lat = rec["lattice"]
            click.echo(f"  {rec['cif']}: {rec['space_group']['symbol']} (#{rec['space_group']['number']}), "
                       f"a={lat['a']:.3f} b={lat['b']:.3f} c={lat['c']:.3f} Å, V={lat['volume']:.1f} Å³")
    click.echo(f"wrote {summary['num_written']} structures to {out} in {summary['seconds']:.1f} s")


@cli.command()
@click.option("--split", type=click.Path(path_type=Path), required=True, help="CSP split CSV (DiffCSP format).")
@click.option("--model", default="default", show_default=True, help="DAO-G checkpoint or 'default'.")
@click.option("-k", "k", type=click.IntRange(1), default=1, show_default=True, help="Samples per composition.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N rows of the split.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (resumable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(2), default=None, help="Sampling steps (default: the model's).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Evaluation processes.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def benchmark(split, model, k, limit, out, seed, steps, device, batch_size, workers, progress) -> None:
    """Generate k structures for every composition of a split, then score them (as `dao evaluate`)."""
    from dao.benchmark import run_benchmark

    if not split.is_file():
        raise DAOError(f"split file not found: {split}")
    s = run_benchmark(split, model, k, out, limit, seed, steps, device, batch_size, workers, progress)
    g = s["generation"]
    click.echo(json.dumps({key: s.get(key) for key in ("n_references", "match_rate", "rmse", "match_rate_unfiltered",
                                                      "rmse_unfiltered")} | {"seconds_per_structure": g["seconds_per_structure_this_run"]}))


@cli.command()
@click.option("--model", default="default", show_default=True, help="Checkpoint to describe.")
def info(model) -> None:
    """Describe a checkpoint: kind, config, size limits, training data and metrics (JSON)."""
    from dao.models.checkpoint import load_checkpoint

    ckpt = load_checkpoint(model)
    n_params = sum(v.numel() for v in ckpt["state_dict"].values())
    meta = {k: v for k, v in ckpt.get("meta", {}).items() if k not in ("data_report",)}
    click.echo(json.dumps({"path": ckpt["path"], "kind": ckpt["kind"], "parameters": n_params,
                           "config": ckpt["config"], "meta": meta}, indent=2, default=str))


@cli.group()
def train() -> None:
    """Train DAO models (Lightning: CPU, GPU, multi-GPU/multi-node DDP)."""


@train.command("generator")
@click.option("--data", "data", multiple=True, required=True, type=click.Path(path_type=Path),
              help="Training structures: CSV(.gz) in DiffCSP format, CIF folder or extxyz. Repeatable.")
@click.option("--val", "val", multiple=True, type=click.Path(path_type=Path), help="Validation structures (repeatable).")
@click.option("--exclude", multiple=True, type=click.Path(path_type=Path),
              help="Held-out structures: matching training entries (same id or same structure) are dropped.")
@click.option("--config", type=click.Path(path_type=Path), help="YAML with model/diffusion/train sections.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory.")
@click.option("--resume/--no-resume", default=True, show_default=True, help="Continue from OUT/checkpoints/last.ckpt if present.")
@click.option("--seed", type=int, default=None, help="Overrides train.seed of the config.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--devices", default="auto", show_default=True, help="GPUs (or CPU processes) per node.")
@click.option("--num-nodes", type=int, default=1, show_default=True)
@click.option("--max-time", default=None, help="Wall-clock budget DD:HH:MM:SS (overrides config).")
def train_generator(data, val, exclude, config, out, resume, seed, device, devices, num_nodes, max_time) -> None:
    """Train a DAO-G structure generator."""
    from dao.data.dedupe import remove_overlap
    from dao.data.readers import read_any
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.train import TrainConfig, fit, load_config, load_crystals

    cfg = load_config(config)
    tcfg = TrainConfig.from_dict(cfg.get("train", {}))
    if seed is not None:
        tcfg.seed = seed
    if max_time is not None:
        tcfg.max_time = max_time
    crystals, report = load_crystals(data, tcfg.min_atoms, tcfg.max_atoms)
    val_crystals, val_report = load_crystals(val, tcfg.min_atoms, tcfg.max_atoms) if val else ([], {})
    excluded = []
    for p in exclude:
        excluded += read_any(p)[0]
    if excluded:
        crystals, removed = remove_overlap(crystals, excluded)
        report["removed_overlapping_excluded"] = removed
    if not crystals:
        raise DAOError("no training structures left after reading and filtering")
    gcfg = GeneratorConfig.from_dict({**cfg, "max_atoms": max(c.num_atoms for c in crystals)})
    model = DAOGenerator(gcfg)
    click.echo(f"training DAO-G ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
               f"{len(crystals)} crystals, validating on {len(val_crystals)}", err=True)
    meta = {"data": [str(p) for p in data], "val": [str(p) for p in val], "exclude": [str(p) for p in exclude],
            "data_report": report, "command": " ".join(sys.argv)}
    path = fit(model, crystals, val_crystals, tcfg, out, resume=resume, device=resolve_device(device),
               devices=devices if devices == "auto" else int(devices), num_nodes=num_nodes, meta=meta)
    click.echo(f"model written to {path}", err=True)


def _register_optional() -> None:
    try:
        from dao.evaluate.cli import evaluate_command
    except ImportError:
        return
    cli.add_command(evaluate_command, "evaluate")


_register_optional()


def main(argv: list[str] | None = None) -> None:
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
