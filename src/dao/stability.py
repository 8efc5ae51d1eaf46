"""Thermodynamic stability of (generated) structures against a reference convex hull built from labelled
entries at hand, judged by an independent potential (CHGNet).

**Energy reference.** The hull lives in formation-energy space. Reference entries are Materials Project
entries with their DFT formation energy per atom as labelled in the CSVs (MP applies its 2020 compatibility
corrections to these). A judged structure's formation energy is

    E_form = E_pot / N − Σ_i x_i μ_i,

with E_pot the potential's total energy (CHGNet predicts MP2020-compatible total energies: it was trained on
MPtrj corrected energies) and μ_i the DFT energy per atom of MP's elemental reference entry of element i
(``reference/mp_elemental_reference_entries.json.gz``). E_hull is then the distance to the lower convex hull
of the reference entries of the structure's chemical system (all its subsystems, elements at 0); negative
values (below the known hull) are kept.

**Limits.** (1) The hull holds only the entries at hand (by default MP-20 train and val, the MP-20
binary/ternary pool and MPTS-52 val), not all of Materials Project: competing phases may be missing, which
makes E_hull too low (optimistic). (2) The judged energy comes from CHGNet and the hull from DFT: CHGNet's
energy error (≈ 30 meV/atom MAE on MP-like structures) enters E_hull directly, so with the 0.08 eV/atom
threshold the stability rate is a screening number, not a DFT result. (3) Elements without an elemental
reference cannot be scored (``None``).
"""
from __future__ import annotations

import gzip
import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from dao.constants import STABILITY_THRESHOLD
from dao.data.paths import data_dir as default_data_dir
from dao.data.records import iter_csv_rows
from dao.errors import DAOError
from dao.formula import row_composition
from dao.potentials import CHGNetPotential, Potential
from dao.relaxation import relax_batch

if TYPE_CHECKING:
    from pymatgen.analysis.phase_diagram import PhaseDiagram
    from pymatgen.core import Composition, Structure

DEFAULT_REFERENCE_SOURCES = ("csp/mp_20/train.csv.gz", "csp/mp_20/val.csv.gz", "csp/mpts_52/val.csv.gz",
                             "pretrain/mp_20_biternary.csv.gz")
ELEMENTAL_REFERENCES = "reference/mp_elemental_reference_entries.json.gz"


def load_elemental_references(path: str | Path) -> dict[str, float]:
    """Element → DFT energy per atom of its MP elemental reference entry (a JSON of pymatgen ComputedEntry
    dicts keyed by element)."""
    with gzip.open(path, "rt") if str(path).endswith(".gz") else open(path) as fh:
        data = json.load(fh)
    refs = {}
    for el, d in data.items():
        n = sum(d["composition"].values())
        refs[el] = (float(d["energy"]) + float(d.get("correction", 0.0))) / n
    return refs


@dataclass
class HullResult:
    e_above_hull: float | None
    e_form_per_atom: float | None
    reason: str = ""


class ReferenceHull:
    """Convex hull(s) of labelled reference entries, one phase diagram per chemical system, built lazily."""

    def __init__(self, entries: Iterable[tuple[Composition, float]], elemental_refs: dict[str, float],
                 sources: Sequence[str] = ()) -> None:
        from pymatgen.analysis.phase_diagram import PDEntry

        self.mu = dict(elemental_refs)
        self.sources = list(sources)
        self._by_system: dict[frozenset[str], list[Any]] = {}
        self.n_entries = 0
        for comp, e_form in entries:
            if not math.isfinite(e_form):
                continue
            key = frozenset(el.symbol for el in comp.elements)
            self._by_system.setdefault(key, []).append(PDEntry(comp, e_form * comp.num_atoms))
            self.n_entries += 1
        self._diagrams: dict[frozenset[str], PhaseDiagram] = {}

    @classmethod
    def from_csvs(cls, paths: Sequence[str | Path], elemental_refs: str | Path,
                  column: str = "formation_energy_per_atom") -> ReferenceHull:
        warnings.filterwarnings("ignore", message="No Pauling electronegativity")
        entries, seen = [], set()
        for p in paths:
            for row in iter_csv_rows(p):
                mid, value = row.get("material_id"), row.get(column, "")
                if mid and mid in seen:
                    continue
                try:
                    e = float(value)
                    comp = row_composition(row)
                except (TypeError, ValueError):
                    continue  # unlabelled or unparsable rows do not enter the hull
                if mid:
                    seen.add(mid)
                entries.append((comp, e))
        return cls(entries, load_elemental_references(elemental_refs), sources=[str(p) for p in paths])

    @classmethod
    def default(cls, data_dir: str | Path | None = None) -> ReferenceHull:
        """The documented default: MP entries at hand under the data directory ($DAO_DATA_DIR)."""
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        paths = [root / p for p in DEFAULT_REFERENCE_SOURCES]
        missing = [str(p) for p in paths + [root / ELEMENTAL_REFERENCES] if not p.is_file()]
        if missing:
            raise DAOError(f"reference hull data not found: {missing[0]} (set DAO_DATA_DIR)")
        return cls.from_csvs([p for p in paths], root / ELEMENTAL_REFERENCES)

    def formation_energy(self, composition: Composition, energy_per_atom: float) -> float | None:
        """E_form per atom from a potential's total energy per atom (None without elemental references)."""
        frac = composition.fractional_composition
        try:
            return energy_per_atom - sum(float(x) * self.mu[el.symbol] for el, x in frac.items())
        except KeyError:
            return None

    def _diagram(self, system: frozenset[str]) -> PhaseDiagram:
        from pymatgen.analysis.phase_diagram import PDEntry, PhaseDiagram
        from pymatgen.core import Composition

        if system not in self._diagrams:
            entries = [PDEntry(Composition(el), 0.0) for el in sorted(system)]
            for r in range(1, len(system) + 1):
                for sub in combinations(sorted(system), r):
                    entries += self._by_system.get(frozenset(sub), [])
            self._diagrams[system] = PhaseDiagram(entries)
        return self._diagrams[system]

    def e_above_hull(self, composition: Composition, e_form_per_atom: float) -> float:
        """Distance (eV/atom) of a formation energy to the hull of its chemical system (negative: below)."""
        from pymatgen.analysis.phase_diagram import PDEntry

        system = frozenset(el.symbol for el in composition.elements)
        pd = self._diagram(system)
        entry = PDEntry(composition, e_form_per_atom * composition.num_atoms)
        _, e_hull = pd.get_decomp_and_e_above_hull(entry, allow_negative=True)
        return float(e_hull)

    def judge(self, composition: Composition, energy_per_atom: float) -> HullResult:
        """E_form and E_hull of a structure of ``composition`` from a potential's energy per atom."""
        if not math.isfinite(energy_per_atom):
            return HullResult(None, None, "non-finite energy")
        e_form = self.formation_energy(composition, energy_per_atom)
        if e_form is None:
            missing = [el.symbol for el in composition.elements if el.symbol not in self.mu]
            return HullResult(None, None, f"no elemental reference for {', '.join(missing)}")
        return HullResult(self.e_above_hull(composition, e_form), e_form)


