"""Symmetry-restricted random candidates (pyxtal): composition, cell size, determinism, ranked prediction."""
from __future__ import annotations

import pytest

from dao.formula import parse_formula
from dao.ranking import RankOptions, validity_flags

pytest.importorskip("pyxtal")


def test_random_candidates_have_the_cell_and_are_reproducible():
    from dao.random_structures import random_candidates

    cell = parse_formula("Li2MnO3")
    first = random_candidates(cell, 4, seed=5)
    again = random_candidates(cell, 4, seed=5)
    other = random_candidates(cell, 4, seed=6)
    assert len(first) == 4 and all(c.source == "random" for c in first)
    for c in first:
        assert len(c.structure) == 6 and c.structure.composition.reduced_formula == "Li2MnO3"
        assert 1 <= c.info["spacegroup"] <= 230
        assert validity_flags(c.structure)["min_distance"] > 0.5
    assert all(a.structure == b.structure for a, b in zip(first, again))
    assert any(a.structure != b.structure for a, b in zip(first, other))


def test_cells_without_templates_get_random_candidates(tiny_generator, tiny_index):
    from dao.prediction import rank_formula

    opts = RankOptions(judge="none", templates=tiny_index, candidates=2, random=3)
    _, with_template = rank_formula("NaCl", atoms=2, seed=0, model=tiny_generator, steps=3, device="cpu",
                                    options=opts)
    assert with_template.counts["proposed_random"] == 0  # NaCl has a template
    _, bare = rank_formula("LiNaKO", seed=0, model=tiny_generator, steps=3, device="cpu", options=opts)
    assert bare.counts["proposed_template"] == 0 and bare.counts["proposed_random"] >= 3
    sources = [j.candidate.source for j in bare.ranked]
    assert sources == sorted(sources, key=("template", "generated", "random").index)  # random last, judge none
