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
