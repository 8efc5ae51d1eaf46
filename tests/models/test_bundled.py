"""The models the README's first command uses: every bundled checkpoint loads with its config, samples the
composition asked for, and the bundled DAO-P gives finite energies with the sign conventions of E_hull."""
from __future__ import annotations

import pytest
import torch

from dao.crystal import CrystalBatch, structures_to_crystals
from dao.formula import parse_formula
from dao.models.checkpoint import BUNDLED_GENERATORS, load_energy_model, load_generator
from dao.prediction import generate
from tests.conftest import small_structures


@pytest.mark.parametrize("name", ["default"] + [f"default-{m}" for m in BUNDLED_GENERATORS])
def test_bundled_generators_load_and_sample_the_composition(name):
    model = load_generator(name)
    assert model.kind == "generator" and model.config.max_atoms >= 9
    expected = "diffusion" if name == "default" else name.removeprefix("default-")
    assert model.method == expected
    samples = generate(model, [parse_formula("CsV3Sb5")], 2, seed=0, steps=4)
    assert len(samples) == 2
    for s in samples:
        assert s.structure is not None, s.error
        assert s.structure.composition.reduced_formula == "CsV3Sb5" and s.structure.lattice.volume > 0


def test_bundled_dao_p_energies_are_finite_and_plausible():
    model = load_energy_model("default")
    assert model.kind == "energy" and model.config.energy.num_labels > 0
    crystals = structures_to_crystals(list(small_structures().values()))
    with torch.no_grad():
        e = model.energy_per_atom(CrystalBatch.from_crystals(crystals))
    assert torch.isfinite(e).all()
    # known stable compounds (rock salt NaCl, diamond Si, rutile TiO2, CsCl, wurtzite ZnO): E_hull near 0
    assert float(e.abs().max()) < 0.5