class HullStabilityScorer:
    """Stability judge for :func:`dao.evaluate.evaluate`'s ``energy_scorer`` slot: relax each structure
    with a potential whose energies are MP-compatible total energies (CHGNet), then E_hull against a
    :class:`ReferenceHull`. After a call, ``relaxed`` holds the relaxed structures (None where relaxation
    failed) and ``records`` one dict per structure (relaxation record, E_form, E_hull)."""

    def __init__(self, potential: Potential, hull: ReferenceHull, relax: bool = True, steps: int = 500, fmax: float = 0.05,
                 batch_size: int = 32, timeout: float | None = None, progress: bool = False) -> None:
        self.potential, self.hull, self.relax = potential, hull, relax
        self.steps, self.fmax, self.batch_size, self.timeout, self.progress = steps, fmax, batch_size, timeout, progress
        self.relaxed: list[Structure | None] = []
        self.records: list[dict[str, Any]] = []

    def e_above_hull(self, structures: Sequence[Structure]) -> list[float | None]:
        """Relax (unless ``relax`` is off) and judge every structure; None where that fails."""
        from pymatgen.io.ase import AseAtomsAdaptor

        self.relaxed, self.records = [], []
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(structures), desc="relax + hull", unit="structure", leave=False)
        out: list[float | None] = []
        for lo in range(0, len(structures), self.batch_size):
            chunk = list(structures[lo:lo + self.batch_size])
            atoms = [AseAtomsAdaptor.get_atoms(s) for s in chunk]
            results = relax_batch(atoms, self.potential, steps=self.steps if self.relax else 0, fmax=self.fmax,
                                  timeout=self.timeout)
            for s, r in zip(chunk, results):
                rec = dict(r.record)
                ok = rec["status"] in ("converged", "not_converged", "timeout") and "energy_final" in rec
                relaxed = AseAtomsAdaptor.get_structure(r.atoms) if ok else None
                if ok:
                    h = self.hull.judge(s.composition, rec["energy_final"])
                    rec.update(e_form_per_atom=h.e_form_per_atom, e_above_hull=h.e_above_hull)
                    if h.reason:
                        rec["hull_reason"] = h.reason
                    out.append(h.e_above_hull)
                else:
                    out.append(None)
                self.relaxed.append(relaxed)
                self.records.append(rec)
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.close()
        return out

    def describe(self) -> dict[str, Any]:
        """What judged the last call: potential, relaxation steps, reference hull and relaxation outcomes."""
        return {"judge": self.potential.name, "relax_steps": self.steps if self.relax else 0,
                "reference_hull": {"sources": self.hull.sources, "entries": self.hull.n_entries},
                "relax_status": dict(Counter(r.get("status", "?") for r in self.records))}


def chgnet_stability_scorer(relax_steps: int = 500, device: str = "cpu", progress: bool = False,
                            data_dir: str | Path | None = None) -> HullStabilityScorer:
    """The ``dao evaluate --stability chgnet`` judge: CHGNet relaxation (``relax_steps`` FIRE steps, 0: none)
    and E_hull against :meth:`ReferenceHull.default`."""
    from dao.runtime import resolve_device  # imports torch: only when a potential is actually built

    return HullStabilityScorer(CHGNetPotential(device=str(resolve_device(device))), ReferenceHull.default(data_dir),
                               relax=relax_steps > 0, steps=relax_steps, progress=progress)


def stability_summary(e_hull: Sequence[float | None], n_total: int | None = None,
                      threshold: float = STABILITY_THRESHOLD) -> dict[str, Any]:
    """Stability rate (share of all ``n_total`` structures — unscored ones count as unstable — with
    E_hull ≤ threshold), counts and mean/median E_hull of the scored ones."""
    import numpy as np

    vals = np.array([v for v in e_hull if v is not None], dtype=float)
    n = len(e_hull) if n_total is None else n_total
    return {"stability_rate": float((vals <= threshold).sum() / n) if n else None, "threshold_ev_per_atom": threshold,
            "n_stable": int((vals <= threshold).sum()), "n_scored": int(len(vals)), "n_total": n,
            "mean_e_above_hull": float(vals.mean()) if len(vals) else None,
            "median_e_above_hull": float(np.median(vals)) if len(vals) else None}
