"""Runs that start from a given structure (img2img / SDEdit refinement): add_noise, partial schedules,
the sampler's ``start`` and :func:`dao.prediction.refine`."""
from __future__ import annotations

import math

import pytest
import torch

from dao.crystal import CrystalBatch
from dao.diffusion.denoising import DiffusionProcess
from dao.diffusion.flow_matching import FlowMatchingProcess, wrap_displacement
from dao.diffusion.sampler import sample
from dao.errors import DAOError
from tests.diffusion.test_processes import OracleDenoiser

F1 = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.7, 0.2], [0.4, 0.9, 0.5]])
L1 = torch.tensor([[4.0, 0.0, 0.0], [0.3, 5.0, 0.0], [0.1, 0.2, 6.0]])


def clean_batch(n: int) -> CrystalBatch:
    return CrystalBatch.from_compositions([[11, 17, 8]] * n).replace(frac=F1.repeat(n, 1), lattice=L1.expand(n, 3, 3).clone())


@pytest.mark.parametrize("start", [1.0, 0.5, 0.25, 0.07])
def test_flow_partial_schedule_covers_exactly_the_last_part_of_the_path(start):
    grid = FlowMatchingProcess().schedule(20, clean_batch(1), start=start)
    assert len(grid) == math.ceil(start * 20 - 1e-9)
    assert grid[0].tau == pytest.approx(1 - start) and grid[-1].last and not any(e.last for e in grid[:-1])
    assert sum(e.dt for e in grid) == pytest.approx(start)
    assert grid[-1].tau + grid[-1].dt == pytest.approx(1.0)


@pytest.mark.parametrize("start", [0.0, -0.1, 1.5, float("nan")])
def test_a_start_outside_zero_one_is_refused(start):
    with pytest.raises(ValueError):
        FlowMatchingProcess().schedule(20, clean_batch(1), start=start)
    with pytest.raises(ValueError):
        DiffusionProcess().schedule(20, clean_batch(1), start=start)


def test_flow_refinement_from_start_one_is_plain_sampling():
    """At start 1 the noised input is the prior draw itself (same random numbers): the input is forgotten."""
    def net(batch, t):
        return 1.0 - batch.lattice, 0.1 * torch.ones_like(batch.frac)

    clean = clean_batch(3)
    plain = sample(FlowMatchingProcess(), net, clean, num_steps=8, generator=torch.Generator().manual_seed(1))
    full = sample(FlowMatchingProcess(), net, clean, num_steps=8, generator=torch.Generator().manual_seed(1), start=1.0)
    torch.testing.assert_close(plain.lattice, full.lattice)
    torch.testing.assert_close(plain.frac, full.frac)


@pytest.mark.parametrize("start", [0.1, 0.4])
def test_flow_refinement_with_the_exact_velocity_returns_the_input_even_with_velocity_annealing(start):
    """Velocity annealing (×(1 + slope·τ) on coordinates) is for runs from the prior: in a refinement it would
    overshoot the remaining displacement, so a partial run integrates the plain velocity."""
    from dao.diffusion.flow_matching import FlowConfig, crystal_mean

    n = 3

    def oracle(batch, t):
        rest = t.view(-1, 1, 1).clamp_min(1e-6)  # 1 − τ
        delta = wrap_displacement(F1.repeat(n, 1) - batch.frac)
        delta = delta - crystal_mean(delta, batch.batch, n)
        return (L1 - batch.lattice) / rest, delta / rest[batch.batch].view(-1, 1)

    out = sample(FlowMatchingProcess(FlowConfig(coord_velocity_slope=6.0)), oracle, clean_batch(n), num_steps=20,
                 generator=torch.Generator().manual_seed(2), start=start)
    torch.testing.assert_close(out.lattice, L1.expand(n, 3, 3), atol=1e-4, rtol=0)
    disp = wrap_displacement(out.frac - F1.repeat(n, 1)).view(n, 3, 3)
    torch.testing.assert_close(disp, disp[:, :1].expand_as(disp), atol=1e-4, rtol=0)


