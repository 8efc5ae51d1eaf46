"""``dao predict``, ``dao benchmark`` and ``dao info``: sampling with DAO-G and describing checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import click

from dao.cli.options import DEVICE, METHOD, OVERWRITE, SEED
from dao.constants import TEMPLATE_GUARDS
from dao.errors import DAOError


def default_out(formula: str) -> Path:
    """``predictions/<formula>`` with only the formula's letters, digits and parentheses."""
    if not formula.strip():
        return Path("predictions")
    return Path("predictions") / "".join(ch for ch in formula if ch.isalnum() or ch in "()")


@click.command("predict")
@click.argument("formula")
@click.option("-n", "--num-samples", "n", type=click.IntRange(1, 10000), default=5, show_default=True,
              help="Structures written: the top n of the ranking (with --no-rank: samples per cell).")
@click.option("--rank/--no-rank", default=True, show_default=True,
              help="Rank candidates from templates and the generator (--no-rank: raw samples in sample order).")
@click.option("--judge", type=click.Choice(["auto", "chgnet", "dao", "none"]), default="none", show_default=True,
              help="chgnet: templates ordered by the CHGNet-aware ranker (measured best; pip extra), the other "
                   "candidates by energy after a short relaxation; dao: the latter with DAO-P; none: templates in "
                   "the learned order, then samples; auto: CHGNet if installed.")
@click.option("--templates", default="default", show_default=True,
              help="Template index for ranked prediction: a path, 'default' or 'none'.")
@click.option("--candidates", type=click.IntRange(1, 10000), default=8, show_default=True,
              help="Generated candidates to draw over all cell multiples Z (ranked prediction).")
@click.option("--novel", is_flag=True,
              help="Propose only new structures: none the template index already holds for this composition "
                   "(by default known structures come first).")
@click.option("--random", "random_", type=click.IntRange(0, 1000), default=0, show_default=True,
              help="Random symmetric candidates (pyxtal; pip extra dao-csp[random]) for each cell that no template "
                   "fits; they come last unless a judge ranks them.")
@click.option("--relax-steps", type=click.IntRange(0), default=5, show_default=True,
              help="FIRE steps of the judge's relaxation of each candidate (ranked prediction).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: predictions/<formula>).")
@OVERWRITE
@click.option("--atoms", type=click.IntRange(1), default=None, help="Atoms per cell (a multiple of the reduced formula).")
@click.option("--max-atoms", type=click.IntRange(1), default=None,
              help="Enumerate every cell multiple Z of the reduced formula up to this many atoms (ranked default: 20, or the formula as typed when larger).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(2), default=None,
              help="Sampling steps (default: the model's full schedule, diffusion.num_steps in `dao info`).")
@click.option("--step-lr", type=click.FloatRange(min=0), default=None,
              help="Diffusion corrector step size (default: the checkpoint's, the official value of the dataset "
                   "it was trained on: MP-20/MPTS-52 1e-5, perov-5 5e-7, carbon-24 5e-6).")
@click.option("--model", default="default", show_default=True, help="DAO-G checkpoint (model.pt), 'default', 'default-diffusion' or 'default-flow'.")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--energy-model", default=None,
              help="DAO-P checkpoint (or 'default') for energy-guided sampling; same diffusion schedule as --model.")
@click.option("--guidance-scale", type=float, default=None,
              help="Energy-guidance scale s (needs --energy-model; default 20, the published value).")
@click.option("--method", type=METHOD, default=None,
              help="With --model default: the bundled generator of this kind; with a checkpoint: require that kind.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the network: slow first batch, faster sampling after (long jobs).")
@click.option("--xrd", "xrd_pattern", type=click.Path(path_type=Path), default=None,
              help="Measured powder pattern (2θ/intensity .xy/.csv/.xye): rank the candidates by agreement with it "
                   "(docs/xrd.md); report.html then overlays each structure on it.")
@click.option("--xrd-wavelength", default="CuKa", show_default=True, help="Wavelength of --xrd: Å or a line name.")
def predict(formula: str, n: int, rank: bool, judge: str, templates: str, candidates: int, novel: bool, random_: int,
            relax_steps: int,
            out: Path | None, overwrite: bool, atoms: int | None, max_atoms: int | None, seed: int,
            steps: int | None, step_lr: float | None, model: str, device: str, batch_size: int, progress: bool,
            energy_model: str | None, guidance_scale: float | None, method: str | None, compile_: bool,
            xrd_pattern: Path | None = None, xrd_wavelength: str = "CuKa") -> None:
    """Predict crystal structures for FORMULA; writes CIFs, samples.extxyz, summary.json and report.html."""
    from dao.prediction import run_predict
    from dao.ranking import RankOptions
    from dao.structure_io import claim_output_dir
    from dao.xrd.pattern import read_pattern

    measured = None if xrd_pattern is None else read_pattern(xrd_pattern, xrd_wavelength)  # checked before any work
    if out is None:
        out = default_out(formula)
    options = RankOptions(judge=judge, templates=None if templates == "none" else templates, candidates=candidates,
                          relax_steps=relax_steps, novel=novel, random=random_)
    with claim_output_dir(out, overwrite=overwrite):  # locked; a non-empty folder needs --overwrite
        summary = run_predict(formula, n, out, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                              energy_model=energy_model, guidance_scale=guidance_scale, method=method,
                              compile=compile_, rank=rank, options=options, xrd=measured, step_lr=step_lr)
    for rec in summary["samples"]:
        if "error" in rec:
            click.echo(f"  {rec['name']}: skipped ({rec['error']})", err=True)
            continue
        lat = rec["lattice"]
        head = f"  {rec['cif']}: " if "rank" not in rec else (
            f"  #{rec['rank']} {rec['cif']} [{rec['source']}"
            + (f" {rec['source_info']['template_id']}, known" if rec["source_info"].get("known") else "")
            + ("" if rec["energy_per_atom"] is None else f", {rec['energy_per_atom']:.3f} eV/atom")
            + ("" if rec.get("xrd_score") is None else f", XRD score {rec['xrd_score']:.3f}") + "]: ")
        click.echo(f"{head}{rec['space_group']['symbol']} (#{rec['space_group']['number']}), "
                   f"a={lat['a']:.3f} b={lat['b']:.3f} c={lat['c']:.3f} Å, V={lat['volume']:.1f} Å³")
    if "ranking" in summary:
        r = summary["ranking"]
        c = r["counts"]
        click.echo(f"ranked by {r['judge']}: {c['proposed']} proposed ({c['proposed_template']} template, "
                   f"{c['proposed_generated']} generated), {c['invalid_dropped']} invalid dropped, "
                   f"{c['duplicates_merged']} duplicates merged, {c['judged']} judged", err=True)
        for note in r["notes"]:
            click.echo(f"  note: {note}", err=True)
    if "xrd" in summary:
        click.echo(f"re-ranked by agreement with {summary['xrd']['pattern']}: {summary['xrd']['verdict']}", err=True)
    click.echo(f"wrote {summary['num_written']} structures to {out} in {summary['seconds']:.1f} s")


