"""Formula parsing and cell-multiple (Z) enumeration, with one-line errors for bad input."""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import reduce
from math import gcd

from dao.errors import FormulaError

MAX_Z = 100  # elements covered by the descriptor table
_TOKEN = re.compile(r"([A-Z][a-z]*)")


@dataclass(frozen=True)
class CellComposition:
    """One cell to generate: element counts in the cell, and its multiple Z of the reduced formula."""

    counts: tuple[tuple[str, int], ...]  # (symbol, count) in order of appearance
    z: int

    @property
    def num_atoms(self) -> int:
        return sum(n for _, n in self.counts)

    @property
    def formula(self) -> str:
        return "".join(f"{el}{n if n != 1 else ''}" for el, n in self.counts)

    @property
    def reduced_formula(self) -> str:
        return "".join(f"{el}{n // self.z if n // self.z != 1 else ''}" for el, n in self.counts)

    def atomic_numbers(self) -> list[int]:
        from pymatgen.core import Element

        return [Element(el).Z for el, n in self.counts for _ in range(n)]


def parse_formula(text: str) -> CellComposition:
    """Parse a formula as typed ('CsV3Sb5', 'Cs2V6Sb10', 'Ba(FeAs)2'); Z is the multiple of its reduced form."""
    from pymatgen.core import Composition, Element

    text = (text or "").strip()
    if not text:
        raise FormulaError("empty formula")
    for sym in _TOKEN.findall(text):
        if not Element.is_valid_symbol(sym):
            raise FormulaError(f"unknown element {sym!r} in formula {text!r}")
    try:
        comp = Composition(text)
    except Exception:
        raise FormulaError(f"cannot parse formula {text!r}") from None
    if len(comp) == 0:
        raise FormulaError(f"formula {text!r} contains no atoms")
    counts = []
    for el, amt in comp.items():
        if abs(amt - round(amt)) > 1e-8 or round(amt) < 1:
            raise FormulaError(f"formula {text!r} has a non-integer amount of {el} ({amt:g}); give whole atoms per cell")
        if el.Z > MAX_Z:
            raise FormulaError(f"element {el.symbol} (Z={el.Z}) is not supported (Z ≤ {MAX_Z})")
        counts.append((el.symbol, int(round(amt))))
    z = reduce(gcd, [n for _, n in counts])
    return CellComposition(tuple(counts), z)


def cells_to_generate(formula: str, model_max_atoms: int, atoms: int | None = None,
                      max_atoms: int | None = None) -> list[CellComposition]:
    """The cells to sample for a formula.

    * ``atoms=N``: the multiple of the reduced formula with N atoms (N must be a multiple of it);
    * ``max_atoms=M``: every multiple Z = 1, 2, … with Z·n ≤ min(M, model limit);
    * neither: the formula exactly as typed.
    """
    comp = parse_formula(formula)
    reduced = CellComposition(tuple((el, n // comp.z) for el, n in comp.counts), 1)
    n1 = reduced.num_atoms
    if atoms is not None and max_atoms is not None:
        raise FormulaError("give either --atoms or --max-atoms, not both")
    if atoms is not None:
        if atoms < 1 or atoms % n1:
            raise FormulaError(f"--atoms {atoms} is not a multiple of {reduced.formula} ({n1} atoms per formula unit)")
        cells = [_multiple(reduced, atoms // n1)]
    elif max_atoms is not None:
        limit = min(max_atoms, model_max_atoms)
        cells = [_multiple(reduced, z) for z in range(1, limit // n1 + 1)]
        if not cells:
            raise FormulaError(f"{reduced.formula} has {n1} atoms per formula unit, more than "
                               f"--max-atoms {max_atoms} / model limit {model_max_atoms}")
    else:
        cells = [comp]
    for c in cells:
        if c.num_atoms > model_max_atoms:
            raise FormulaError(f"too many atoms: {c.formula} has {c.num_atoms} atoms per cell, the model supports at most "
                               f"{model_max_atoms} (use --max-atoms or a smaller formula)")
    return cells


def _multiple(reduced: CellComposition, z: int) -> CellComposition:
    return CellComposition(tuple((el, n * z) for el, n in reduced.counts), z)
