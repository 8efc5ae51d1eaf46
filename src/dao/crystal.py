"""Crystal data structures and conversion to/from pymatgen and ASE.

A crystal is M = (A, F, L): atomic numbers A (N,), fractional coordinates F in [0, 1)^(N×3) and a
lattice L (3×3, rows are lattice vectors, Cartesian X = F·L). :class:`Crystal` holds one crystal in
numpy; :class:`CrystalBatch` packs many crystals of different N into flat torch tensors with a
per-atom crystal index, the layout every model in DAO consumes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from dao.cell import canonical_lattice, niggli_reduce
from dao.constants import MAX_Z, MIN_INPUT_DISTANCE
from dao.errors import StructureReadError

__all__ = ["Crystal", "CrystalBatch", "canonical_lattice", "input_crystal", "min_distance", "structures_to_crystals"]

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from ase import Atoms
    from pymatgen.core import Structure


@dataclass
class Crystal:
    """One periodic crystal: atomic numbers, fractional coordinates, lattice rows, optional metadata."""

    atomic_numbers: np.ndarray  # (N,) int
    frac_coords: np.ndarray  # (N, 3) float in [0, 1)
    lattice: np.ndarray  # (3, 3) float, rows are lattice vectors in Å
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.frac_coords = np.asarray(self.frac_coords, dtype=np.float64).reshape(-1, 3) % 1.0
        self.lattice = np.asarray(self.lattice, dtype=np.float64).reshape(3, 3)
        if len(self.atomic_numbers) != len(self.frac_coords):
            raise StructureReadError("atomic numbers and coordinates have different lengths")

    @property
    def num_atoms(self) -> int:
        return int(len(self.atomic_numbers))

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    def min_distance(self) -> float:
        """The smallest interatomic distance (Å), periodic images included (see :func:`min_distance`)."""
        return min_distance(self.lattice, self.frac_coords)

    @classmethod
    def from_structure(cls, structure: "Structure", niggli: bool = True, meta: dict | None = None) -> "Crystal":
        """Convert a pymatgen Structure (ordered, 3-D periodic). Niggli-reduce and orient canonically."""
        check_species_and_coordinates(structure)
        s = structure
        if niggli:
            s = niggli_reduce(structure)  # bounded time; a degenerate cell is a StructureReadError
        lattice = canonical_lattice(s.lattice.matrix)
        if not np.all(np.isfinite(lattice)) or abs(np.linalg.det(lattice)) < 1e-6:
            raise StructureReadError("degenerate lattice")
        numbers = np.array([site.specie.Z for site in s], dtype=np.int64)
        return cls(numbers, s.frac_coords, lattice, dict(meta or {}))

    def to_structure(self) -> "Structure":
        from pymatgen.core import Lattice, Structure

        return Structure(Lattice(self.lattice), [int(z) for z in self.atomic_numbers], self.frac_coords)

    @classmethod
    def from_atoms(cls, atoms: "Atoms", niggli: bool = True, meta: dict | None = None) -> "Crystal":
        from pymatgen.io.ase import AseAtomsAdaptor

        if not all(atoms.pbc):
            raise StructureReadError("ASE Atoms must be periodic in all three directions")
        return cls.from_structure(AseAtomsAdaptor.get_structure(atoms), niggli=niggli, meta=meta)

    def to_atoms(self) -> "Atoms":
        from ase import Atoms

        return Atoms(numbers=self.atomic_numbers, scaled_positions=self.frac_coords, cell=self.lattice, pbc=True)


@dataclass
class CrystalBatch:
    """Many crystals packed flat: ``atom_types`` (Nt,), ``frac`` (Nt, 3), ``lattice`` (B, 3, 3),
    ``num_atoms`` (B,), ``batch`` (Nt,) crystal index of every atom. Optional per-crystal ``energy``
    (B,) with NaN for unlabelled entries."""

    atom_types: "torch.Tensor"
    frac: "torch.Tensor"
    lattice: "torch.Tensor"
    num_atoms: "torch.Tensor"
    batch: "torch.Tensor"
    energy: "torch.Tensor | None" = None

    @property
    def num_crystals(self) -> int:
        return int(self.num_atoms.shape[0])

    @classmethod
    def from_crystals(cls, crystals: Sequence[Crystal], energy_key: str | None = None) -> "CrystalBatch":
        import torch

        if len(crystals) == 0:
            raise ValueError("cannot batch zero crystals")
        num_atoms = torch.tensor([c.num_atoms for c in crystals], dtype=torch.long)
        energy = None
        if energy_key is not None:
            energy = torch.tensor([float(c.meta.get(energy_key, math.nan)) for c in crystals], dtype=torch.float32)
        return cls(
            atom_types=torch.from_numpy(np.concatenate([c.atomic_numbers for c in crystals])),
            frac=torch.from_numpy(np.concatenate([c.frac_coords for c in crystals])).float(),
            lattice=torch.from_numpy(np.stack([c.lattice for c in crystals])).float(),
            num_atoms=num_atoms,
            batch=torch.repeat_interleave(torch.arange(len(crystals)), num_atoms),
            energy=energy,
        )

    @classmethod
    def from_compositions(cls, compositions: Sequence[Sequence[int]], device: "torch.device | str" = "cpu") -> "CrystalBatch":
        """A batch with atom types set and placeholder coordinates/lattices (for sampling)."""
        import torch

        types = [torch.as_tensor(list(c), dtype=torch.long) for c in compositions]
        num_atoms = torch.tensor([len(t) for t in types], dtype=torch.long)
        nt = int(num_atoms.sum())
        return cls(
            atom_types=torch.cat(types).to(device),
            frac=torch.zeros(nt, 3, device=device),
            lattice=torch.eye(3, device=device).expand(len(types), 3, 3).clone(),
            num_atoms=num_atoms.to(device),
            batch=torch.repeat_interleave(torch.arange(len(types)), num_atoms).to(device),
        )

    def replace(self, **changes: Any) -> "CrystalBatch":
        fields = dict(self.__dict__)
        fields.update(changes)
        return CrystalBatch(**fields)

    def to(self, device: "torch.device | str") -> "CrystalBatch":
        return CrystalBatch(**{k: (v.to(device) if v is not None else None) for k, v in self.__dict__.items()})

    def crystals(self) -> list[Crystal]:
        """Split back into :class:`Crystal` objects (on CPU, float64)."""
        types = self.atom_types.detach().cpu().numpy()
        frac = self.frac.detach().cpu().double().numpy()
        lat = self.lattice.detach().cpu().double().numpy()
        bounds = np.concatenate([[0], np.cumsum(self.num_atoms.cpu().numpy())])
        return [Crystal(types[a:b], frac[a:b], lat[i]) for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def structures_to_crystals(structures: Iterable["Structure"], niggli: bool = True) -> list[Crystal]:
    return [Crystal.from_structure(s, niggli=niggli) for s in structures]


def check_species_and_coordinates(structure: Structure) -> None:
    """StructureReadError unless the structure is ordered and not empty, every site is a real element the models cover (1 ≤ Z ≤ MAX_Z; pymatgen reads
    unknown symbols as dummy species) and every coordinate and lattice entry is finite."""
    from pymatgen.core import Element

    if not structure.is_ordered:
        raise StructureReadError("disordered structure (partial occupancies) is not supported")
    if len(structure) == 0:
        raise StructureReadError("structure has no atoms")
    for site in structure:
        el = site.specie
        el = getattr(el, "element", el)  # an oxidation-state Species carries its element
        if not isinstance(el, Element):
            raise StructureReadError(f"unsupported species {str(site.specie)!r} (not a chemical element)")
        if not 1 <= el.Z <= MAX_Z:
            raise StructureReadError(f"element {el.symbol} (Z = {el.Z}) is not supported (Z ≤ {MAX_Z})")
    if not (np.isfinite(structure.lattice.matrix).all() and np.isfinite(structure.frac_coords).all()):
        raise StructureReadError("non-finite lattice or coordinates")


def min_distance(lattice: np.ndarray, frac_coords: np.ndarray) -> float:
    """The smallest distance (Å) between two atoms, or an atom and its own periodic image, of a *reduced* cell
    (Niggli or LLL: its shortest lattice vector is a basis vector and minimum images lie in the 27 nearest
    cells)."""
    from pymatgen.core import Lattice

    lat = Lattice(np.asarray(lattice, dtype=np.float64))
    frac = np.asarray(frac_coords, dtype=np.float64).reshape(-1, 3)
    dmin = float(min(lat.abc))
    if len(frac) > 1:
        d = lat.get_all_distances(frac, frac)
        dmin = min(dmin, float(d[~np.eye(len(frac), dtype=bool)].min()))
    return dmin


def input_crystal(structure: Structure, meta: dict | None = None) -> Crystal:
    """The :class:`Crystal` of a structure read from a user's file, refusing what is not physical: everything
    :meth:`Crystal.from_structure` refuses, a left-handed or singular cell as written (negative volume: e.g. a
    negative cell length in a CIF) and atoms closer than ``MIN_INPUT_DISTANCE`` Å (periodic images included).
    Raises StructureReadError naming the problem. Generated structures are flagged, not refused (dao.ranking)."""
    check_species_and_coordinates(structure)
    det = float(np.linalg.det(structure.lattice.matrix))
    if not det > 0:
        raise StructureReadError(f"cell volume {det:.4g} Å³ is not positive (a negative cell length or a "
                                 f"left-handed/singular cell)")
    crystal = Crystal.from_structure(structure, meta=meta)
    dmin = crystal.min_distance()
    if dmin < MIN_INPUT_DISTANCE:
        raise StructureReadError(f"atoms {dmin:.4g} Å apart (periodic images included; the limit is "
                                 f"{MIN_INPUT_DISTANCE:g} Å)")
    return crystal
