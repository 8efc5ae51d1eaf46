"""The ``dao`` command line. Every user error is one line on stderr and a non-zero exit."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from dao.errors import DAOError

DEVICE = click.Choice(["auto", "cpu", "cuda"])


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
@click.option("--model", default="default", show_default=True, help="DAO-G checkpoint (model.pt), 'default', 'default-diffusion' or 'default-flow'.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--energy-model", default=None,
              help="DAO-P checkpoint (or 'default') for energy-guided sampling; same diffusion schedule as --model.")
@click.option("--guidance-scale", type=float, default=None,
              help="Energy-guidance scale s (needs --energy-model; default 20, the published value).")
@click.option("--method", type=click.Choice(["diffusion", "flow"]), default=None,
              help="With --model default: the bundled generator of this kind; with a checkpoint: require that kind.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the network: slow first batch, faster sampling after (long jobs).")
def predict(formula, n, out, atoms, max_atoms, seed, steps, model, device, batch_size, progress, energy_model,
            guidance_scale, method, compile_) -> None:
    """Predict crystal structures for FORMULA; writes CIFs, samples.extxyz and summary.json."""
    from dao.prediction import run_predict

    if out is None:
        out = Path("predictions") / "".join(ch for ch in formula if ch.isalnum() or ch in "()") if formula.strip() else Path("predictions")
    summary = run_predict(formula, n, out, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                          energy_model=energy_model, guidance_scale=guidance_scale, method=method,
                          compile=compile_)
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
@click.option("--model", default="default", show_default=True, help="DAO-G checkpoint, 'default', 'default-diffusion' or 'default-flow'.")
@click.option("-k", "k", type=click.IntRange(1), default=1, show_default=True, help="Samples per composition.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N rows of the split.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (resumable).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(2), default=None, help="Sampling steps (default: the model's).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Evaluation processes.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the network: slow first batch, faster sampling after (long jobs).")
def benchmark(split, model, k, limit, out, seed, steps, device, batch_size, workers, progress, compile_) -> None:
    """Generate k structures for every composition of a split, then score them (as `dao evaluate`)."""
    from dao.benchmark import run_benchmark

    if not split.is_file():
        raise DAOError(f"split file not found: {split}")
    s = run_benchmark(split, model, k, out, limit, seed, steps, device, batch_size, workers, progress, compile=compile_)
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
    click.option("--seed", type=int, default=None, help="Overrides train.seed of the config."),
    click.option("--device", type=DEVICE, default="auto", show_default=True),
    click.option("--devices", default="auto", show_default=True, help="GPUs (or CPU processes) per node."),
    click.option("--num-nodes", type=int, default=1, show_default=True),
    click.option("--max-time", default=None, help="Wall-clock budget DD:HH:MM:SS (overrides config)."),
    click.option("--init", "init", default=None,
                 help="Start from this checkpoint's weights and model config (stage II, finetuning); the train "
                      "section still comes from --config."),
]

_MODEL_NAMES = {"generator": "DAO-G", "energy": "DAO-P"}


def _train_options(f):
    for option in reversed(_TRAIN_OPTIONS):
        f = option(f)
    return f


def run_training(kind: str, data, val, exclude, config, out, resume, seed, device, devices, num_nodes, max_time,
                 method: str | None = None, init: str | None = None) -> Path:
    """Everything `dao train <kind>` does: read and filter data, build the model of that kind, fit."""
    import torch

    from dao.data.dedupe import remove_overlap
    from dao.data.readers import read_any
    from dao.models.checkpoint import model_class
    from dao.runtime import resolve_device
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
    if init is not None:
        from dao.models.checkpoint import load_model

        model = load_model(init, kind).train()
        if method is not None and method != getattr(model, "method", method):
            raise DAOError(f"--method {method}, but --init {init} is a {model.method} model")
    else:
        if method is not None:
            cfg["method"] = method
        torch.manual_seed(tcfg.seed)  # the seed governs the initial weights too
        model = model_class(kind, cfg).from_training_data(cfg, crystals)
    name = _MODEL_NAMES.get(kind, kind)
    click.echo(f"training {name} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on "
               f"{len(crystals)} crystals, validating on {len(val_crystals)}", err=True)
    energy_cfg = getattr(model.config, "energy", None)
    if energy_cfg is not None:
        click.echo(f"  energy labels: {energy_cfg.num_labels} of {len(crystals)} training crystals; standardised "
                   f"with mean {energy_cfg.mean:.4f}, std {energy_cfg.std:.4f} eV/atom", err=True)
    meta = {"data": [str(p) for p in data], "val": [str(p) for p in val], "exclude": [str(p) for p in exclude],
            "data_report": report, "command": " ".join(sys.argv), "init": init}
    path = fit(model, crystals, val_crystals, tcfg, out, resume=resume, device=resolve_device(device).type,
               devices=devices if devices == "auto" else int(devices), num_nodes=num_nodes, meta=meta)
    click.echo(f"model written to {path}", err=True)
    return path


@train.command("generator")
@_train_options
@click.option("--method", type=click.Choice(["diffusion", "flow"]), default=None,
              help="Diffusion (DESIGN §3, default) or flow matching; overrides `method:` of the config.")
def train_generator(**options) -> None:
    """Train a DAO-G structure generator (diffusion or flow matching)."""
    run_training("generator", **options)


@train.command("energy")
@_train_options
def train_energy(**options) -> None:
    """Train a DAO-P energy predictor (noise heads + energy head; needs e_above_hull labels).

    Same data, config (plus an optional `energy:` section: beta, loss_weight, max_label) and run
    directory layout as `dao train generator`.
    """
    run_training("energy", **options)


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", default="default", show_default=True, help="DAO-P checkpoint or 'default'.")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Also write the JSON lines to this file.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "table"]), default="jsonl", show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
def energy(files, model, out, fmt, device, batch_size) -> None:
    """Predict the energy above hull (eV/atom) of structure FILES with DAO-P at t = 0.

    FILES are CIFs (or CSV/extxyz/folders). One JSON line (or table row) per structure on stdout; an
    unreadable file gives one `dao: error:` line on stderr and is skipped. Exit code 2 only when nothing
    could be read.
    """
    from dao.models.checkpoint import load_energy_model
    from dao.models.energy import predict_energies
    from dao.runtime import resolve_device
    from dao.relax import read_inputs, report_unreadable
    from dao.structure_io import atomic_write_text

    e_model = load_energy_model(model, resolve_device(device))
    items, errors = read_inputs(files)
    report_unreadable(items, errors, lambda msg: click.echo(f"dao: error: {msg}", err=True))
    preds = predict_energies(e_model, [c for _, c in items], batch_size=batch_size)
    rows = [{"name": name, "source": str(c.meta.get("source", "")), "formula": c.to_structure().composition.reduced_formula,
             "num_atoms": c.num_atoms, "e_above_hull_pred": round(float(e), 6)} for (name, c), e in zip(items, preds)]
    lines = [json.dumps(r) for r in rows]
    if fmt == "jsonl":
        click.echo("\n".join(lines))
    else:
        w = max(len(r["name"]) for r in rows)
        click.echo(f"{'name':<{w}}  {'formula':<12} {'atoms':>5}  E_hull (eV/atom)")
        for r in rows:
            click.echo(f"{r['name']:<{w}}  {r['formula']:<12} {r['num_atoms']:>5}  {r['e_above_hull_pred']:.4f}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, "\n".join(lines) + "\n")


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
@click.option("--seed", type=int, default=0, show_default=True, help="Fold assignment and training seed.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Also score a composition-only ridge regression on the same folds.")
@click.option("--augment", type=click.Path(path_type=Path), default=None,
              help="Extra training structures (CSV with the same target column, e.g. from `dao data tc-augment`): "
                   "added to every training fold, never to a held-out one.")
def train_property(data, target, folds, val, test, init, config, out, seed, device, baseline, augment) -> None:
    """Finetune DAO-P on a property (fresh head at t = 0, standardised target, MAE); k-fold CV or splits.

    Writes OUT/predictions.csv, summary.json, parity.png, folds.json and OUT/fold<k>/model.pt (the fold
    ensemble used by `dao predict-property --model OUT`).
    """
    from dao.property import run_property
    from dao.runtime import resolve_device
    from dao.train import load_config

    cfg = load_config(config)
    cfg.setdefault("train", {}).setdefault("seed", seed)
    if init == "default":
        from dao.models.checkpoint import resolve_model_path

        init = str(resolve_model_path("default", "energy"))
    if init is not None:
        from dao.models.checkpoint import load_checkpoint

        cfg["model"] = load_checkpoint(init)["config"]["model"]  # the backbone's architecture comes with it
    summary = run_property(data, target, out, cfg, folds=folds, init=init, val=val, test=test,
                           device=resolve_device(device).type, seed=seed, baseline=baseline, augment=augment,
                           on_skip=lambda msg: click.echo(f"dao: {msg}", err=True))
    click.echo(json.dumps({"target": target, "mode": summary["mode"], "n": summary["n_used"], **summary["scores"]}))


@cli.command("tc")
@click.argument("formula")
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A `dao train property --target logtc` folder (its fold models form the ensemble).")
@click.option("-n", "n", type=click.IntRange(1), default=5, show_default=True, help="Structures to generate.")
@click.option("--generator", default="default", show_default=True, help="DAO-G checkpoint.")
@click.option("--energy-model", default=None, help="DAO-P for energy-guided generation.")
@click.option("--guidance-scale", type=float, default=None)
@click.option("--steps", type=click.IntRange(2), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=DEVICE, default="auto", show_default=True)
def tc(formula, model, n, generator, energy_model, guidance_scale, steps, seed, device) -> None:
    """Predict the superconducting Tc of FORMULA: generate structures, score them with the ln Tc fold
    ensemble, report Tc (K) with the spread over structures and over models. Fractional formulas
    (La1.85Sr0.15CuO4) are scaled to the smallest whole-atom cell the generator supports."""
    from dao.models.checkpoint import load_generator
    from dao.prediction import guidance_for
    from dao.property import load_property_models
    from dao.runtime import resolve_device
    from dao.superconductors import predict_tc

    dev = resolve_device(device)
    models = load_property_models(model, dev)
    gen = load_generator(generator, dev)
    guidance, _ = guidance_for(gen, energy_model, guidance_scale, dev)
    click.echo(json.dumps(predict_tc(formula, gen, models, n=n, seed=seed, steps=steps, guidance=guidance)))


@cli.command("predict-property")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", required=True, type=click.Path(path_type=Path),
              help="A property model.pt, or a `dao train property` folder (mean of its fold models).")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
def predict_property_command(files, model, device) -> None:
    """Predict a trained property for structure FILES (CIF, CSV, extxyz, folders); one JSON line each."""
    from dao.property import load_property_models, predict_property
    from dao.relax import read_inputs, report_unreadable
    from dao.runtime import resolve_device

    models = load_property_models(model, resolve_device(device))
    items, errors = read_inputs(files)
    report_unreadable(items, errors, lambda msg: click.echo(f"dao: error: {msg}", err=True))
    preds = [predict_property(m, [c for _, c in items]) for m in models]
    mean, spread = np.mean(preds, axis=0), np.std(preds, axis=0)
    target = models[0].config.target
    for (name, c), m, sd in zip(items, mean, spread):
        click.echo(json.dumps({"name": name, "formula": c.to_structure().composition.reduced_formula,
                               target: round(float(m), 6), "ensemble_std": round(float(sd), 6),
                               "models": len(models)}))


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--potential", type=click.Choice(["dao", "chgnet"]), default="dao", show_default=True,
              help="dao: DAO-P at t = 0; chgnet: the pretrained CHGNet universal potential (pip extra dao-csp[chgnet]).")
@click.option("--model", default="default", show_default=True,
              help="DAO-P checkpoint or 'default'; with --potential chgnet a CHGNet version (default 0.3.0).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder (relaxed CIFs, trajectories, summary.json).")
@click.option("--steps", type=click.IntRange(1), default=500, show_default=True, help="FIRE steps per structure.")
@click.option("--fmax", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True,
              help="Convergence: max force (eV/Å), and the cell filter's stress term.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds of potential time per structure (a batched step's time is shared by atom count); "
                   "a structure past it stops with status 'timeout'.")
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True,
              help="Structures relaxed together (one batched potential call per step).")
@click.option("--max-volume-ratio", type=click.FloatRange(min=1, min_open=True), default=3.0, show_default=True,
              help="Abort a structure whose volume grows or shrinks by more than this factor.")
@click.option("--trajectory-every", type=click.IntRange(0), default=1, show_default=True,
              help="Write OUT/<name>.traj.extxyz with every N-th step (0: no trajectories).")
@click.option("--fixed-cell", is_flag=True, help="Relax positions only.")
@click.option("--device", type=DEVICE, default="cpu", show_default=True)
def relax(files, potential, model, out, steps, fmax, timeout, batch_size, max_volume_ratio, trajectory_every,
          fixed_cell, device) -> None:
    """Relax structure FILES (FIRE over positions and cell with ASE's FrechetCellFilter, batched).

    Writes OUT/<name>.cif for every converged, step-limited or timed-out structure, its trajectory and
    OUT/summary.json, all at once; aborted structures (exploding cell, NaN) get no CIF.
    """
    from dao.relax import run_relax

    summary = run_relax(files, model, out, steps=steps, fmax=fmax, device=device, max_volume_ratio=max_volume_ratio,
                        relax_cell=not fixed_cell, on_error=lambda msg: click.echo(f"dao: error: {msg}", err=True),
                        potential=potential, timeout=timeout, batch_size=batch_size,
                        trajectory_every=trajectory_every, progress=True)
    for r in summary["structures"]:
        if "cif" in r:
            click.echo(f"  {r['cif']}: {r['status']} after {r['steps']} steps, E {r['energy_initial']:.4f} → "
                       f"{r['energy_final']:.4f} eV/atom, V {r['volume_initial']:.1f} → {r['volume_final']:.1f} Å³")
    click.echo(f"relaxed {summary['num_written']} of {summary['num_inputs']} structures "
               f"({summary['num_converged']} converged) into {out} in {summary['seconds']:.1f} s")


def _register_optional() -> None:
    from dao.cli.data import data_group

    from dao.cli.evaluate import evaluate_command

    cli.add_command(data_group, "data")
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
