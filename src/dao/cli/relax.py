"""``dao relax``: batched FIRE relaxation of structure files (see :func:`dao.relax.run_relax`)."""
from __future__ import annotations

from pathlib import Path

import click

from dao.cli.options import DEVICE, OVERWRITE, BadInputs


@click.command("relax")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--potential", type=click.Choice(["dao", "chgnet"]), default="dao", show_default=True,
              help="dao: DAO-P at t = 0; chgnet: the pretrained CHGNet universal potential (pip extra dao-csp[chgnet]).")
@click.option("--model", default="default", show_default=True,
              help="DAO-P checkpoint or 'default'; with --potential chgnet a CHGNet version (default 0.3.0).")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Output folder (relaxed CIFs, trajectories, summary.json).")
@OVERWRITE
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
def relax(files: tuple[Path, ...], potential: str, model: str, out: Path, overwrite: bool, steps: int, fmax: float,
          timeout: float | None, batch_size: int, max_volume_ratio: float, trajectory_every: int, fixed_cell: bool,
          device: str) -> None:
    """Relax structure FILES (FIRE over positions and cell with ASE's FrechetCellFilter, batched).

    Writes OUT/<name>.cif for every converged, step-limited or timed-out structure, its trajectory and
    OUT/summary.json, all at once; aborted structures (exploding cell, NaN) get no CIF.
    """
    from dao.relax import run_relax
    from dao.structure_io import claim_output_dir

    bad = BadInputs()
    with claim_output_dir(out, overwrite=overwrite):  # locked; a non-empty folder needs --overwrite
        summary = run_relax(files, model, out, steps=steps, fmax=fmax, device=device,
                            max_volume_ratio=max_volume_ratio, relax_cell=not fixed_cell, on_error=bad,
                            potential=potential, timeout=timeout, batch_size=batch_size,
                            trajectory_every=trajectory_every, progress=True)
    for r in summary["structures"]:
        if "cif" in r:
            click.echo(f"  {r['cif']}: {r['status']} after {r['steps']} steps, E {r['energy_initial']:.4f} → "
                       f"{r['energy_final']:.4f} eV/atom, V {r['volume_initial']:.1f} → {r['volume_final']:.1f} Å³")
    click.echo(f"relaxed {summary['num_written']} of {summary['num_inputs']} structures "
               f"({summary['num_converged']} converged) into {out} in {summary['seconds']:.1f} s")
    bad.exit_if_any()
