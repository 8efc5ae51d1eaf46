import pytest

from dao.errors import FormulaError
from dao.formula import cells_to_generate, parse_formula


def test_parse_formula_keeps_counts_and_z():
    c = parse_formula("Cs2V6Sb10")
    assert c.num_atoms == 18 and c.z == 2 and c.reduced_formula == "CsV3Sb5"
    assert parse_formula("Ba(FeAs)2").num_atoms == 5
    assert sorted(parse_formula("NaCl").atomic_numbers()) == [11, 17]


@pytest.mark.parametrize("text,needle", [("Xx2O", "unknown element 'Xx'"), ("", "empty formula"), ("   ", "empty formula"),
                                         ("Fe0.5O", "non-integer"), ("Og2", "not supported"), ("12", "cannot parse")])
def test_bad_formulas_give_clear_errors(text, needle):
    with pytest.raises(FormulaError, match=needle):
        parse_formula(text)


def test_cell_enumeration():
    assert [c.num_atoms for c in cells_to_generate("CsV3Sb5", 20)] == [9]
    assert [c.z for c in cells_to_generate("SrTiO3", 20, max_atoms=16)] == [1, 2, 3]
    assert [c.z for c in cells_to_generate("Sr2Ti2O6", 20, max_atoms=100)] == [1, 2, 3, 4]  # capped by the model
    assert cells_to_generate("SrTiO3", 20, atoms=10)[0].formula == "Sr2Ti2O6"
    with pytest.raises(FormulaError, match="too many atoms"):
        cells_to_generate("Fe1000", 20)
    with pytest.raises(FormulaError, match="not a multiple"):
        cells_to_generate("SrTiO3", 20, atoms=7)
    with pytest.raises(FormulaError, match="either"):
        cells_to_generate("SrTiO3", 20, atoms=5, max_atoms=10)


@pytest.mark.parametrize("text,needle", [
    ("NaCl0", "zero count"),  # pymatgen dropped Cl: pure Na
    ("Ti4HNa04", "leading zero"),  # "Na0" + "4" typed together is not Na4
    ("NaCl00", "zero count"),
    ("Fe1e-400O", "exponent"),  # underflow to 0 dropped Fe
    ("Fe1e400O", "exponent"),  # OverflowError traceback
    ("Na@Cl", "unexpected character '@'"),  # junk was ignored: NaCl
    ("D2O", "D is an isotope; write H"),  # D was silently read as H
    ("T2O", "T is an isotope; write H"),
    ("NaCl\uff12", "non-ASCII digit"),  # fullwidth 2 read as a count
    ("Na\u00b9Cl", "non-ASCII digit"),  # superscript 1
    ("Fe 2", "follows no element"),
    ("Fe2(O", "unclosed '\\('"),
    ("Fe2]", "unmatched"),
    ("(Fe]2", "unmatched"),
    ("()2", "empty brackets"),
    ("Fe.", "stray '.'"),
    ("Fe10001", "more than 10000 atoms"),
    ("Fe" + "9" * 5000, "more than 10000 atoms"),  # int() of 5000 digits raises ValueError
    ("(" * 50 + "Fe" + ")9" * 50, "more than 10000 atoms"),
    ("(" * 100_000 + "Fe" + ")" * 100_000 + "O", None),  # deep nesting: no RecursionError
])
def test_strict_grammar_rejects_what_pymatgen_accepted(text, needle):
    if needle is None:
        assert parse_formula(text).counts == (("Fe", 1), ("O", 1))
        return
    with pytest.raises(FormulaError, match=needle) as info:
        parse_formula(text)
    assert len(str(info.value)) < 300  # long inputs are shortened in the message


def test_grammar_accepts_groups_spaces_and_fractional_groups():
    assert parse_formula("[Cu(NH3)4]SO4").counts == (("Cu", 1), ("N", 4), ("H", 12), ("S", 1), ("O", 4))
    assert parse_formula("Na4 Cl4").counts == (("Na", 4), ("Cl", 4))
    assert parse_formula(" NaCl\t").formula == "NaCl"
    assert parse_formula("(Fe0.5)2O").counts == (("Fe", 1), ("O", 1))
    assert parse_formula("Fe2Es").counts == (("Fe", 2), ("Es", 1))  # 'E' after a count is an element, not an exponent
    assert parse_formula("NaClNa").counts == (("Na", 2), ("Cl", 1))
    assert parse_formula("Fe10000").num_atoms == 10000
