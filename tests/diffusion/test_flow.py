"""Flow matching on the torus and for lattices: periodicity, finiteness, exact sampling with an oracle."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from dao.crystal import CrystalBatch
from dao.diffusion.base import NoiseSource, uniform_prior
from dao.diffusion.flow_matching import FlowConfig, FlowMatchingProcess, crystal_mean, interpolate, wrap_displacement
from dao.diffusion.sampler import sample


def sample_base(template, gen):
    base = uniform_prior(template, NoiseSource(gen, "cpu"))
    return base.frac, base.lattice


def batch_of(frac, lattice, sizes):
    b = CrystalBatch.from_compositions([[6] * n for n in sizes])
    return b.replace(frac=frac, lattice=lattice)


def test_wrap_displacement_is_shortest_and_periodic():
    d = torch.tensor([0.0, 0.49, 0.51, -0.51, 1.2, -3.7])
    w = wrap_displacement(d)
    assert torch.all(w >= -0.5) and torch.all(w < 0.5)
    torch.testing.assert_close(w - d, (w - d).round(), atol=1e-6, rtol=0)  # differs by whole lattice vectors
    torch.testing.assert_close(w, torch.tensor([0.0, 0.49, -0.49, 0.49, 0.2, 0.3]), atol=1e-6, rtol=0)


def test_interpolation_respects_periodicity():
    """F and F + integer (data or noise) give the same path and the same velocity target."""
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 5]
    data = batch_of(torch.rand(8, 3, generator=gen), 4 * torch.eye(3).expand(2, 3, 3).clone(), sizes)
    frac0, lat0 = sample_base(data, gen)
    tau = torch.tensor([0.3, 0.8])
    a = interpolate(data, tau, frac0, lat0)
    shifted = data.replace(frac=data.frac + torch.randint(-3, 4, (8, 3)).float())
    b = interpolate(shifted, tau, frac0 + torch.randint(-2, 3, (8, 3)).float(), lat0)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[2], b[2], atol=1e-5, rtol=0)
    # the coordinate velocity carries no net translation of a crystal
    torch.testing.assert_close(crystal_mean(a[2], data.batch, 2), torch.zeros_like(a[2]), atol=1e-6, rtol=0)


def test_endpoints_and_lattice_path_finite():
    gen = torch.Generator().manual_seed(1)
    data = batch_of(torch.rand(4, 3, generator=gen), 5 * torch.eye(3).expand(1, 3, 3).clone(), [4])
    frac0, lat0 = sample_base(data, gen)
    f1, l1, u_f, u_l = interpolate(data, torch.tensor([1.0]), frac0, lat0)
    # at τ = 1 the path reaches the data up to one global translation
    disp = wrap_displacement(f1 - data.frac)
    torch.testing.assert_close(disp, disp[:1].expand_as(disp), atol=1e-5, rtol=0)
    torch.testing.assert_close(l1, data.lattice)
    for tau in torch.linspace(0, 1, 11):
        _, lt, _, _ = interpolate(data, tau.view(1), frac0, lat0)
        assert torch.isfinite(lt).all()


def test_ode_sampler_with_exact_velocity_reaches_the_crystal():
    """For a one-crystal data distribution the exact conditional velocity drives every sample to it."""
    f1 = torch.tensor([[0.1, 0.2, 0.3], [0.6, 0.7, 0.2], [0.4, 0.9, 0.5]])
    l1 = torch.tensor([[4.0, 0.0, 0.0], [0.3, 5.0, 0.0], [0.1, 0.2, 6.0]])
    n = 4
    template = CrystalBatch.from_compositions([[8, 8, 8]] * n)

    def oracle(batch, t):
        tau = 1.0 - t.view(-1, 1, 1)
        v_lat = (l1 - batch.lattice) / (1 - tau).clamp_min(1e-6)
        delta = wrap_displacement(f1.repeat(n, 1) - batch.frac)
        delta = delta - crystal_mean(delta, batch.batch, n)
        return v_lat, delta / (1 - tau[batch.batch].view(-1, 1)).clamp_min(1e-6)

    for integrator in ("euler", "heun"):
        out = sample(FlowMatchingProcess(FlowConfig(integrator=integrator)), oracle, template, num_steps=10,
                     generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.lattice, l1.expand(n, 3, 3), atol=1e-4, rtol=0)
        disp = wrap_displacement(out.frac - f1.repeat(n, 1)).view(n, 3, 3)
        torch.testing.assert_close(disp, disp[:, :1].expand_as(disp), atol=1e-4, rtol=0)


def test_flow_generator_trains_and_samples_deterministically():
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    model = DAOGenerator(GeneratorConfig(CrysformerConfig(hidden=32, layers=1, heads=2, num_freqs=8, time_dim=16), method="flow"))
    data = batch_of(torch.rand(5, 3), 4 * torch.eye(3).expand(2, 3, 3).clone(), [2, 3])
    losses = model.loss(data)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)
    template = CrystalBatch.from_compositions([[11, 17], [8, 8, 26]])
    a = model.sample(template, num_steps=7, generator=torch.Generator().manual_seed(3))
    b = model.sample(template, num_steps=7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.frac, b.frac)
    torch.testing.assert_close(a.lattice, b.lattice)
    assert torch.isfinite(a.lattice).all()


def test_energy_guidance_steers_the_flow_to_lower_energy():
    """With a velocity field that ignores the target, guidance by a known energy (evaluated at t = 0 on the
    predicted endpoint) lowers that energy; scale 0 reproduces the unguided sample exactly."""
    from dao.diffusion.guidance import EnergyGuidance
    from tests.diffusion.test_guidance import KnownLatticeEnergy

    target = 6.0 * torch.eye(3)
    energy = KnownLatticeEnergy(target)
    seen_t = []

    class Recording(EnergyGuidance):
        def gradients(self, batch, t):
            seen_t.append(t.clone())
            return super().gradients(batch, t)

    template = CrystalBatch.from_compositions([[8, 8, 8], [11, 17]])

    def drift(batch, t):  # a crude "generator": pulls every lattice towards 4·I, leaves coordinates alone
        return 4.0 * torch.eye(3) - batch.lattice, torch.zeros_like(batch.frac)

    def run(scale):
        out = sample(FlowMatchingProcess(), drift, template, num_steps=20,
                     guidance=[Recording(energy, scale)] if scale is not None else (),
                     generator=torch.Generator().manual_seed(0))
        return out, energy.energy(out, torch.zeros(2))

    plain, e_plain = run(None)
    zero, _ = run(0.0)
    guided, e_guided = run(0.5)
    torch.testing.assert_close(zero.lattice, plain.lattice)
    torch.testing.assert_close(zero.frac, plain.frac)
    assert (e_guided < 0.5 * e_plain).all()
    assert all(torch.equal(t, torch.zeros(2)) for t in seen_t)  # DAO-P is asked for clean (t = 0) energies


def test_guided_flow_sampling_with_a_dao_p_through_the_predict_path(tiny_energy_model):
    from dao.formula import parse_formula
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig
    from dao.prediction import generate, guidance_for

    torch.manual_seed(0)
    model = DAOGenerator(GeneratorConfig(CrysformerConfig(hidden=32, layers=1, heads=2, num_freqs=8, time_dim=16),
                                         method="flow")).eval()
    guidance, _ = guidance_for(model, tiny_energy_model, 5.0, torch.device("cpu"))
    cells = [parse_formula("NaCl"), parse_formula("TiO2")]
    a = generate(model, cells, 2, seed=1, steps=5, guidance=guidance)
    b = generate(model, cells, 2, seed=1, steps=5, guidance=guidance)
    plain = generate(model, cells, 2, seed=1, steps=5)
    assert len(a) == 4 and all(s.structure is not None for s in a)
    assert [s.structure.lattice.abc for s in a] == [s.structure.lattice.abc for s in b]
    assert [s.structure.lattice.abc for s in a] != [s.structure.lattice.abc for s in plain]


@pytest.mark.slow
def test_compiled_generator_samples_what_the_eager_one_does(tmp_path):
    """``load_generator(compile=True)`` (torch.compile, dynamic shapes) changes speed, not results."""
    from dao.formula import parse_formula
    from dao.models.checkpoint import load_generator, save_model
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig
    from dao.prediction import generate

    torch.manual_seed(0)
    model = DAOGenerator(GeneratorConfig(CrysformerConfig(hidden=32, layers=1, heads=2, num_freqs=8, time_dim=16), method="flow"))
    save_model(tmp_path / "flow.pt", model, {})
    cells = [parse_formula("NaCl"), parse_formula("TiO2")]
    eager = generate(load_generator(tmp_path / "flow.pt"), cells, 2, seed=4, steps=4)
    compiled = generate(load_generator(tmp_path / "flow.pt", compile=True), cells, 2, seed=4, steps=4)
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a.structure.lattice.matrix, b.structure.lattice.matrix, atol=1e-3)
        np.testing.assert_allclose(a.structure.frac_coords, b.structure.frac_coords, atol=1e-3)
