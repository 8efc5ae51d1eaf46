"""``dao evaluate``: score CSP predictions against a reference CSV (register ``evaluate_command`` in a group)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("evaluate")
@click.option("--pred", "pred_path", required=True, type=click.Path(path_type=Path),
              help="Predictions: a directory of <idx>_<sample>.cif / <material_id>_<sample>.cif files, an "
                   ".extxyz file (info keys ref_index or material_id, and sample), or a CSV with columns "
                   "ref_index or material_id, sample (optional), cif.")
@click.option("--ref", "ref_path", required=True, type=click.Path(path_type=Path),
              help="Reference CSV (DiffCSP format, .csv or .csv.gz) with a cif column; row i = reference i.")
@click.option("--k", "k", type=click.IntRange(min=1), default=None,
              help="Samples per reference to score (first k). Default: the most any reference has.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Output directory: summary.json, per_structure.csv, match_rate_vs_k.png, rmse_hist.png, "
                   "cache.jsonl (resume file).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (one BLAS thread each).")
@click.option("--fresh", is_flag=True, help="Ignore and replace a cache.jsonl left by an earlier run.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--stability", type=click.Choice(["none", "chgnet"]), default="none", show_default=True,
              help="chgnet: relax every prediction with CHGNet (pip extra dao-csp[chgnet]), judge E_hull against the "
                   "reference hull of the MP entries under $DAO_DATA_DIR (see dao.stability), report the stability "
                   "rate (E_hull <= 0.08 eV/atom) and the match rate after relaxation; relaxed CIFs go to OUT/relaxed/.")
@click.option("--relax-steps", type=click.IntRange(0), default=500, show_default=True,
              help="FIRE steps per structure for --stability (0: judge the structures as generated).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="cpu", show_default=True,
              help="Device of the stability potential.")
def evaluate_command(pred_path: Path, ref_path: Path, k: int | None, out_dir: Path, workers: int, fresh: bool,
                     progress: bool, stability: str, relax_steps: int, device: str) -> None:
    """Score crystal structure predictions with the CSP protocol (DiffCSP's compute_metrics): StructureMatcher
    match rate and RMSE (validity-gated and unfiltered), match rate vs k, polymorph recovery."""
    # dao.evaluate imports pymatgen and dao.stability the potentials: only when the command runs
    from dao.evaluate.pipeline import CACHE_NAME, evaluate_files
    from dao.evaluate.report import summary_lines
    from dao.stability import chgnet_stability_scorer
    from dao.structure_io import claim_output_dir

    if not ref_path.is_file():
        raise click.ClickException(f"reference file not found: {ref_path}")
    if not pred_path.exists():
        raise click.ClickException(f"predictions not found: {pred_path}")
    if out_dir.exists() and not out_dir.is_dir():
        raise click.ClickException(f"--out exists and is not a directory: {out_dir}")
    scorer = chgnet_stability_scorer(relax_steps, device, progress) if stability == "chgnet" else None
    try:
        with claim_output_dir(out_dir, resume=True):  # resumable: reruns continue from its cache.jsonl
            result, paths = evaluate_files(pred_path, ref_path, out_dir, k=k, workers=workers, fresh=fresh,
                                           progress=progress, energy_scorer=scorer)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; finished pairs are kept in {out_dir / CACHE_NAME}, rerun to "
                                   "resume") from None
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    for line in summary_lines(result.summary):
        click.echo(line)
    click.echo(f"wrote {paths['summary']} and {paths['report_html']}")
