"""Ranked prediction: candidates from every source, screened, merged and judged (docs/design.md, 'Ranked
prediction').

:func:`rank_candidates` takes :class:`~dao.candidates.Candidate` objects from any source (the template
index through :func:`template_candidates`, generated samples wrapped by :mod:`dao.prediction`), drops the
physically invalid ones (:func:`validity_flags`), merges StructureMatcher duplicates
(:class:`~dao.data.dedupe.StructureDeduplicator`; the first candidate in source order is kept) and orders
the rest: templates first, by prior (the learned template ranker's probability; with a judge that has a
judge-aware ranker, computed from the judge's single-point energies too: :func:`template_candidates`), then
the other candidates by the judge's energy per atom after a short relaxation (``judge="chgnet"`` or
``"dao"``) or in source order (``judge="none"``: generated samples in sample order, then random ones).
Everything is deterministic for a given candidate list unless the relaxation time cap is hit.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from dao.candidates import SOURCES, Candidate
from dao.cell import niggli_reduce
from dao.constants import MIN_DISTANCE
from dao.crystal import min_distance
from dao.data.dedupe import StructureDeduplicator
from dao.errors import DAOError, StructureReadError
from dao.formula import CellComposition
from dao.templates import TemplateIndex

if TYPE_CHECKING:  # pragma: no cover
    from pymatgen.core import Structure

#: the judges ``rank_candidates`` knows; "none" orders by source
JUDGES = ("chgnet", "dao", "none")
#: a candidate's volume per atom must lie in this range (Å³) to be valid (the densest known solids have
#: about 5 Å³/atom, gas-like cells from a diverging sample have hundreds)
VOLUME_PER_ATOM_RANGE = (2.0, 150.0)
#: default relaxation by the judge: FIRE steps, force threshold (eV/Å), seconds of potential time per candidate
#: (5 steps keep a default `dao predict` near 15 s per composition on one core; bench/bench_ranked.py)
RELAX_STEPS, RELAX_FMAX, RELAX_SECONDS = 5, 0.05, 10.0


@dataclass
class RankOptions:
    """How ``dao predict`` ranks: the judge, the template index (a path, "default" or None), how many
    generated candidates to draw over all cells, template proposals per cell, the judge's relaxation,
    ``novel`` (propose no structure the index already holds for the composition) and ``random`` (that many
    pyxtal candidates for each cell without a template: :mod:`dao.random_structures`)."""

    judge: str = "none"  # base install; --judge chgnet measured better with the extra (default_judge)
    templates: Any = "default"
    candidates: int = 8
    template_limit: int = 3
    relax_steps: int = RELAX_STEPS
    relax_seconds: float = RELAX_SECONDS
    novel: bool = False  # leave out the structures the index holds for the composition itself
    random: int = 0  # random symmetric candidates (pyxtal) for each cell that no template fits


def default_judge() -> str:
    """The judge ``judge="auto"`` means: CHGNet when installed, else "none" (source order). Not the default,
    because CHGNet is an optional extra and costs seconds: with it the CHGNet-aware template ranker took MP-20
    val MR@1 from 62.8 % to 64.8 % (500 rows, bench/bench_templates.py); `dao predict CsV3Sb5` took 6.6 s
    instead of 3.4 s with the 5-step relaxation (previous flow model), plus about 3 s to load CHGNet.
    Ordering all candidates by CHGNet energy alone measured worse than the learned template order (43.8 % vs
    62.5 % on 16 rows, bench/bench_ranked.py); DAO-P as sole judge 25 %."""
    return "chgnet" if importlib.util.find_spec("chgnet") is not None else "none"


@dataclass
class Judged:
    """A candidate after ranking: its validity ``flags``, the judge's ``energy_per_atom`` (None when not
    judged or the judge failed on it), the judge's relaxation ``record`` and the ``structure`` to report
    (the relaxed one when judged)."""

    candidate: Candidate
    flags: dict[str, Any]
    structure: Structure
    energy_per_atom: float | None = None
    record: dict[str, Any] = field(default_factory=dict)
    rank: int = 0


@dataclass
class Ranking:
    """The ranked candidates (best first), the counts of each stage and notes on skipped sources."""

    ranked: list[Judged]
    counts: dict[str, int]
    judge: str
    notes: list[str] = field(default_factory=list)

    @property
    def structures(self) -> list[Structure]:
        return [j.structure for j in self.ranked]


def validity_flags(structure: Structure) -> dict[str, Any]:
    """``{"min_distance", "volume_per_atom", "valid"}``: the smallest interatomic distance in Å (minimum
    image, periodic self-images included) and the volume per atom in Å³; ``valid`` when the distance is
    ≥ ``MIN_DISTANCE`` and the volume per atom within ``VOLUME_PER_ATOM_RANGE``."""
    n = len(structure)
    vol = float(structure.lattice.volume) / max(n, 1)
    lat = structure.lattice.matrix
    if not (np.isfinite(lat).all() and np.isfinite(structure.frac_coords).all() and abs(vol) > 0):
        return {"min_distance": None, "volume_per_atom": None, "valid": False}
    try:  # bounded reduction (dao.cell): pymatgen's own can search for minutes on a degenerate cell
        reduced = niggli_reduce(structure)
    except StructureReadError:
        return {"min_distance": None, "volume_per_atom": round(vol, 4), "valid": False}
    dmin = min_distance(reduced.lattice.matrix, reduced.frac_coords)  # periodic self-images included
    lo, hi = VOLUME_PER_ATOM_RANGE
    ok = dmin >= MIN_DISTANCE and lo <= vol <= hi
    return {"min_distance": round(dmin, 4), "volume_per_atom": round(vol, 4), "valid": bool(ok)}


def template_candidates(cells: Sequence[CellComposition], templates: Any, limit: int = 8, novel: bool = False,
                        judge: str = "none", device: str = "cpu", energy_model: str = "default"
                        ) -> tuple[list[Candidate], str | None]:
    """Template proposals for every cell: ``templates`` is a loaded :class:`~dao.templates.TemplateIndex`,
    a path, ``"default"`` or None (no templates). Returns (candidates, a note when the source was skipped
    because the bundled default index is not installed); a path that cannot be loaded is a DAOError.
    ``novel``: see :meth:`dao.templates.TemplateIndex.propose`; with a ``judge`` other than "none" the
    index's judge-aware ranker for it (if any) scores the judge's single-point energies too."""
    if templates is None or str(templates) == "none":
        return [], None
    if isinstance(templates, TemplateIndex):
        index = templates
    else:
        try:
            index = TemplateIndex.load(templates)
        except (DAOError, OSError) as exc:
            if str(templates) == "default":
                return [], f"templates skipped: {exc}"
            raise DAOError(f"cannot load template index {templates}: {exc}") from None
    judge = default_judge() if judge == "auto" else judge
    energy = template_energy_fn(judge, device, energy_model) if judge in index.energy_rankers else None
    out: list[Candidate] = []
    for cell in cells:
        out.extend(index.propose(cell, limit=limit, novel=novel, judge=judge, energy=energy))
    return out, None


def template_energy_fn(judge: str, device: str = "cpu", energy_model: str = "default"
                       ) -> Callable[[Sequence[Structure]], list[float | None]]:
    """The single-point energy function a judge-aware template ranker scores (the judge's energy per atom of
    each candidate as proposed: :func:`single_point_energies`)."""
    return functools.partial(single_point_energies, judge=judge, device=device, energy_model=energy_model)


def _source_order(cands: Sequence[Candidate]) -> list[int]:
    """Indices in source order: templates by prior (best first), then generated, then random; stable."""
    rank = {s: i for i, s in enumerate(SOURCES)}
    return sorted(range(len(cands)), key=lambda i: (rank.get(cands[i].source, len(SOURCES)),
                                                    -cands[i].prior if cands[i].source == "template" else 0, i))


def screen_and_merge(cands: Sequence[Candidate]) -> tuple[list[tuple[Candidate, dict[str, Any]]], int, int]:
    """Drop invalid candidates and merge StructureMatcher duplicates (the first in source order stays; the
    merged ones are counted on it as ``info["duplicates"]``). Returns (kept with flags, invalid, merged)."""
    dedup = StructureDeduplicator()
    kept: list[tuple[Candidate, dict[str, Any]]] = []
    by_label: dict[int, Candidate] = {}
    invalid = merged = 0
    for i in _source_order(cands):
        c = cands[i]
        flags = validity_flags(c.structure)
        if not flags["valid"]:
            invalid += 1
            continue
        verdict, label = dedup.add(c.cell.reduced_formula, c.structure, i)
        if verdict == "duplicate":
            merged += 1
            rep = by_label[label]
            rep.info["duplicates"] = rep.info.get("duplicates", 0) + 1
            continue
        by_label[i] = c
        kept.append((c, flags))
    return kept, invalid, merged


@functools.lru_cache(maxsize=2)
def _potential(judge: str, model: str, device: str) -> Any:
    """The judge's potential, loaded once per process (loading CHGNet or DAO-P takes seconds)."""
    from dao.potentials import load_potential

    return load_potential(judge, model=model, device=device)


