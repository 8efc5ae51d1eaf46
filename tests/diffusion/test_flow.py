"""Flow matching on the torus and for lattices: periodicity, finiteness, exact sampling with an oracle."""
from __future__ import annotations

import torch

from dao.crystal import CrystalBatch
from dao.diffusion.flow import CrystalFlow, crystal_mean, sample_ode, wrap_displacement


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
    frac0, lat0 = CrystalFlow().sample_base(data, gen)
    tau = torch.tensor([0.3, 0.8])
    flow = CrystalFlow()
    a = flow.interpolate(data, tau, frac0, lat0)
    shifted = data.replace(frac=data.frac + torch.randint(-3, 4, (8, 3)).float())
    b = flow.interpolate(shifted, tau, frac0 + torch.randint(-2, 3, (8, 3)).float(), lat0)
    torch.testing.assert_close(a[0], b[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(a[2], b[2], atol=1e-5, rtol=0)
    # the coordinate velocity carries no net translation of a crystal
    torch.testing.assert_close(crystal_mean(a[2], data.batch, 2), torch.zeros_like(a[2]), atol=1e-6, rtol=0)


def test_endpoints_and_lattice_path_finite():
    gen = torch.Generator().manual_seed(1)
    data = batch_of(torch.rand(4, 3, generator=gen), 5 * torch.eye(3).expand(1, 3, 3).clone(), [4])
    flow = CrystalFlow()
    frac0, lat0 = flow.sample_base(data, gen)
    f1, l1, u_f, u_l = flow.interpolate(data, torch.tensor([1.0]), frac0, lat0)
    # at τ = 1 the path reaches the data up to one global translation
    disp = wrap_displacement(f1 - data.frac)
    torch.testing.assert_close(disp, disp[:1].expand_as(disp), atol=1e-5, rtol=0)
    torch.testing.assert_close(l1, data.lattice)
    for tau in torch.linspace(0, 1, 11):
        _, lt, _, _ = flow.interpolate(data, tau.view(1), frac0, lat0)
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
        out = sample_ode(oracle, template, CrystalFlow(), num_steps=10, integrator=integrator,
                         generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out.lattice, l1.expand(n, 3, 3), atol=1e-4, rtol=0)
        disp = wrap_displacement(out.frac - f1.repeat(n, 1)).view(n, 3, 3)
        torch.testing.assert_close(disp, disp[:, :1].expand_as(disp), atol=1e-4, rtol=0)


def test_flow_generator_trains_and_samples_deterministically():
    from dao.models.flow import DAOFlowGenerator, FlowGeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    torch.manual_seed(0)
    model = DAOFlowGenerator(FlowGeneratorConfig(CrysformerConfig(hidden=32, layers=1, heads=2, num_freqs=8, time_dim=16)))
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
