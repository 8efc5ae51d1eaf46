"""Compositions and formulas, in one place: formula parsing and cell-multiple (Z) enumeration with one-line
errors for bad input, whole-atom cells of fractional formulas, and reduced compositions / formulas of
atomic numbers, formula strings and CSV rows."""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from functools import cache, reduce
from math import gcd
from typing import TYPE_CHECKING

from dao.constants import MAX_FORMULA_ATOMS, MAX_Z
from dao.errors import FormulaError

if TYPE_CHECKING:
    from pymatgen.core import Composition, Structure

_ELEMENT = re.compile(r"[A-Z][a-z]*")
_NUMBER = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<exp>[eE][+-]?[0-9]+)?")
_CLOSE = {"(": ")", "[": "]"}
_ISOTOPES = ("D", "T")
_FORMULA_SUM = re.compile(r"^_chemical_formula_sum\s+(.+)$", re.MULTILINE)


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

    @classmethod
    def of_structure(cls, structure: Structure) -> CellComposition:
        """The cell a structure is: its element counts in order of first appearance, Z their gcd."""
        symbols = [site.specie.symbol for site in structure]
        counts = {el: symbols.count(el) for el in dict.fromkeys(symbols)}
        return cls(tuple(counts.items()), reduce(gcd, counts.values()))


def parse_formula(text: str) -> CellComposition:
    """Parse a formula as typed ('CsV3Sb5', 'Cs2V6Sb10', 'Ba(FeAs)2'); Z is the multiple of its reduced form.

    The grammar is strict (see :func:`_amounts`); anything else is a :class:`FormulaError` naming the problem.
    """
    text = (text or "").strip()
    if not text:
        raise FormulaError("empty formula")
    amounts = _amounts(text)
    if not amounts:
        raise FormulaError(f"formula {_q(text)} contains no atoms")
    table = _element_numbers()
    counts = []
    for el, amt in amounts.items():
        if amt.denominator != 1:
            raise FormulaError(f"formula {_q(text)} has a non-integer amount of {el} ({float(amt):g}); "
                               "give whole atoms per cell")
        if table[el] > MAX_Z:
            raise FormulaError(f"element {el} (Z={table[el]}) is not supported (Z ≤ {MAX_Z})")
        counts.append((el, int(amt)))
    z = reduce(gcd, [n for _, n in counts])
    return CellComposition(tuple(counts), z)


def _amounts(text: str) -> dict[str, Fraction]:
    """Element amounts of a formula, in order of first appearance.

    Grammar: a sequence of element symbols (``[A-Z][a-z]*``, a real element) and groups ``( … )`` or
    ``[ … ]``, each optionally followed directly by a count: ASCII digits, optionally with a decimal part
    (a fractional count is rejected later as non-integer). Spaces and tabs may separate tokens ('Na4 Cl4')
    but not a count from what it multiplies ('Fe 2' is an error). Zero counts, exponents, non-ASCII digits,
    isotope symbols (D, T), any other character and more than MAX_FORMULA_ATOMS atoms are errors.
    """
    stack: list[dict[str, Fraction]] = [{}]
    opens: list[tuple[str, int]] = []
    last: dict[str, Fraction] | None = None  # what a count right here would multiply
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch in " \t":
            last, i = None, i + 1
        elif "A" <= ch <= "Z":
            sym = _ELEMENT.match(text, i).group(0)
            _check_symbol(sym, text)
            last = {sym: Fraction(1)}
            _merge(stack[-1], last, 1, text)
            i += len(sym)
        elif ch in "0123456789.":
            m = _NUMBER.match(text, i)
            if m is None:
                raise FormulaError(f"cannot parse formula {_q(text)}: stray '.' at position {i}")
            _merge(stack[-1], last or {}, _count(m, last, text) - 1, text)
            last, i = None, m.end()
        elif ch in "([":
            stack.append({})
            opens.append((ch, i))
            last, i = None, i + 1
        elif ch in ")]":
            if not opens or _CLOSE[opens.pop()[0]] != ch:
                raise FormulaError(f"cannot parse formula {_q(text)}: unmatched {ch!r} at position {i}")
            last = stack.pop()
            if not last:
                raise FormulaError(f"cannot parse formula {_q(text)}: empty brackets before position {i}")
            _merge(stack[-1], last, 1, text)
            i += 1
        else:
            raise FormulaError(f"cannot parse formula {_q(text)}: {_describe(ch)} at position {i}")
    if opens:
        raise FormulaError(f"cannot parse formula {_q(text)}: unclosed {opens[-1][0]!r} at position {opens[-1][1]}")
    return stack[0]


def _check_symbol(sym: str, text: str) -> None:
    if sym in _ISOTOPES:
        raise FormulaError(f"{sym} is an isotope; write H (formula {_q(text)})")
    if sym not in _element_numbers():
        raise FormulaError(f"unknown element {sym!r} in formula {_q(text)}")