def single_point_energies(structures: Sequence[Structure], judge: str, device: str = "cpu",
                          energy_model: str = "default") -> list[float | None]:
    """The judge's energy per atom of each structure as given; None where it fails or where the structure is
    not valid (:func:`validity_flags`: a collapsed cell can make a potential's neighbour list explode)."""
    valid = [i for i, s in enumerate(structures) if validity_flags(s)["valid"]]
    potential = _potential(judge, energy_model if judge == "dao" else "default", device)
    some = [structures[i] for i in valid]
    if hasattr(potential, "energies"):
        got = potential.energies(some) if some else []
    else:
        got = [e for _, e, _ in judge_structures(some, judge, device, steps=0, energy_model=energy_model)]
    out: list[float | None] = [None] * len(structures)
    for i, e in zip(valid, got):
        out[i] = e
    return out


def judge_structures(structures: Sequence[Structure], judge: str, device: str = "cpu",
                     steps: int = RELAX_STEPS, seconds: float = RELAX_SECONDS, energy_model: str = "default"
                     ) -> list[tuple[Structure, float | None, dict[str, Any]]]:
    """Relax each structure briefly under the judge (FIRE, cell included, at most ``steps`` steps and
    ``seconds`` of potential time each) and return (relaxed structure, energy per atom or None, record)."""
    from pymatgen.io.ase import AseAtomsAdaptor

    from dao.relaxation import relax_batch

    if not structures:
        return []
    potential = _potential(judge, energy_model if judge == "dao" else "default", device)
    atoms = [AseAtomsAdaptor.get_atoms(s) for s in structures]
    out = []
    for s, r in zip(structures, relax_batch(atoms, potential, steps=steps, fmax=RELAX_FMAX, timeout=seconds)):
        rec = {k: r.record[k] for k in ("status", "steps", "energy_initial", "energy_final", "reason")
               if k in r.record}
        e = r.record.get("energy_final")
        if e is None or not math.isfinite(e) or r.record["status"] == "error":
            out.append((s, None, rec))
            continue
        relaxed = AseAtomsAdaptor.get_structure(r.atoms)
        out.append((relaxed, float(e), rec))
    return out