@click.command("benchmark")
@click.option("--split", type=click.Path(path_type=Path), required=True, help="CSP split CSV (DiffCSP format).")
@click.option("--model", default="default", show_default=True, help="DAO-G checkpoint, 'default', 'default-diffusion' or 'default-flow'.")
@click.option("-k", "k", type=click.IntRange(1), default=1, show_default=True, help="Samples per composition.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Only the first N rows of the split.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (resumable).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--steps", type=click.IntRange(2), default=None, help="Sampling steps (default: the model's).")
@click.option("--device", type=DEVICE, default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True, help="Evaluation processes.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.option("--compile", "compile_", is_flag=True,
              help="torch.compile the network: slow first batch, faster sampling after (long jobs).")
@click.option("--ranked", is_flag=True,
              help="Score dao predict's ranked answer (templates guarded against the split + generated candidates "
                   "+ judge) beside the naive template lookup, instead of raw samples.")
@click.option("--judge", type=click.Choice(["auto", "chgnet", "dao", "none"]), default="none", show_default=True,
              help="With --ranked: the judge (auto: CHGNet if installed).")
@click.option("--templates", default="default", show_default=True, help="With --ranked: the template index.")
@click.option("--candidates", type=click.IntRange(1, 10000), default=8, show_default=True,
              help="With --ranked: generated candidates per composition.")
@click.option("--guard", type=click.Choice(TEMPLATE_GUARDS), default="split", show_default=True,
              help="With --ranked: remove the whole split from the template index, or only the evaluated rows "
                   "(--limit) and their duplicates, as a test-split evaluation has all of val in the index.")
def benchmark(split: Path, model: str, k: int, limit: int | None, out: Path, seed: int, steps: int | None,
              device: str, batch_size: int, workers: int, progress: bool, compile_: bool, ranked: bool, judge: str,
              templates: str, candidates: int, guard: str) -> None:
    """Generate k structures for every composition of a split, then score them (as `dao evaluate`).
    With --ranked, the ranked answer and the naive-template baseline, each in its own subfolder."""
    from dao.benchmark import run_benchmark

    if not split.is_file():
        raise DAOError(f"split file not found: {split}")
    from dao.structure_io import claim_output_dir

    if ranked:
        from dao.ranked_benchmark import run_ranked_benchmark
        from dao.ranking import RankOptions

        with claim_output_dir(out, resume=True):
            r = run_ranked_benchmark(split, out, k, limit, model, seed, device,
                                     RankOptions(judge=judge, templates=templates, candidates=candidates),
                                     workers, progress, guard)
        click.echo(json.dumps(r))
        return
    with claim_output_dir(out, resume=True):  # resumable: reruns continue in their own folder
        s = run_benchmark(split, model, k, out, limit, seed, steps, device, batch_size, workers, progress,
                          compile=compile_)
    g = s["generation"]
    click.echo(json.dumps({key: s.get(key) for key in ("n_references", "match_rate", "rmse", "match_rate_unfiltered",
                                                      "rmse_unfiltered")} | {"seconds_per_structure": g["seconds_per_structure_this_run"]}))


@click.command("info")
@click.option("--model", default="default", show_default=True, help="Checkpoint to describe.")
def info(model: str) -> None:
    """Describe a checkpoint: kind, config, size limits, training data and metrics (JSON)."""
    from dao.models.checkpoint import load_checkpoint, load_model

    ckpt = load_checkpoint(model)
    load_model(model, ckpt["kind"])  # its config and weights must make a model: a broken one is an error
    n_params = sum(v.numel() for v in ckpt["state_dict"].values())
    meta = {k: v for k, v in ckpt.get("meta", {}).items() if k not in ("data_report",)}
    click.echo(json.dumps({"path": ckpt["path"], "kind": ckpt["kind"], "parameters": n_params,
                           "config": ckpt["config"], "meta": meta}, indent=2, default=str))