def _count(m: re.Match, last: dict[str, Fraction] | None, text: str) -> Fraction:
    """The count matched by ``m``: positive, small, and right after an element or a group."""
    digits = m.group(0)
    if last is None:
        raise FormulaError(f"cannot parse formula {_q(text)}: count {digits} at position {m.start()} follows no "
                           "element or group (write counts right after what they multiply)")
    if m.group("exp"):
        raise FormulaError(f"cannot parse formula {_q(text)}: exponent in count {digits!r}; write plain digits")
    if len(digits.split(".")[0].lstrip("0")) > len(str(MAX_FORMULA_ATOMS)):
        raise FormulaError(f"formula {_q(text)} has more than {MAX_FORMULA_ATOMS} atoms")
    value = Fraction(digits)
    if len(digits.split(".")[0]) > 1 and digits.startswith("0") and value != 0:
        raise FormulaError(f"formula {_q(text)} has a count with a leading zero ({digits!r} at position {m.start()})")
    if value == 0:
        raise FormulaError(f"formula {_q(text)} has a zero count ({digits!r} at position {m.start()}); "
                           "leave the element out instead")
    return value


def _merge(into: dict[str, Fraction], amounts: Mapping[str, Fraction], times: Fraction | int, text: str) -> None:
    for el, amt in amounts.items():
        into[el] = into.get(el, Fraction(0)) + amt * times
    if sum(into.values()) > MAX_FORMULA_ATOMS:
        raise FormulaError(f"formula {_q(text)} has more than {MAX_FORMULA_ATOMS} atoms")


def _describe(ch: str) -> str:
    if ch.isdigit() or ch.isnumeric():
        return f"non-ASCII digit {ch!r} (write counts with 0-9)"
    if ch.isspace():
        return f"unexpected whitespace {ch!r} (only spaces and tabs separate tokens)"
    return f"unexpected character {ch!r}"


def _q(text: str) -> str:
    """The formula quoted for an error message, shortened when long."""
    return repr(text if len(text) <= 60 else text[:57] + "...")


@cache
def _element_numbers() -> dict[str, int]:
    """Symbol → atomic number of every real element (isotope pseudo-elements D and T excluded)."""
    from pymatgen.core import Element

    return {el.symbol: el.Z for el in Element if el.symbol not in _ISOTOPES}


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


def integer_cell(formula: str, max_atoms: int, tol: float = 1e-3) -> CellComposition | None:
    """The smallest whole-atom multiple of ``formula`` (amounts may be fractional, e.g. La1.85Sr0.15CuO4)
    with at most ``max_atoms`` atoms, or None."""
    from pymatgen.core import Composition, Element

    try:
        comp = Composition(formula)
    except Exception:
        return None
    # pymatgen may read an unknown symbol as a dummy species: only real elements up to MAX_Z count
    if not len(comp) or any(not isinstance(el, Element) or el.Z > MAX_Z for el in comp):
        return None
    for z in range(1, max_atoms + 1):
        amounts = [(el.symbol, amt * z) for el, amt in comp.items()]
        if all(abs(a - round(a)) < tol * z for _, a in amounts):
            counts = tuple((el, int(round(a))) for el, a in amounts)
            if any(n < 1 for _, n in counts):
                return None
            if sum(c for _, c in counts) > max_atoms:
                return None
            return CellComposition(counts, reduce(gcd, [c for _, c in counts]))
    return None


def reduced_composition(numbers: Iterable[int]) -> tuple[tuple[int, int], ...]:
    """((Z, count), ...) of atomic numbers, sorted by Z, with the counts divided by their gcd."""
    counts: dict[int, int] = {}
    for z in numbers:
        counts[int(z)] = counts.get(int(z), 0) + 1
    g = reduce(gcd, counts.values(), 0) or 1
    return tuple((z, n // g) for z, n in sorted(counts.items()))


def formula_of(composition: Iterable[tuple[int, int]]) -> str:
    """pymatgen's reduced formula of ((Z, count), ...)."""
    from pymatgen.core import Composition, Element

    return Composition({Element.from_Z(z): n for z, n in composition}).reduced_formula


def reduced_formula_of(numbers: Iterable[int]) -> str:
    """pymatgen's reduced formula of a cell's atomic numbers (e.g. ``[11, 17, 11, 17]`` -> ``NaCl``)."""
    return formula_of(reduced_composition(numbers))


def reduced_formula(formula: str) -> str | None:
    """pymatgen's reduced formula of a formula string, or None when it does not parse."""
    from pymatgen.core import Composition

    try:
        return Composition(formula).reduced_formula
    except Exception:
        return None


def row_composition(row: Mapping[str, str]) -> Composition:
    """The composition of a CSV row: its ``pretty_formula`` or ``formula`` column, else the CIF's
    ``_chemical_formula_sum``. Raises ValueError when it has none."""
    from pymatgen.core import Composition

    for key in ("pretty_formula", "formula"):
        if row.get(key):
            return Composition(row[key])
    m = _FORMULA_SUM.search(row.get("cif", ""))
    if m:
        return Composition(m.group(1).strip().strip("'\""))
    raise ValueError("no formula column and no _chemical_formula_sum in the CIF")