def rank_candidates(cands: Sequence[Candidate], judge: str = "none", device: str = "cpu",
                    steps: int = RELAX_STEPS, seconds: float = RELAX_SECONDS, energy_model: str = "default",
                    notes: Sequence[str] = ()) -> Ranking:
    """Screen, merge and order ``cands`` (see the module docstring); ``judge`` is "chgnet", "dao", "none"
    or "auto" (:func:`default_judge`). Among the non-template candidates, those the judge fails on (or whose
    relaxed cell turns invalid) come after all judged ones, in source order."""
    judge = default_judge() if judge == "auto" else judge
    if judge not in JUDGES:
        raise DAOError(f"unknown judge {judge!r}: use one of {', '.join(JUDGES)} or auto")
    kept, invalid, merged = screen_and_merge(cands)
    counts = {"proposed": len(cands), "invalid_dropped": invalid, "duplicates_merged": merged, "judged": 0}
    for src in SOURCES:
        counts[f"proposed_{src}"] = sum(c.source == src for c in cands)
    items = [Judged(c, flags, c.structure) for c, flags in kept]
    if judge != "none":
        for item, (relaxed, energy, rec) in zip(items, judge_structures(
                [c.structure for c, _ in kept], judge, device, steps, seconds, energy_model)):
            item.record = rec
            flags = validity_flags(relaxed)
            if energy is not None and flags["valid"]:
                item.structure, item.energy_per_atom, item.flags = relaxed, energy, flags
                counts["judged"] += 1
        # templates keep their (learned, judge-aware) order: sorting them by relaxed energy measured worse
        def key(i: int) -> tuple:
            if items[i].candidate.source == "template":
                return (0, i)
            e = items[i].energy_per_atom
            return (1, e is None, e or 0.0, i)

        order = sorted(range(len(items)), key=key)
        items = [items[i] for i in order]
    for k, item in enumerate(items, 1):
        item.rank = k
    return Ranking(items, counts, judge, list(notes))
