"""Structure prediction for a formula: the ``dao predict`` pipeline and the Python API ``dao.predict``."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from dao import __version__
from dao.candidates import Candidate
from dao.cell import niggli_reduce
from dao.crystal import CrystalBatch
from dao.diffusion.guidance import GuidanceTerm, energy_guidance
from dao.errors import DAOError, StructureReadError
from dao.formula import CellComposition, cells_to_generate
from dao.models.checkpoint import bundled_generator_for, load_energy_model, load_generator
from dao.models.energy import DAOEnergyModel
from dao.models.generator import DAOGenerator
from dao.ranking import Ranking, RankOptions, rank_candidates, template_candidates
from dao.report.prediction import write_prediction_report
from dao.runtime import resolve_device
from dao.structure_io import staged_output_dir, symmetry_info, write_cif, write_extxyz, write_json
from dao.xrd.pattern import Pattern
from dao.xrd.score import rerank_ranking

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: the published energy-guidance scale s (docs/design.md, 'Energy model (DAO-P) and guidance')
DEFAULT_GUIDANCE_SCALE = 20.0
#: ranked prediction without --atoms/--max-atoms samples every cell multiple up to this many atoms (the regime
#: the template index and the generators cover best; each further cell costs a template scan and samples)
ALL_CELLS_MAX_ATOMS = 20


@dataclass
class Sample:
    """One generated structure (``structure`` is None when the sample is unusable, see ``error``)."""

    cell: CellComposition
    index: int
    structure: Structure | None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def finalize_structure(atomic_numbers: np.ndarray, frac: np.ndarray, lattice: np.ndarray
                       ) -> tuple[Structure | None, str | None]:
    """Sampled (A, F, L) → Niggli-reduced pymatgen Structure, or (None, reason) if the cell is unusable.

    A lattice with negative determinant describes the same crystal as (−L, −F mod 1): X = F·L is unchanged.
    """
    from pymatgen.core import Lattice, Structure

    if not (np.all(np.isfinite(lattice)) and np.all(np.isfinite(frac))):
        return None, "non-finite lattice or coordinates"
    if np.linalg.det(lattice) < 0:
        lattice, frac = -lattice, (-frac) % 1.0
    s = Structure(Lattice(lattice), [int(z) for z in atomic_numbers], frac % 1.0)
    try:
        s = niggli_reduce(s)  # checks the cell first: a degenerate sample is refused, never a hang
    except StructureReadError as exc:
        return None, str(exc)
    return s, None


def _sample_jobs(model: DAOGenerator, jobs: Sequence[tuple[CellComposition, int, Any]], seed: int,
                 batch_size: int, start: float | None = None, **sample_kw: Any) -> list[Sample]:
    """Run ``model.sample`` over ``jobs`` (cell, index, starting crystal or None) in batches; one random
    stream for the whole run, so a seed reproduces every sample."""
    device = next(model.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    samples: list[Sample] = []
    for first in range(0, len(jobs), batch_size):
        chunk = jobs[first:first + batch_size]
        if start is None:
            template = CrystalBatch.from_compositions([c.atomic_numbers() for c, _, _ in chunk], device=device)
        else:
            template = CrystalBatch.from_crystals([x for _, _, x in chunk]).to(device)
        out = model.sample(template, generator=gen, start=start, **sample_kw).crystals()
        for (cell, i, _), cr in zip(chunk, out):
            st, err = finalize_structure(cr.atomic_numbers, cr.frac_coords, cr.lattice)
            samples.append(Sample(cell, i, st, err))
    return samples


def generate(model: DAOGenerator, cells: Sequence[CellComposition], n: int, seed: int = 0,
             steps: int | None = None, batch_size: int = 64, guidance: Sequence[GuidanceTerm] = (),
             progress: bool = False, step_lr: float | None = None) -> list[Sample]:
    """Sample ``n`` structures for each cell with a loaded generator, in batches of ``batch_size``
    (``step_lr``: the diffusion corrector step size; default: the model's)."""
    jobs = [(cell, i, None) for cell in cells for i in range(n)]
    return _sample_jobs(model, jobs, seed, batch_size, num_steps=steps, guidance=guidance, progress=progress,
                        step_lr=step_lr)


def refine(model: DAOGenerator, structures: Sequence[Structure], strength: float, n: int = 1, seed: int = 0,
           steps: int | None = None, batch_size: int = 64) -> list[Sample]:
    """``n`` refinements of each structure: noised to time ``strength`` ∈ (0, 1] of the generator's
    process, then denoised over the last ≈ strength·steps steps (img2img / SDEdit; strength 1 is plain
    sampling of the cell). Samples come per structure, ``n`` each, in order; a structure's cell keeps
    its atoms (its Niggli cell in the model's orientation)."""
    from dao.crystal import Crystal
    from dao.diffusion.base import check_start

    try:
        strength = check_start(strength)
    except ValueError as exc:
        raise DAOError(f"refinement strength: {exc}") from None
    jobs = []
    for st in structures:
        cell, crystal = CellComposition.of_structure(st), Crystal.from_structure(st)
        jobs += [(cell, i, crystal) for i in range(n)]
    return _sample_jobs(model, jobs, seed, batch_size, start=strength, num_steps=steps)


def guidance_for(gen_model: DAOGenerator, energy_model: str | Path | DAOEnergyModel | None,
                 guidance_scale: float | None, device: torch.device | str
                 ) -> tuple[list[GuidanceTerm], DAOEnergyModel | None]:
    """Energy guidance terms for ``generate`` (empty without an energy model) and the loaded DAO-P.

    ``energy_model`` is a DAO-P checkpoint path, ``"default"``, a loaded model or None; the scale defaults
    to the published 20. Raises :class:`DAOError` if the energy model cannot guide this generator.
    """
    if energy_model is None:
        if guidance_scale is not None:
            raise DAOError("a guidance scale needs an energy model (--energy-model)")
        return [], None
    scale = DEFAULT_GUIDANCE_SCALE if guidance_scale is None else float(guidance_scale)
    if not np.isfinite(scale):
        raise DAOError(f"guidance scale must be finite, got {guidance_scale}")
    e_model = load_energy_model(energy_model, device) if isinstance(energy_model, (str, Path)) else energy_model
    return energy_guidance(gen_model, e_model, scale), e_model


@dataclass
class PredictionRun:
    """What one prediction job sampled, and with what (the content of ``summary.json`` besides samples)."""

    formula: str
    samples: list[Sample]
    cells: list[CellComposition]
    model: DAOGenerator
    energy_model: DAOEnergyModel | None
    guidance: list[GuidanceTerm]
    n: int
    seed: int
    steps: int
    device: torch.device
    compiled: bool
    seconds: float
    step_lr: float | None = None  # the diffusion corrector step size used (None: the process has none)

    @property
    def structures(self) -> list[Structure]:
        """The usable samples' structures, in order."""
        return [s.structure for s in self.samples if s.structure is not None]

    def summary(self) -> dict[str, Any]:
        return {
            "formula": self.formula,
            "cells": [{"formula": c.formula, "z": c.z, "atoms": c.num_atoms} for c in self.cells],
            "n_per_cell": self.n, "seed": self.seed, "steps": self.steps, "method": self.model.method,
            "model": {"path": getattr(self.model, "checkpoint_path", None), "kind": "generator",
                      "max_atoms": self.model.config.max_atoms},
            "guidance": None if self.energy_model is None else {
                "energy_model": getattr(self.energy_model, "checkpoint_path", None), "scale": self.guidance[0].scale},
            "step_lr": self.step_lr, "device": str(self.device), "compiled": self.compiled, "dao_version": __version__,
            "seconds": round(self.seconds, 2),
        }


def sample_formula(formula: str, n: int = 5, atoms: int | None = None, max_atoms: int | None = None,
                   seed: int = 0, steps: int | None = None, model: str | Path | DAOGenerator = "default",
                   device: str = "auto", batch_size: int = 64, progress: bool = False,
                   energy_model: str | Path | DAOEnergyModel | None = None, guidance_scale: float | None = None,
                   method: str | None = None, compile: bool = False, *, all_cells: bool = False,
                   total: int | None = None, step_lr: float | None = None) -> PredictionRun:
    """Load (or take) the generator, check every input, then sample ``n`` structures per admissible cell.

    ``all_cells``: without ``atoms``/``max_atoms``, every cell multiple Z up to :data:`ALL_CELLS_MAX_ATOMS`
    atoms (or up to the formula as typed, when larger) that the model admits; ``total``:
    draw about that many samples over all cells (⌈total / cells⌉ each) instead of ``n`` per cell.

    ``model`` is a checkpoint path, ``"default"`` (with ``method``: the bundled generator of that method),
    ``"default-diffusion"`` / ``"default-flow"`` or a loaded model; ``method`` given with a checkpoint
    requires it to be of that method. ``energy_model`` turns on energy guidance (``guidance_scale``,
    default 20). ``step_lr``: the diffusion corrector's step size (default: the one recorded in the
    checkpoint, the official value of the dataset it was trained on; docs/official.md)."""
    t0 = time.time()
    dev = resolve_device(device)
    if isinstance(model, (str, Path)):
        gen_model = load_generator(bundled_generator_for(model, method), dev, compile=compile)
    else:
        gen_model = model
    if method is not None and method != gen_model.method:
        raise DAOError(f"--method {method}, but {getattr(gen_model, 'checkpoint_path', 'the model')} is a "
                       f"{gen_model.method} generator (train one with `dao train generator --method {method}`)")
    if all_cells and atoms is None and max_atoms is None:
        typed = cells_to_generate(formula, gen_model.config.max_atoms)[0]  # the formula as typed must fit
        max_atoms = max(min(gen_model.config.max_atoms, ALL_CELLS_MAX_ATOMS), typed.num_atoms)
    cells = cells_to_generate(formula, gen_model.config.max_atoms, atoms=atoms, max_atoms=max_atoms)
    if total is not None:
        n = max(1, -(-int(total) // len(cells)))
    model_device = next(gen_model.parameters()).device
    guidance, e_model = guidance_for(gen_model, energy_model, guidance_scale, model_device)
    torch.manual_seed(seed)
    samples = generate(gen_model, cells, n, seed=seed, steps=steps, batch_size=batch_size, guidance=guidance,
                       progress=progress, step_lr=step_lr)
    return PredictionRun(formula, samples, cells, gen_model, e_model, guidance, n, seed,
                         gen_model.process.resolve_steps(steps), model_device, compile, time.time() - t0,
                         step_lr if step_lr is not None else getattr(gen_model.process.config, "step_lr", None))


def generated_candidates(run: PredictionRun) -> list[Candidate]:
    """The usable samples of a run as candidates (source "generated", info: method, sample, z)."""
    return [Candidate(s.cell, s.structure, "generated", {"method": run.model.method, "sample": s.index, "z": s.cell.z})
            for s in run.samples if s.structure is not None]


def rank_formula(formula: str, atoms: int | None = None, max_atoms: int | None = None, seed: int = 0,
                 steps: int | None = None, model: str | Path | DAOGenerator = "default", device: str = "auto",
                 batch_size: int = 64, progress: bool = False,
                 energy_model: str | Path | DAOEnergyModel | None = None, guidance_scale: float | None = None,
                 method: str | None = None, compile: bool = False, options: RankOptions | None = None,
                 *, step_lr: float | None = None) -> tuple[PredictionRun, Ranking]:
    """Ranked prediction (docs/design.md, 'Ranked prediction'): ``options.candidates`` generated samples
    over every admissible cell plus the template index's proposals, screened, merged and judged.
    ``model="default"`` without ``method`` means the bundled flow generator here (fast enough to draw
    many candidates). Arguments otherwise as :func:`sample_formula`."""
    opts = options or RankOptions()
    if str(model) == "default" and method is None:
        model = "default-flow"
    run = sample_formula(formula, 1, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                         energy_model, guidance_scale, method, compile, all_cells=True, total=opts.candidates,
                         step_lr=step_lr)
    t0 = time.time()
    judge_model = str(energy_model) if isinstance(energy_model, (str, Path)) else "default"
    templates, note = template_candidates(run.cells, opts.templates, opts.template_limit, opts.novel, opts.judge,
                                          str(run.device), judge_model)
    notes = [note] if note else []
    randoms = []
    bare = [c for c in run.cells if not any(t.cell.num_atoms == c.num_atoms for t in templates)]
    if opts.random and bare:
        from dao.random_structures import random_candidates

        try:
            randoms = [r for k, c in enumerate(bare) for r in random_candidates(c, opts.random, seed + 7919 * k)]
        except DAOError as exc:
            notes.append(f"random candidates skipped: {exc}")
    ranking = rank_candidates(templates + generated_candidates(run) + randoms, opts.judge, str(run.device),
                              opts.relax_steps, opts.relax_seconds, judge_model, notes)
    run.seconds += time.time() - t0
    return run, ranking


def predict(formula: str, n: int = 5, atoms: int | None = None, max_atoms: int | None = None, seed: int = 0,
            steps: int | None = None, model: str | Path | DAOGenerator = "default", device: str = "auto",
            batch_size: int = 64, progress: bool = False,
            energy_model: str | Path | DAOEnergyModel | None = None, guidance_scale: float | None = None,
            method: str | None = None, compile: bool = False, rank: bool = True,
            options: RankOptions | None = None, *, step_lr: float | None = None) -> list[Structure]:
    """Predict crystal structures for ``formula``; returns pymatgen Structures, best first.

    ``rank`` (default): the top ``n`` of :func:`rank_formula` (``options`` sets judge, templates and
    candidates); ``rank=False``: the raw samples of :func:`sample_formula`, ``n`` per cell, in sample order.
    ``energy_model`` (a DAO-P checkpoint, ``"default"`` or a loaded model) turns on energy guidance with
    ``guidance_scale`` (default 20).

    >>> import dao
    >>> structures = dao.predict("CsV3Sb5", n=5, seed=0)
    """
    if rank:
        return rank_formula(formula, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                            energy_model, guidance_scale, method, compile, options, step_lr=step_lr)[1].structures[:n]
    return sample_formula(formula, n, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                          energy_model, guidance_scale, method, compile, step_lr=step_lr).structures


def _write_structure(st: Structure, name: str, folder: Path) -> dict[str, Any]:
    """Write ``<name>.cif`` (P1) and, when a space group > 1 is found, ``<name>_sym.cif``; returns the
    structure's summary fields (cif, space group, lattice, density)."""
    sym = symmetry_info(st)
    lat = st.lattice
    rec: dict[str, Any] = {
        "cif": f"{name}.cif",
        "space_group": {"symbol": sym["symbol"], "number": sym["number"], "symprec": sym["symprec"]},
        "lattice": {"a": lat.a, "b": lat.b, "c": lat.c, "alpha": lat.alpha, "beta": lat.beta,
                    "gamma": lat.gamma, "volume": lat.volume},
        "density_g_cm3": float(st.density),
    }
    write_cif(st, folder / f"{name}.cif")
    if sym["number"] > 1:
        try:
            write_cif(st, folder / f"{name}_sym.cif", symprec=sym["symprec"])
            rec["cif_symmetrized"] = f"{name}_sym.cif"
        except Exception:
            pass  # symmetrisation can fail for borderline tolerances; the P1 CIF stands
    return rec


def write_predictions(samples: Sequence[Sample], out: str | Path, summary_extra: dict[str, Any]) -> dict[str, Any]:
    """Write CIFs (P1 + symmetrized where a space group > 1 is found), ``samples.extxyz`` and ``summary.json``."""
    records, good, infos = [], [], []
    with staged_output_dir(out) as tmp:
        for s in samples:
            name = f"{s.cell.formula}_{s.index:03d}"
            rec = {"name": name, "formula": s.cell.formula, "reduced_formula": s.cell.reduced_formula,
                   "z": s.cell.z, "atoms_per_cell": s.cell.num_atoms, "sample": s.index}
            if s.structure is None:
                rec["error"] = s.error
                records.append(rec)
                continue
            rec.update(_write_structure(s.structure, name, tmp))
            records.append(rec)
            good.append(s.structure)
            infos.append({"name": name, "formula": s.cell.formula, "sample": s.index,
                          "spacegroup": rec["space_group"]["symbol"],
                          "spacegroup_number": rec["space_group"]["number"]})
        if good:
            write_extxyz(good, infos, tmp / "samples.extxyz")
        summary = {**summary_extra, "num_requested": len(samples), "num_written": len(good), "samples": records}
        write_json(summary, tmp / "summary.json")
        write_prediction_report(tmp, summary, good)
    return summary


def write_ranked(ranking: Ranking, n: int, out: str | Path, summary_extra: dict[str, Any]) -> dict[str, Any]:
    """Write the top ``n`` ranked structures as ``<formula>_rank<k>.cif`` (+ symmetrized), ``samples.extxyz``
    and ``summary.json`` (rank, judge energy, source and its info, validity flags, stage counts)."""
    records, infos = [], []
    top = ranking.ranked[:n]
    with staged_output_dir(out) as tmp:
        for item in top:
            c = item.candidate
            name = f"{c.cell.reduced_formula}_rank{item.rank}"
            rec = {"name": name, "rank": item.rank, "energy_per_atom": item.energy_per_atom,
                   "source": c.source, "source_info": c.info, "prior": c.prior, "formula": c.cell.formula,
                   "z": c.cell.z, "atoms_per_cell": len(item.structure), **item.flags}
            if item.record:
                rec["relaxation"] = item.record
            rec.update(_write_structure(item.structure, name, tmp))
            records.append(rec)
            infos.append({"name": name, "rank": item.rank, "source": c.source,
                          "energy_per_atom": item.energy_per_atom if item.energy_per_atom is not None else np.nan,
                          "spacegroup": rec["space_group"]["symbol"],
                          **{f"{c.source}_{k}": v for k, v in c.info.items() if isinstance(v, (int, float, str))}})
        if top:
            write_extxyz([item.structure for item in top], infos, tmp / "samples.extxyz")
        summary = {**summary_extra, "ranking": {"judge": ranking.judge, "counts": ranking.counts,
                                                "notes": ranking.notes},
                   "num_requested": n, "num_written": len(top), "samples": records}
        write_json(summary, tmp / "summary.json")
        write_prediction_report(tmp, summary, [item.structure for item in top])
    return summary


def run_predict(formula: str, n: int, out: str | Path, atoms: int | None = None, max_atoms: int | None = None,
                seed: int = 0, steps: int | None = None, model: str | Path = "default", device: str = "auto",
                batch_size: int = 64, progress: bool = True, energy_model: str | Path | None = None,
                guidance_scale: float | None = None, method: str | None = None, compile: bool = False,
                rank: bool = True, options: RankOptions | None = None, *,
                step_lr: float | None = None, xrd: Pattern | None = None) -> dict[str, Any]:
    """The ``dao predict`` job, all outputs written at once into ``out``: with ``rank`` the top ``n`` of
    :func:`rank_formula`, else ``n`` raw samples per cell from :func:`sample_formula`. ``xrd``: re-rank the
    candidates by agreement with this measured pattern (:func:`dao.xrd.score.rerank_ranking`)."""
    if xrd is not None and not rank:
        raise DAOError("--xrd re-ranks the ranked candidates: it cannot be combined with --no-rank")
    if rank:
        opts = options or RankOptions()
        run, ranking = rank_formula(formula, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                                    energy_model, guidance_scale, method, compile, opts, step_lr=step_lr)
        extra = run.summary() | {"candidates": opts.candidates, "templates": str(opts.templates),
                                 "relax_steps": opts.relax_steps, "relax_seconds": opts.relax_seconds}
        if xrd is not None:
            extra["xrd"] = rerank_ranking(ranking, xrd)
        return write_ranked(ranking, n, out, extra)
    run = sample_formula(formula, n, atoms, max_atoms, seed, steps, model, device, batch_size, progress,
                         energy_model, guidance_scale, method, compile, step_lr=step_lr)
    return write_predictions(run.samples, out, run.summary())
