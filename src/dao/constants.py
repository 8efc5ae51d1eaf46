"""Constants shared across DAO: one definition each (import them from here, never redefine them)."""
from __future__ import annotations

#: largest atomic number the atom descriptor table (and therefore every model) covers
MAX_Z = 100
#: E_hull (eV/atom) at or below which a structure counts as stable (metastable included), as in the paper
STABILITY_THRESHOLD = 0.08
#: CSV columns that may hold an entry's identifier, in order of preference
ID_COLUMNS = ("material_id", "id", "name")
#: CSV columns that may hold the energy above hull (eV/atom), in order of preference
EHULL_COLUMNS = ("e_above_hull", "energy_above_hull", "e_hull")
#: atoms closer than this (Å) make a structure invalid (DiffCSP's structure-validity cutoff)
MIN_DISTANCE = 0.5
#: most atoms a typed formula may describe (checked while parsing, before anything is built)
MAX_FORMULA_ATOMS = 10_000
#: sane cells (checked before any lattice reduction, which can run for minutes on degenerate cells):
#: volume per atom (Å³) within [MIN_VOLUME_PER_ATOM, MAX_VOLUME_PER_ATOM] and lattice lengths ≤ MAX_CELL_LENGTH Å
MIN_VOLUME_PER_ATOM = 0.1
MAX_VOLUME_PER_ATOM = 1.0e4
MAX_CELL_LENGTH = 1.0e3
#: atoms of an input structure (energy, relax, predict-property, training data) closer than this (Å, periodic
#: images included) make it unphysical and it is refused; generated structures are flagged (MIN_DISTANCE) instead
MIN_INPUT_DISTANCE = 0.1
#: what the ranked benchmark's leakage guard removes from the template index: the whole split file, or only the
#: evaluated rows (the index a held-out test evaluation has)
TEMPLATE_GUARDS = ("split", "rows")
