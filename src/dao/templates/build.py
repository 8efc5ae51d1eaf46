"""Building template arrays from structure files, and the leakage guard (docs/templates.md, 'Index').

Entries come from any file :func:`dao.data.readers.read_any` reads (Niggli-reduced crystals). An entry is
dropped when it has more than ``max_atoms`` sites, when its id or its structure (StructureMatcher, default
tolerances, same reduced formula: :class:`dao.data.dedupe.StructureDeduplicator`) is excluded, or when it
repeats an earlier entry (same id, or a StructureMatcher duplicate among entries of equal reduced formula,
site count and space group; earlier sources win).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np

from dao.crystal import Crystal
from dao.data.dedupe import StructureDeduplicator
from dao.formula import reduced_formula_of
from dao.templates.store import TemplateArrays

if TYPE_CHECKING:
    from pymatgen.core import Structure


def spacegroup_number(crystal: Crystal, symprec: float = 0.1) -> int:
    """spglib's space group number of a crystal (0 when spglib finds none)."""
    import spglib

    try:
        data = spglib.get_symmetry_dataset((crystal.lattice, crystal.frac_coords, crystal.atomic_numbers),
                                           symprec=symprec)
    except Exception:  # spglib raises on degenerate cells
        return 0
    return int(data.number) if data is not None else 0


def exclusion_guard(ids: Iterable[str], structures: Sequence[Structure]) -> tuple[set[str], StructureDeduplicator]:
    """The excluded ids and a deduplicator holding the excluded structures, bucketed by reduced formula."""
    dedup = StructureDeduplicator()
    for s in structures:
        dedup.exclude(_formula_key(site.specie.Z for site in s), s, None)
    return {str(i) for i in ids}, dedup


def is_excluded(crystal_id: str, numbers: np.ndarray, structure: object, ids: set[str],
                guard: StructureDeduplicator) -> bool:
    """True when the id is excluded or the structure (or a function making it) matches an excluded one."""
    if crystal_id in ids:
        return True
    key = _formula_key(numbers.tolist())
    return key in guard.excluded and guard.add(key, structure, None, keep=False)[0] == "matches_excluded"


def _formula_key(numbers: Iterable[int]) -> str:
    return reduced_formula_of(numbers)


def read_excluded(paths: Sequence[str | Path]) -> tuple[set[str], StructureDeduplicator]:
    """The exclusion guard of split files (their ids and structures)."""
    from dao.data.readers import read_any

    crystals = [c for p in paths for c in read_any(p)[0]]
    return exclusion_guard([c.meta["id"] for c in crystals if c.meta.get("id")],
                           [c.to_structure() for c in crystals])


def build_arrays(sources: Sequence[str | Path], exclude: Sequence[str | Path] = (), max_atoms: int = 52,
                 progress: bool = False) -> tuple[TemplateArrays, dict]:
    """Template arrays of ``sources`` (see the module docstring) and counts per source."""
    from tqdm.auto import tqdm

    from dao.data.readers import read_any

    ids, guard = read_excluded(exclude)
    dedup = StructureDeduplicator()
    seen: set[str] = set()
    kept: list[tuple[Crystal, int, int]] = []
    counts: dict = {}
    for si, src in enumerate(sources):
        crystals, skipped = read_any(src, progress=progress)
        c_counts = counts.setdefault(str(src), {"read": len(crystals), "unreadable": len(skipped), "too_large": 0,
                                               "excluded": 0, "duplicate": 0, "kept": 0})
        for c in tqdm(crystals, desc=f"indexing {Path(src).name}", disable=not progress, unit="entries"):
            cid = str(c.meta.get("id") or f"{Path(src).name}:{c.meta.get('row', len(kept))}")
            if c.num_atoms > max_atoms:
                c_counts["too_large"] += 1
            elif is_excluded(cid, c.atomic_numbers, c.to_structure, ids, guard):
                c_counts["excluded"] += 1
            else:
                sg = spacegroup_number(c)
                key = (_formula_key(c.atomic_numbers.tolist()), c.num_atoms, sg)
                if cid in seen or dedup.add(key, c.to_structure, cid)[0] != "kept":
                    c_counts["duplicate"] += 1
                    continue
                seen.add(cid)
                c.meta["id"] = cid
                kept.append((c, si, sg))
                c_counts["kept"] += 1
    return arrays_of(kept, [str(s) for s in sources]), counts


def arrays_of(entries: Sequence[tuple[Crystal, int, int]], sources: Sequence[str]) -> TemplateArrays:
    """Pack (crystal, source index, space group) entries into :class:`TemplateArrays`."""
    sizes = [c.num_atoms for c, _, _ in entries]
    cat = (lambda xs, shape: np.concatenate(xs) if xs else np.zeros(shape))  # noqa: E731
    return TemplateArrays(
        numbers=cat([c.atomic_numbers for c, _, _ in entries], (0,)).astype(np.int16),
        frac=cat([c.frac_coords for c, _, _ in entries], (0, 3)).astype(np.float32),
        offsets=np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64),
        lattices=np.array([c.lattice for c, _, _ in entries], dtype=np.float32).reshape(-1, 3, 3),
        ids=np.array([str(c.meta["id"]) for c, _, _ in entries], dtype=str),
        source=np.array([s for _, s, _ in entries], dtype=np.int16),
        sources=np.array([f"{Path(s).parent.name}/{Path(s).name}" for s in sources], dtype=str),
        spacegroup=np.array([g for _, _, g in entries], dtype=np.int16))
