"""Noise processes: wrapped-normal score and λ_t, noising statistics, schedule round trips, sampler."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dao.crystal import CrystalBatch
from dao.diffusion import wrapped_normal
from dao.diffusion.denoising import DiffusionProcess, timesteps
from dao.diffusion.processes import LatticeDDPM, WrappedNormalCoords
from dao.diffusion.sampler import sample


@pytest.mark.parametrize("sigma", [0.005, 0.05, 0.2, 0.5, 1.0])
def test_wrapped_normal_score_is_gradient_of_log_density(sigma):
    x = torch.linspace(-0.49, 0.99, 41, dtype=torch.float64) * min(1.0, 6 * sigma)
    h = 1e-6 * sigma
    fd = (wrapped_normal.log_density(x + h, sigma) - wrapped_normal.log_density(x - h, sigma)) / (2 * h)
    torch.testing.assert_close(wrapped_normal.score(x, sigma), fd, rtol=1e-5, atol=1e-5 / sigma)


def test_wrapped_normal_density_normalised_and_periodic():
    x = torch.linspace(0, 1, 20001, dtype=torch.float64)[:-1]
    for sigma in [0.05, 0.3, 0.8]:
        p = torch.exp(wrapped_normal.log_density(x, sigma))
        assert abs(float(p.mean()) - 1.0) < 1e-6
        torch.testing.assert_close(wrapped_normal.score(x + 1.0, sigma), wrapped_normal.score(x, sigma))


def test_lambda_matches_monte_carlo_and_small_sigma_limit():
    sig = torch.tensor([0.005, 0.1, 0.3, 0.5], dtype=torch.float64)
    lam = wrapped_normal.expected_squared_score(sig)
    assert abs(float(lam[0] * sig[0] ** 2) - 1.0) < 1e-6  # unwrapped Gaussian: E[(x/σ²)²] = 1/σ²
    gen = torch.Generator().manual_seed(0)
    for s, l in zip(sig[1:], lam[1:]):
        x = s * torch.randn(400_000, generator=gen, dtype=torch.float64)
        mc = (wrapped_normal.score(x, s) ** 2).mean()
        assert abs(float(mc / l) - 1) < 0.01


def test_coordinate_noising_statistics_and_unit_scale_targets():
    proc = WrappedNormalCoords(1000)
    gen = torch.Generator().manual_seed(0)
    f0 = torch.rand(20000, 3, generator=gen)
    for t in [1, 200, 600, 1000]:
        tt = torch.full((f0.shape[0],), t, dtype=torch.long)
        torch.manual_seed(t)
        ft, target = proc.add_noise(f0, tt)
        assert float(ft.min()) >= 0 and float(ft.max()) < 1
        disp = torch.remainder(ft - f0 + 0.5, 1.0) - 0.5
        if proc.sigma[t] < 0.1:  # wrapping negligible: displacement ~ N(0, σ²)
            assert abs(float(disp.std()) / float(proc.sigma[t]) - 1) < 0.02
        # targets are normalised by √λ_t: unit second moment at every t
        assert abs(float((target**2).mean()) - 1) < 0.05


def test_lattice_noising_statistics_and_round_trip():
    proc = LatticeDDPM(1000)
    assert float(proc.alpha_bar[0]) == 1.0 and float(proc.alpha_bar[-1]) < 1e-6
    assert torch.all(proc.alpha_bar[1:] < proc.alpha_bar[:-1])
    l0 = torch.eye(3).expand(50000, 3, 3) * 5.0
    t = torch.full((50000,), 500, dtype=torch.long)
    lt, eps = proc.add_noise(l0, t)
    ab = float(proc.alpha_bar[500])
    assert abs(float(lt.mean(0)[0, 0]) - 5 * math.sqrt(ab)) < 0.02
    assert abs(float(lt.std(0)[0, 1]) - math.sqrt(1 - ab)) < 0.02
    # round trip: the oracle ε recovers L_0 exactly
    rec = (lt - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
    torch.testing.assert_close(rec, l0, atol=1e-4, rtol=1e-5)


def test_respaced_timesteps():
    assert timesteps(1000, None) == list(range(1000, 0, -1))
    ts = timesteps(1000, 50)
    assert len(ts) == 50 and ts[0] == 1000 and ts[-1] == 1 and all(a > b for a, b in zip(ts, ts[1:]))


class OracleDenoiser:
    """The exact ε and score for a data distribution that is a single crystal (F0, L0)."""

    def __init__(self, f0, l0, coords: WrappedNormalCoords, lattice: LatticeDDPM):
        self.f0, self.l0, self.coords, self.lattice = f0, l0, coords, lattice

    def __call__(self, batch: CrystalBatch, t: torch.Tensor):
        ti = int(round(float(t[0]) * self.coords.num_steps))
        ab = float(self.lattice.alpha_bar[ti])
        eps = (batch.lattice - math.sqrt(ab) * self.l0) / math.sqrt(1 - ab)
        sigma = float(self.coords.sigma[ti])
        score = wrapped_normal.score(batch.frac - self.f0, sigma)
        return eps, score / math.sqrt(float(self.coords.lam[ti]))


@pytest.mark.parametrize("steps", [1000, 100])
def test_pc_sampler_with_oracle_recovers_the_crystal(steps):
    process = DiffusionProcess()
    coords, lattice = process.coords, process.lattice
    n_crystals = 4
    f0_one = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.25, 0.1, 0.7]])
    l0_one = torch.tensor([[4.0, 0.0, 0.0], [0.5, 5.0, 0.0], [0.2, 0.3, 6.0]])
    template = CrystalBatch.from_compositions([[11, 17, 8]] * n_crystals)
    oracle = OracleDenoiser(f0_one.repeat(n_crystals, 1), l0_one.expand(n_crystals, 3, 3), coords, lattice)
    out = sample(process, oracle, template, num_steps=steps, generator=torch.Generator().manual_seed(0))
    disp = torch.remainder(out.frac - oracle.f0 + 0.5, 1.0) - 0.5
    assert float(disp.abs().max()) < 0.05
    assert float((out.lattice - oracle.l0).abs().max()) < 0.05


def test_sampler_is_deterministic_for_a_seed_and_returns_finite_cells(tiny_generator):
    from dao.prediction import finalize_structure

    template = CrystalBatch.from_compositions([[11, 17], [8, 8, 26, 26, 26], [6] * 8])
    a = tiny_generator.sample(template, num_steps=20, generator=torch.Generator().manual_seed(3))
    b = tiny_generator.sample(template, num_steps=20, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a.frac, b.frac)
    torch.testing.assert_close(a.lattice, b.lattice)
    assert torch.isfinite(a.lattice).all() and torch.isfinite(a.frac).all()
    assert float(a.frac.min()) >= 0 and float(a.frac.max()) < 1
    for c in a.crystals():
        s, err = finalize_structure(c.atomic_numbers, c.frac_coords, c.lattice)
        assert err is None and s.volume > 0


def test_finalize_flips_negative_volume_cells_without_changing_the_crystal(structures):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dao.prediction import finalize_structure

    s = structures["ZnO"]  # polar, not centrosymmetric
    numbers = np.array([site.specie.Z for site in s])
    out, err = finalize_structure(numbers, (-s.frac_coords) % 1.0, -s.lattice.matrix)  # same points: X = (−F)(−L)
    assert err is None and out.lattice.volume > 0
    assert StructureMatcher(primitive_cell=False, scale=False).fit(out, s)
    assert abs(out.volume - s.volume) < 1e-6
    bad, err = finalize_structure(numbers, s.frac_coords, np.full((3, 3), np.nan))
    assert bad is None and "non-finite" in err


class QuadraticLatticeEnergy:
    """E = ½‖L − L*‖² summed over crystals: a known energy whose guidance must pull lattices to L*."""

    def __init__(self, target: torch.Tensor, scale: float) -> None:
        self.target, self.scale = target, scale

    def gradients(self, batch, t):
        with torch.enable_grad():
            lat = batch.lattice.detach().requires_grad_(True)
            energy = 0.5 * ((lat - self.target) ** 2).sum()
            (grad_l,) = torch.autograd.grad(energy, lat)
        return torch.zeros_like(batch.frac), grad_l


class GaussianLatticeOracle(OracleDenoiser):
    """Exact ε for lattices L_0 ~ N(μ, τ²) elementwise: E[ε | L_t] = √(1−ᾱ)(L_t − √ᾱ μ) / (ᾱτ² + 1 − ᾱ)."""

    tau = 1.0

    def __call__(self, batch, t):
        _, score = super().__call__(batch, t)
        ti = int(round(float(t[0]) * self.coords.num_steps))
        ab = float(self.lattice.alpha_bar[ti])
        eps = math.sqrt(1 - ab) * (batch.lattice - math.sqrt(ab) * self.l0) / (ab * self.tau**2 + 1 - ab)
        return eps, score


def test_guidance_term_lowers_a_known_energy():
    """With the exact denoiser of a Gaussian lattice distribution, guidance by E = ½‖L − L*‖² moves the
    samples toward L* (lower E than unguided sampling from the same seed); scale 0 changes nothing."""
    process = DiffusionProcess()
    coords, lattice = process.coords, process.lattice
    n = 64
    mu = torch.tensor([[4.0, 0.0, 0.0], [0.5, 5.0, 0.0], [0.2, 0.3, 6.0]])
    target = 7.0 * torch.eye(3)
    template = CrystalBatch.from_compositions([[11, 17]] * n)
    oracle = GaussianLatticeOracle(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).repeat(n, 1), mu.expand(n, 3, 3),
                                   coords, lattice)

    def energy(b):
        return 0.5 * ((b.lattice - target) ** 2).sum(dim=(1, 2))

    def run(guidance):
        return sample(process, oracle, template, num_steps=100, guidance=guidance,
                      generator=torch.Generator().manual_seed(5))

    plain, guided = run(()), run([QuadraticLatticeEnergy(target, scale=2.0)])
    # unguided samples follow the data distribution: mean μ, unit spread
    assert float((plain.lattice.mean(0) - mu).abs().max()) < 0.5
    assert abs(float((plain.lattice - mu).std()) - 1.0) < 0.2
    assert float(energy(guided).mean()) < 0.8 * float(energy(plain).mean())
    zero = run([QuadraticLatticeEnergy(target, scale=0.0)])
    torch.testing.assert_close(zero.lattice, plain.lattice)


def test_lattice_step_with_clipped_l0():
    """The L̂₀ form of the ancestral step equals the ε form when nothing is clipped, and a clip bounds the
    step even for an absurd ε̂ (the respaced first steps divide by a tiny √ᾱ)."""
    from dao.diffusion.processes import LatticeDDPM

    ddpm = LatticeDDPM(1000)
    gen = torch.Generator().manual_seed(0)
    lat = torch.randn(3, 3, 3, generator=gen)
    eps = torch.randn(3, 3, 3, generator=gen)
    noise = torch.randn(3, 3, 3, generator=gen)
    for t, t_prev in ((1000, 900), (500, 499), (10, 0)):
        free = ddpm.step(lat, eps, t, t_prev, noise)
        loose = ddpm.step(lat, eps, t, t_prev, noise, clip=torch.full((3,), 1e9))
        torch.testing.assert_close(loose, free, atol=1e-3, rtol=1e-4)
    c = 10.0
    wild = ddpm.step(lat, 1e6 * eps, 1000, 900, torch.zeros_like(noise), clip=torch.full((3,), c))
    ab, ab_prev = float(ddpm.alpha_bar[1000]), float(ddpm.alpha_bar[900])
    a, b = ab / ab_prev, 1 - ab / ab_prev
    bound = ab_prev**0.5 * b / (1 - ab) * c + a**0.5 * (1 - ab_prev) / (1 - ab) * lat.abs()
    assert torch.isfinite(wild).all() and (wild.abs() <= bound + 1e-4).all()
