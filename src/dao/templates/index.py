"""TemplateIndex: known structures keyed by prototype, proposing substituted candidates (docs/templates.md).

The prototype of a cell is its sorted site counts per element ((1, 2, 4) for A2BC4 with 7 sites). For a target
cell, every index entry of the same prototype is a template; each admissible species assignment
(:mod:`dao.templates.assign`) has a distance d under the element similarity ``similarity``, the template's
score is exp(−d) of its best assignment, and the substituted structure's volume is the template's, scaled by
the ratio of Σr³ (atomic radii) after and before substitution. Candidates come best first: the best
assignment of each distinct template, then further assignments (a template of 1/m of the cell, m a common
divisor of its counts, is proposed as an m-fold supercell); a candidate that StructureMatcher-matches
one already proposed (same space group of the template) is skipped.
"""
from __future__ import annotations

import functools
import math
from collections import defaultdict
from functools import reduce
from importlib import resources
from math import gcd
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np

from dao.candidates import Candidate
from dao.data.dedupe import StructureDeduplicator
from dao.formula import CellComposition, reduced_formula_of
from dao.templates.assign import assignments, distance
from dao.templates.build import build_arrays, exclusion_guard, is_excluded
from dao.templates.elements import atomic_volume, distance_matrix
from dao.templates.ranker import (DEFAULT_ENERGY_RANKERS, RERANKED, Scanned, TemplateRanker, default_ranker_path,
                                  features, relative_energies)
from dao.templates.store import TemplateArrays, load_arrays, save_arrays

if TYPE_CHECKING:
    from pymatgen.core import Structure

#: a judge's energy per atom for each structure (None where it fails), for judge-aware template ranking
EnergyFn = Callable[[list["Structure"]], list]

DEFAULT_INDEX = "templates_default.npz"
DEFAULT_SIMILARITY = "en_radius"  # measured best of en_radius / mendeleev (docs/templates.md)
_SCAN = 6  # candidates examined per requested one (dedup of equivalent substitutions), at least _MIN_SCAN
_MIN_SCAN = 64


def _prototype(counts: Iterable[int]) -> tuple[int, ...]:
    return tuple(sorted(counts))


