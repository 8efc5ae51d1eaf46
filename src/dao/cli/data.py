"""``dao data``: build a CrysDB, relax its unstable entries with DAO-P, download the benchmark CSVs."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import click

from dao.cli.options import SEED
from dao.constants import STABILITY_THRESHOLD
from dao.data.crysdb.build import BuildConfig

_BUILD = BuildConfig()  # the option defaults of ``dao data build`` are BuildConfig's (one definition each)


@click.group("data")
def data_group() -> None:
    """Build and prepare training corpora (CrysDB)."""


@data_group.command("build")
@click.option("--source", "sources", multiple=True, required=True, type=click.Path(path_type=Path),
              help="A CSV (DiffCSP format, cif column), a folder of CIFs or an extxyz file; repeat. Earlier "
                   "sources win when entries duplicate each other.")
@click.option("--exclude", "excludes", multiple=True, type=click.Path(path_type=Path),
              help="A split whose structures (and ids) must not be in the corpus, e.g. a val/test CSV; repeat.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--min-atoms", type=click.IntRange(1), default=_BUILD.min_atoms, show_default=True)
@click.option("--max-atoms", type=click.IntRange(1), default=_BUILD.max_atoms, show_default=True)
@click.option("--max-e-hull", type=float, default=_BUILD.max_e_hull, show_default=True,
              help="Keep labelled entries with E_hull below this (eV/atom); unlabelled entries are kept.")
@click.option("--workers", type=click.IntRange(1), default=_BUILD.workers, show_default=True, help="Worker processes.")
@click.option("--partitions", type=click.IntRange(1), default=_BUILD.partitions, show_default=True,
              help="Hash partitions for deduplication (memory per worker ≈ corpus / partitions).")
@click.option("--ltol", type=click.FloatRange(min=0, min_open=True), default=_BUILD.ltol, show_default=True,
              help="StructureMatcher length tolerance for duplicates inside the corpus.")
@click.option("--stol", type=click.FloatRange(min=0, min_open=True), default=_BUILD.stol, show_default=True,
              help="StructureMatcher site tolerance for duplicates inside the corpus (smaller keeps more "
                   "near-identical polymorphs). Matching --exclude never uses less than the defaults.")
@click.option("--angle-tol", type=click.FloatRange(min=0, min_open=True), default=_BUILD.angle_tol, show_default=True,
              help="StructureMatcher angle tolerance (degrees) for duplicates inside the corpus.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def build(sources: tuple[Path, ...], excludes: tuple[Path, ...], out: Path, min_atoms: int, max_atoms: int,
          max_e_hull: float, workers: int, partitions: int, ltol: float, stol: float, angle_tol: float,
          progress: bool) -> None:
    """Parse, filter, Niggli-reduce and deduplicate SOURCES into a sharded Parquet CrysDB with a report."""
    from dao.data.crysdb import build_crysdb

    cfg = BuildConfig(min_atoms=min_atoms, max_atoms=max_atoms, max_e_hull=max_e_hull, workers=workers,
                      partitions=partitions, ltol=ltol, stol=stol, angle_tol=angle_tol)
    report = build_crysdb(sources, out, excludes, cfg, progress=progress)
    click.echo(json.dumps({"totals": report.totals, "stability": report.stability,
                           "shards": len(report.shards), "seconds": report.seconds}))
    click.echo(f"wrote {report.totals['kept']} entries to {out} (report.json, skipped.csv, elements.png)")


@data_group.command("relax")
@click.option("--model", default="default", show_default=True, help="DAO-P checkpoint or 'default'.")
@click.option("--in", "src", type=click.Path(path_type=Path), required=True, help="CrysDB folder to read.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="CrysDB folder to write.")
@click.option("--min-e-hull", type=float, default=STABILITY_THRESHOLD, show_default=True)
@click.option("--max-e-hull", type=float, default=0.5, show_default=True)
@click.option("--mode", type=click.Choice(["capped", "official"]), default="capped", show_default=True,
              help="capped: a few capped ASE-style steps under DAO-P's E_hull; official: torch L-BFGS (lr 1, no "
                   "step cap) on coordinates and lattice of DAO-P's standardised energy, as the paper's code.")
@click.option("--steps", type=click.IntRange(1), default=None,
              help="Optimizer steps per entry (L-BFGS iterations in official mode) [default: capped 20, official 5].")
@click.option("--fmax", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--optimizer", type=click.Choice(["lbfgs", "fire"]), default="lbfgs", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Structures relaxed together [default: capped 64, official 100 (one shared L-BFGS per batch)].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def relax(model: str, src: Path, out: Path, min_e_hull: float, max_e_hull: float, mode: str, steps: int | None,
          fmax: float, optimizer: str, batch_size: int | None, device: str, progress: bool) -> None:
    """Dataset relaxation: relax and relabel entries with MIN < E_hull <= MAX under DAO-P (see docs/design.md, 'Data and CrysDB')."""
    from dao.data.crysdb import relax_crysdb
    from dao.data.crysdb.relax import MODE_DEFAULTS
    from dao.runtime import resolve_device

    defaults = MODE_DEFAULTS[mode]
    stats = relax_crysdb(src, out, model, min_e_hull, max_e_hull, steps or defaults["steps"], fmax, optimizer,
                         batch_size or defaults["batch_size"], str(resolve_device(device)), progress, mode=mode)
    click.echo(json.dumps(stats))


@data_group.command("download")
@click.argument("dataset", type=click.Choice(["mp_20", "mpts_52", "perov_5", "carbon_24"]))
@click.option("--out", type=click.Path(path_type=Path), default=Path("data"), show_default=True,
              help="Files go to OUT/DATASET/.")
def download(dataset: str, out: Path) -> None:
    """Download DATASET's official train CSV from the DiffCSP repository, verified by sha256."""
    from dao.data.download import download as fetch

    for p in fetch(dataset, out, progress=True):
        click.echo(f"{p} (sha256 verified)")


