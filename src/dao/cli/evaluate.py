"""``dao evaluate``: score CSP predictions against a reference CSV (register ``evaluate_command`` in a group)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import click


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f} %"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


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
    from dao.evaluate.core import evaluate
    from dao.evaluate.io import load_predictions_with_report, load_references
    from dao.evaluate.report import write_report

    if not ref_path.is_file():
        raise click.ClickException(f"reference file not found: {ref_path}")
    if not pred_path.exists():
        raise click.ClickException(f"predictions not found: {pred_path}")
    try:
        refs, ids = load_references(ref_path)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    try:
        preds, load_report = load_predictions_with_report(pred_path, ids, k)
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if out_dir.exists() and not out_dir.is_dir():
        raise click.ClickException(f"--out exists and is not a directory: {out_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = out_dir / "cache.jsonl"
    if fresh:
        for old in (cache, out_dir / "cache_relaxed.jsonl"):
            if old.exists():
                old.unlink()
    scorer = _stability_scorer(stability, relax_steps, device, progress)
    try:
        result = evaluate(preds, refs, k=k, workers=workers, cache_path=cache, progress=progress,
                          reference_ids=ids, energy_scorer=scorer)
        after = None
        if result.relaxed_predictions is not None:
            after = evaluate(result.relaxed_predictions, refs, k=result.summary["k"], workers=workers,
                             cache_path=out_dir / "cache_relaxed.jsonl", progress=progress, reference_ids=ids)
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; finished pairs are kept in {cache}, rerun to resume") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    result.summary["input"] = {"pred": str(pred_path), "ref": str(ref_path), **load_report.as_dict()}
    if scorer is not None:
        result.summary["stability"].update(judge=scorer.potential.name, relax_steps=relax_steps,
                                           reference_hull={"sources": scorer.hull.sources,
                                                           "entries": scorer.hull.n_entries},
                                           relax_status=dict(Counter(r.get("status", "?") for r in scorer.records)))
    if after is not None:
        result.summary["after_relaxation"] = {key: after.summary[key] for key in
                                              ("match_rate", "rmse", "match_rate_unfiltered", "rmse_unfiltered")}
        _write_relaxed(result.relaxed_predictions, ids, out_dir / "relaxed")
    paths = write_report(result, out_dir)

    s = result.summary
    v = s["validity"]
    click.echo(f"references {s['n_references']}  k {s['k']}  predictions {v['n_samples_present']} "
               f"(unreadable {v['n_unreadable']}, missing slots {v['n_samples_missing']}, "
               f"unassigned {load_report.n_unassigned})")
    click.echo(f"match rate (valid-gated)  {_pct(s['match_rate'])}   RMSE {_num(s['rmse'])}")
    click.echo(f"match rate (unfiltered)   {_pct(s['match_rate_unfiltered'])}   RMSE {_num(s['rmse_unfiltered'])}")
    click.echo(f"validity {_pct(v['valid_rate'])} of predictions; references valid {_pct(v['reference_valid_rate'])}")
    pr = s["polymorph_recovery"]
    if pr["n_compositions"]:
        click.echo(f"polymorph recovery {_pct(pr['rate'])} of {pr['n_compositions']} compositions "
                   f"(unfiltered {_pct(pr['rate_unfiltered'])})")
    if scorer is not None:
        st = s["stability"]
        click.echo(f"stability ({st['judge']}, E_hull <= {st['threshold_ev_per_atom']} eV/atom) "
                   f"{_pct(st['stability_rate'])} of {st['n_generated']} (scored {st['n_scored']}), "
                   f"mean E_hull {_num(st['mean_e_above_hull'])} eV/atom")
    if after is not None:
        a = s["after_relaxation"]
        click.echo(f"after relaxation: match rate {_pct(a['match_rate'])} RMSE {_num(a['rmse'])}; "
                   f"unfiltered {_pct(a['match_rate_unfiltered'])} RMSE {_num(a['rmse_unfiltered'])}")
    misses = ", ".join(f"{key} {val}" for key, val in s["miss_reasons"].items() if val)
    if misses:
        click.echo(f"misses: {misses}")
    click.echo(f"wrote {paths['summary']}")


def _stability_scorer(kind: str, relax_steps: int, device: str, progress: bool):
    if kind == "none":
        return None
    from dao.potentials import CHGNetPotential
    from dao.runtime import resolve_device
    from dao.stability import HullStabilityScorer, ReferenceHull

    return HullStabilityScorer(CHGNetPotential(device=str(resolve_device(device))), ReferenceHull.default(),
                               relax=relax_steps > 0, steps=relax_steps, progress=progress)


def _write_relaxed(relaxed: dict, ids, folder: Path) -> None:
    from dao.structure_io import write_cif

    folder.mkdir(parents=True, exist_ok=True)
    for i, row in relaxed.items():
        for j, s in enumerate(row):
            if hasattr(s, "lattice"):  # a relaxed Structure (not None / MISSING)
                write_cif(s, folder / f"{ids[i]}_{j}.cif")