class TemplateIndex:
    """Corpus structures by prototype (see the module docstring). ``similarity`` names the element distance
    used to assign species and rank templates; ``volume`` is ``"ratio"`` (template volume × Σr³ ratio) or
    ``"template"`` (unscaled); ``en_order`` switches to the naive electronegativity-order assignment;
    ``ranker`` is the learned order and ``energy_rankers`` (judge name → ranker) the judge-aware ones."""

    def __init__(self, arrays: TemplateArrays, similarity: str = DEFAULT_SIMILARITY, volume: str = "ratio",
                 en_order: bool = False, vote: bool = False, ranker: TemplateRanker | None = None,
                 energy_rankers: dict[str, TemplateRanker] | None = None) -> None:
        self.arrays, self.similarity, self.volume, self.en_order = arrays, similarity, volume, en_order
        self.vote, self.ranker, self.energy_rankers = vote, ranker, dict(energy_rankers or {})
        self._by_proto: dict[tuple[int, ...], list[int]] = defaultdict(list)
        self._comps: list[list[tuple[int, int]]] = []
        for i in range(len(arrays)):
            z, n = np.unique(arrays.numbers[arrays.offsets[i]:arrays.offsets[i + 1]], return_counts=True)
            comp = [(int(a), int(b)) for a, b in zip(z, n)]
            self._comps.append(comp)
            self._by_proto[_prototype(n.tolist())].append(i)

    @classmethod
    def build(cls, sources: Sequence[str | Path], exclude: Sequence[str | Path] = (), max_atoms: int = 52,
              progress: bool = False) -> TemplateIndex:
        """Index the structures of ``sources`` minus those of ``exclude`` (ids and StructureMatcher)."""
        return cls(build_arrays(sources, exclude, max_atoms, progress)[0])

    @classmethod
    def load(cls, path: str | Path = "default", ranker: str | Path | None = "default") -> TemplateIndex:
        """Load an index file; ``"default"`` is the one bundled with DAO. ``ranker`` orders its candidates:
        a ranker file, ``"default"`` (the bundled learned ranker and judge-aware rankers, those the package
        has) or None (similarity order)."""
        if str(path) == "default":
            path = Path(str(resources.files("dao.resources").joinpath(DEFAULT_INDEX)))
        energy_rankers = {}
        if ranker is not None and str(ranker) == "default":
            ranker = default_ranker_path() if default_ranker_path().is_file() else None
            energy_rankers = {judge: TemplateRanker.load(default_ranker_path(judge))
                              for judge in DEFAULT_ENERGY_RANKERS if default_ranker_path(judge).is_file()}
        return cls(load_arrays(path), ranker=TemplateRanker.load(ranker) if ranker is not None else None,
                   energy_rankers=energy_rankers)

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` (atomically)."""
        save_arrays(self.arrays, path)

    def __len__(self) -> int:
        return len(self.arrays)

    @property
    def num_prototypes(self) -> int:
        """The number of distinct prototypes (sorted site counts) in the index."""
        return len(self._by_proto)

    def with_options(self, similarity: str | None = None, volume: str | None = None,
                     en_order: bool | None = None, vote: bool | None = None) -> TemplateIndex:
        """The same entries with other proposal options."""
        return TemplateIndex(self.arrays, similarity or self.similarity, volume or self.volume,
                             self.en_order if en_order is None else en_order, self.vote if vote is None else vote,
                             self.ranker, self.energy_rankers)

    def with_ranker(self, ranker: TemplateRanker | None, energy_rankers: dict[str, TemplateRanker] | None = None
                    ) -> TemplateIndex:
        """The same entries and options, candidates ordered by ``ranker`` (None: by similarity) and, when a
        judge's energies are given to :meth:`propose`, by ``energy_rankers`` (judge name → ranker)."""
        return TemplateIndex(self.arrays, self.similarity, self.volume, self.en_order, self.vote, ranker,
                             energy_rankers)

    def without(self, ids: Iterable[str] = (), structures: Sequence[Structure] = ()) -> TemplateIndex:
        """The index minus entries whose id is in ``ids`` or whose structure matches one of ``structures``
        (StructureMatcher, default tolerances, same reduced formula): the leakage guard for evaluation."""
        id_set, guard = exclusion_guard(ids, structures)
        keep = [i for i in range(len(self)) if not is_excluded(
            str(self.arrays.ids[i]), self._numbers(i), lambda i=i: self.structure(i), id_set, guard)]
        return TemplateIndex(self.arrays.take(np.array(keep, dtype=np.int64)), self.similarity, self.volume,
                             self.en_order, self.vote, self.ranker, self.energy_rankers)

    def _numbers(self, i: int) -> np.ndarray:
        return self.arrays.numbers[self.arrays.offsets[i]:self.arrays.offsets[i + 1]].astype(np.int64)

    def structure(self, i: int, mapping: dict[int, int] | None = None) -> Structure:
        """Entry ``i`` as a pymatgen Structure, species substituted by ``mapping`` (Z → Z) and its volume
        rescaled (``volume`` option) when given."""
        from pymatgen.core import Lattice, Structure

        a = self.arrays
        numbers = self._numbers(i)
        lattice = a.lattices[i].astype(np.float64)
        if mapping:
            new = np.array([mapping[int(z)] for z in numbers])
            if self.volume == "ratio":
                lattice = lattice * (atomic_volume(new) / atomic_volume(numbers)) ** (1 / 3)
            numbers = new
        frac = a.frac[a.offsets[i]:a.offsets[i + 1]].astype(np.float64)
        return Structure(Lattice(lattice), numbers.tolist(), frac)

    def ranked(self, cell: CellComposition) -> list[tuple[float, int, dict[int, int], int]]:
        """(distance, entry, assignment, supercell multiple) for every template and assignment of ``cell``,
        best first: the best assignment of each template in order, then the other assignments in order.
        Templates of the cell's prototype divided by any common divisor m of its counts count too (as m-fold
        supercells)."""
        from pymatgen.core import Element

        target = [(Element(el).Z, n) for el, n in cell.counts]
        dist = distance_matrix(self.similarity)
        firsts, rest = [], []
        g = reduce(gcd, (n for _, n in target))
        for m in (m for m in range(1, g + 1) if g % m == 0):
            part = [(z, n // m) for z, n in target]
            for i in self._by_proto.get(_prototype(n for _, n in part), []):
                options = assignments(self._comps[i], part, dist, self.en_order)
                if self.en_order and options:  # rank templates by en_radius distance under the naive assignment
                    options = [(distance(self._comps[i], options[0][1], distance_matrix("en_radius")), options[0][1])]
                firsts += [(d, i, a, m) for d, a in options[:1]]
                rest += [(d, i, a, m) for d, a in options[1:]]
        return sorted(firsts, key=lambda r: r[0]) + sorted(rest, key=lambda r: r[0])

    def scan(self, cell: CellComposition, depth: int, skip: Callable[[int], bool] | None = None,
             stop_at: int | None = None, novel: bool = False) -> list[tuple[Candidate, Scanned]]:
        """The distinct candidates among the first ``depth`` (template, assignment) pairs of :meth:`ranked`,
        in that order, each with the facts the learned ranker scores (:class:`dao.templates.ranker.Scanned`);
        a later pair that gives the same structure adds a vote to the earlier one. ``skip(entry)`` True
        leaves an entry out (the leave-one-out guard when training the ranker); the scan stops once
        ``stop_at`` candidates are kept. ``novel``: the known structures of the composition (entries of the
        same chemistry, unsubstituted) are not proposed, nor any candidate StructureMatcher-equal to one."""
        from pymatgen.core import Element

        seen = StructureDeduplicator()  # equivalent substitutions: StructureMatcher within a space group
        pairs = [r for r in self.ranked(cell) if skip is None or not skip(r[1])]
        if novel:
            for _, i, mapping, m in pairs:
                if _is_known(mapping):
                    seen.exclude(int(self.arrays.spacegroup[i]), functools.partial(self._candidate, i, mapping, m), i)
            pairs = [r for r in pairs if not _is_known(r[2])]
        out: list[tuple[Candidate, Scanned]] = []
        best_done: set[int] = set()
        for d, i, mapping, m in pairs[:depth]:
            if stop_at is not None and len(out) >= stop_at:
                break
            s = self._candidate(i, mapping, m)
            sg = int(self.arrays.spacegroup[i])
            verdict, rep = seen.add(sg, s, len(out))
            if verdict == "matches_excluded":
                continue
            if verdict != "kept":
                out[rep][1].votes += 1
                out[rep][1].vote_similarity += math.exp(-d)
                continue
            numbers = self._numbers(i)
            facts = Scanned(
                template=self._comps[i], mapping=mapping,
                rank=len(out), best_of_template=i not in best_done, votes=1, vote_similarity=math.exp(-d),
                prototype_count=len(self._by_proto[_prototype(n for _, n in self._comps[i])]),
                volume_ratio=atomic_volume(np.array([mapping[int(z)] for z in numbers])) / atomic_volume(numbers),
                supercell=m, atoms=len(s), elements=len(self._comps[i]), spacegroup=sg,
                source=str(self.arrays.sources[self.arrays.source[i]]))
            best_done.add(i)
            info = {"template_id": str(self.arrays.ids[i]),
                    "template_formula": reduced_formula_of(numbers.tolist()),
                    "template_source": facts.source,
                    "assignment": {Element.from_Z(a).symbol: Element.from_Z(b).symbol for a, b in mapping.items()},
                    "spacegroup": sg, "similarity": math.exp(-d), "supercell": m, "known": _is_known(mapping)}
            out.append((Candidate(cell, s, "template", info, prior=math.exp(-d)), facts))
        return out

    def _candidate(self, i: int, mapping: dict[int, int], m: int) -> Structure:
        s = self.structure(i, mapping)
        if m > 1:
            s.make_supercell([m, 1, 1])
        return s

    def propose(self, cell: CellComposition, limit: int = 8, novel: bool = False, judge: str | None = None,
                energy: EnergyFn | None = None) -> list[Candidate]:
        """Up to ``limit`` template candidates for ``cell``, best first; [] when no template fits. Known
        structures of the composition come first (``info["known"]``, prior 1); ``novel`` leaves them out
        (see :meth:`scan`; the setting of a benchmark whose answers were removed from the index). The
        substitutions follow in the learned ranker's order when the index has one (``ranker``), else by
        summed similarity of the templates giving each structure (``vote``), else by the best similarity.
        With a ``judge`` that has a judge-aware ranker (``energy_rankers``) and its ``energy`` function, the
        ranked candidates' single-point energies are computed and scored too (``info["judge_energy"]``)."""
        depth = max(limit * _SCAN, _MIN_SCAN)
        if self.ranker is None and not self.vote:  # plain order: stop scanning once enough are kept
            scanned = self.scan(cell, depth, stop_at=limit, novel=novel)
        else:
            scanned = self.scan(cell, depth, novel=novel)
        known = [c for c, f in scanned if _is_known(f.mapping)]
        rest = [(c, f) for c, f in scanned if not _is_known(f.mapping)]
        for c in known:
            c.prior = 1.0
        ranker = self.energy_rankers.get(judge) if judge is not None and energy is not None else None
        if ranker is not None and rest:
            rest = rest[:RERANKED]
            energies = energy([c.structure for c, _ in rest])
            x = np.column_stack([np.stack([features(f) for _, f in rest]), relative_energies(energies)])
            for (c, _), e in zip(rest, energies):
                c.info["judge_energy"] = None if e is None else float(e)
            self._set_priors(rest, ranker.score(x))
        elif self.ranker is not None and rest:
            rest = rest[:RERANKED]
            self._set_priors(rest, self.ranker.score(np.stack([features(f) for _, f in rest])))
        elif self.vote:
            for c, f in rest:
                c.prior = f.vote_similarity
        order = sorted(range(len(rest)), key=lambda j: (-rest[j][0].prior, j))
        return (known + [rest[j][0] for j in order])[:limit]

    @staticmethod
    def _set_priors(rest: list[tuple[Candidate, Scanned]], logits: np.ndarray) -> None:
        for (c, _), z in zip(rest, logits):
            c.prior = float(1.0 / (1.0 + math.exp(-float(np.clip(z, -50, 50)))))


def _is_known(mapping: dict[int, int]) -> bool:
    """An unsubstituted entry: the assignment maps every element onto itself."""
    return all(a == b for a, b in mapping.items())