@data_group.command("tc-augment")
@click.option("--formulas", required=True, type=click.Path(path_type=Path),
              help="CSV of superconductors without structures (columns Formula, Tc), e.g. supercon_11949.csv.")
@click.option("--exclude", "excludes", multiple=True, type=click.Path(path_type=Path),
              help="Tc task CSV(s) whose formulas must not be augmented (the evaluation pool); repeat.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="CSV to write (cif, logtc, ...).")
@click.option("--generator", default="default", show_default=True)
@click.option("--energy-model", default=None, help="DAO-P for energy-guided generation.")
@click.option("--guidance-scale", type=float, default=None)
@click.option("--max-atoms", type=click.IntRange(1), default=None, help="Cell size limit (default: the generator's).")
@click.option("--steps", type=click.IntRange(2), default=None)
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
def tc_augment(formulas: Path, excludes: tuple[Path, ...], out: Path, generator: str, energy_model: str | None,
               guidance_scale: float | None, max_atoms: int | None, steps: int | None, seed: int,
               device: str) -> None:
    """Generate one structure per superconductor formula (ln Tc label) for Tc training augmentation."""
    from dao.data.sources import read_records
    from dao.models.checkpoint import load_generator
    from dao.prediction import guidance_for
    from dao.runtime import resolve_device
    from dao.superconductors import generate_augmentation, write_structures_csv

    dev = resolve_device(device)
    gen = load_generator(generator, dev)
    guidance, _ = guidance_for(gen, energy_model, guidance_scale, dev)
    exclude = set()
    for p in excludes:  # unreadable entries cannot leak a formula: they are skipped
        exclude |= {rec.structure.composition.reduced_formula for rec in read_records(p)[0]}
    with open(formulas, newline="") as fh:
        rows = list(csv.DictReader(fh))
    crystals, counts = generate_augmentation(rows, gen, exclude, max_atoms=max_atoms, seed=seed, steps=steps,
                                             guidance=guidance)
    write_structures_csv(crystals, out)
    click.echo(json.dumps({"excluded_formulas": len(exclude), **counts, "out": str(out)}))