@pytest.mark.parametrize("start", [0.02, 0.2, 0.6])
def test_flow_noised_input_lies_on_the_straight_path_and_a_resting_network_keeps_it(start):
    """With zero velocity the run returns the noised input: lattice (1 − t)·L + t·L₀ (L₀ ~ N(0, I)), so the
    distance to the input grows with t; coordinates move by at most t/2 per axis."""
    def still(batch, t):
        return torch.zeros_like(batch.lattice), torch.zeros_like(batch.frac)

    n = 200
    out = sample(FlowMatchingProcess(), still, clean_batch(n), num_steps=20, generator=torch.Generator().manual_seed(0),
                 start=start)
    noise = (out.lattice - (1 - start) * L1) / start  # the prior lattice draw
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 1) < 0.05
    shift = wrap_displacement(out.frac - F1.repeat(n, 1)).view(n, 3, 3)
    relative = shift - shift[:, :1]  # up to the translation the path removes
    assert float(relative.abs().max()) <= start + 1e-5


@pytest.mark.parametrize("start", [0.3, 0.05])
def test_diffusion_refinement_with_the_oracle_recovers_the_crystal_from_a_partial_start(start):
    process = DiffusionProcess()
    grid = process.schedule(100, clean_batch(1), start=start)
    assert grid[0].t == round(start * 1000) and grid[-1].t_prev == 0
    assert len(grid) == math.ceil(100 * start - 1e-9)
    n = 4
    oracle = OracleDenoiser(F1.repeat(n, 1), L1.expand(n, 3, 3), process.coords, process.lattice)
    out = sample(process, oracle, clean_batch(n), num_steps=100, generator=torch.Generator().manual_seed(0), start=start)
    assert float(wrap_displacement(out.frac - F1.repeat(n, 1)).abs().max()) < 0.05
    assert float((out.lattice - L1).abs().max()) < 0.05


def test_diffusion_noised_input_has_the_training_statistics():
    process = DiffusionProcess()
    n, t = 4000, 0.4
    from dao.diffusion.base import NoiseSource

    noisy = process.add_noise(clean_batch(n), t, NoiseSource(torch.Generator().manual_seed(0), "cpu"))
    ti = round(t * 1000)
    ab = float(process.lattice.alpha_bar[ti])
    eps = (noisy.lattice - math.sqrt(ab) * L1) / math.sqrt(1 - ab)
    assert abs(float(eps.mean())) < 0.02 and abs(float(eps.std()) - 1) < 0.02
    disp = wrap_displacement(noisy.frac - F1.repeat(n, 1))
    sigma = float(process.coords.sigma[ti])
    assert sigma < 0.1 and abs(float(disp.std()) / sigma - 1) < 0.03


def test_refining_a_structure_with_the_bundled_flow_model_keeps_it_at_low_strength():
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from dao.models.checkpoint import bundled_generator_for, load_generator
    from dao.prediction import refine

    model = load_generator(bundled_generator_for("default-flow", None), torch.device("cpu"))
    nacl = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    gaas = Structure.from_spacegroup("F-43m", Lattice.cubic(5.65), ["Ga", "As"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    a = refine(model, [nacl, gaas], 0.05, n=2, seed=4)
    b = refine(model, [nacl, gaas], 0.05, n=2, seed=4)
    assert [(s.cell.formula, s.index) for s in a] == [("Na4Cl4", 0), ("Na4Cl4", 1), ("Ga4As4", 0), ("Ga4As4", 1)]
    matcher = StructureMatcher()  # pymatgen defaults; the protocol's are looser
    for s, ref in zip(a, [nacl, nacl, gaas, gaas]):
        assert s.error is None and matcher.fit(s.structure, ref)
    for x, y in zip(a, b):
        assert x.structure == y.structure
    assert refine(model, [], 0.5) == []
    for bad in (0.0, 1.2):
        with pytest.raises(DAOError, match="strength"):
            refine(model, [nacl], bad)
