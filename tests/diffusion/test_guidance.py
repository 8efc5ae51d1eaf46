"""Energy guidance: EnergyGuidance gradients, the exact size of the guided step, guided sampling lowers a known energy,
schedule checks, and the predict API / CLI wiring."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from dao.crystal import CrystalBatch
from dao.diffusion.base import NoiseSource, Prediction
from dao.diffusion.denoising import DiffusionProcess
from dao.diffusion.processes import DiffusionConfig
from dao.diffusion.guidance import EnergyGuidance, Guide, energy_guidance
from dao.diffusion.sampler import sample
from dao.errors import DAOError
from tests.diffusion.test_processes import GaussianLatticeOracle


class KnownLatticeEnergy(nn.Module):
    """A DAO-P stand-in with a known energy: f(M_t, t) = ½‖L_t − L*‖² + Σ_atoms (1 − cos 2π(f − f*)) per crystal."""

    def __init__(self, target_lattice: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("target", target_lattice)

    def energy(self, batch: CrystalBatch, t: torch.Tensor) -> torch.Tensor:
        e = 0.5 * ((batch.lattice - self.target) ** 2).sum(dim=(1, 2))
        per_atom = (1 - torch.cos(2 * torch.pi * (batch.frac - 0.25))).sum(1)
        return e.index_add(0, batch.batch, per_atom)


def test_energy_guidance_gradients_by_autograd_under_no_grad():
    target = 7.0 * torch.eye(3)
    guidance = EnergyGuidance(KnownLatticeEnergy(target), scale=3.0)
    batch = CrystalBatch.from_compositions([[11, 17], [8]])
    gen = torch.Generator().manual_seed(0)
    batch = batch.replace(frac=torch.rand(3, 3, generator=gen), lattice=torch.randn(2, 3, 3, generator=gen))
    with torch.no_grad():  # as inside the sampler
        gf, gl = guidance.gradients(batch, torch.full((2,), 0.5))
    torch.testing.assert_close(gl, batch.lattice - target)
    torch.testing.assert_close(gf, 2 * torch.pi * torch.sin(2 * torch.pi * (batch.frac - 0.25)))
    assert guidance.scale == 3.0 and not batch.frac.requires_grad


def test_energy_guidance_through_dao_p_matches_finite_differences(tiny_energy_model):
    model = tiny_energy_model.double()
    batch = CrystalBatch.from_compositions([[11, 17, 8], [26, 26]])
    gen = torch.Generator().manual_seed(1)
    batch = batch.replace(frac=torch.rand(5, 3, generator=gen, dtype=torch.float64),
                          lattice=4 * torch.eye(3, dtype=torch.float64) + torch.randn(2, 3, 3, generator=gen, dtype=torch.float64))
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    with torch.no_grad():
        gf, gl = EnergyGuidance(model).gradients(batch, t)
        h = 1e-6
        for (i, j) in [(0, 0), (2, 1), (4, 2)]:
            d = torch.zeros_like(batch.frac)
            d[i, j] = h
            fd = (model.energy(batch.replace(frac=batch.frac + d), t).sum() - model.energy(batch.replace(frac=batch.frac - d), t).sum()) / (2 * h)
            assert abs(float(fd - gf[i, j])) < 1e-6 * max(1.0, abs(float(fd)))
        for (b, i, j) in [(0, 0, 1), (1, 2, 2)]:
            d = torch.zeros_like(batch.lattice)
            d[b, i, j] = h
            fd = (model.energy(batch.replace(lattice=batch.lattice + d), t).sum() - model.energy(batch.replace(lattice=batch.lattice - d), t).sum()) / (2 * h)
            assert abs(float(fd - gl[b, i, j])) < 1e-6 * max(1.0, abs(float(fd)))


def test_guided_sampling_lowers_a_known_energy():
    """Exact denoiser of a Gaussian lattice distribution + EnergyGuidance of a known energy: guided samples
    from the same seed have a lower mean energy; scale 0 reproduces the unguided samples."""
    process = DiffusionProcess()
    coords, lattice = process.coords, process.lattice
    n = 64
    mu = torch.tensor([[4.0, 0.0, 0.0], [0.5, 5.0, 0.0], [0.2, 0.3, 6.0]])
    energy_model = KnownLatticeEnergy(7.0 * torch.eye(3))
    template = CrystalBatch.from_compositions([[11, 17]] * n)
    oracle = GaussianLatticeOracle(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]).repeat(n, 1), mu.expand(n, 3, 3),
                                   coords, lattice)

    def run(scale):
        guidance = [] if scale is None else [EnergyGuidance(energy_model, scale)]
        return sample(process, oracle, template, num_steps=100, guidance=guidance,
                      generator=torch.Generator().manual_seed(5))

    def mean_energy(b):
        return float(energy_model.energy(b, torch.zeros(n)).mean())

    plain, guided = run(None), run(2.0)
    assert mean_energy(guided) < 0.8 * mean_energy(plain)
    torch.testing.assert_close(run(0.0).lattice, plain.lattice)


def test_schedules_must_match(tiny_generator):
    from dao.models.energy import DAOEnergyModel
    from tests.conftest import tiny_energy_config

    assert len(energy_guidance(tiny_generator, DAOEnergyModel(tiny_energy_config()))) == 1
    with pytest.raises(DAOError, match="num_steps 1000 vs 100"):
        energy_guidance(tiny_generator, DAOEnergyModel(tiny_energy_config(num_steps=100)))
    with pytest.raises(DAOError, match="sigma_max"):
        energy_guidance(tiny_generator, DAOEnergyModel(tiny_energy_config(sigma_max=0.4)))


class ConstantGradient:
    """A guidance term whose gradients are fixed tensors (an energy linear in F and L)."""

    def __init__(self, g_frac: torch.Tensor, g_lat: torch.Tensor, scale: float) -> None:
        self.g_frac, self.g_lat, self.scale = g_frac, g_lat, scale
        self.seen = []

    def gradients(self, batch, t):
        self.seen.append((batch, t))
        return self.g_frac, self.g_lat


@pytest.mark.parametrize("t,t_prev", [(1000, 999), (600, 550), (37, 36)])
def test_guided_diffusion_step_shifts_each_mean_by_exactly_s_times_posterior_variance(t, t_prev):
    """One predictor step from the same state and noise: guided − unguided = −s·σ̃²·g for the lattice and
    for the coordinates (σ̃² the posterior variance of each process at t → t_prev), not any other size."""
    process = DiffusionProcess(DiffusionConfig(), corrector=False)
    gen = torch.Generator().manual_seed(0)
    state = CrystalBatch.from_compositions([[11, 17], [8]])
    state = state.replace(frac=0.4 + 0.2 * torch.rand(3, 3, generator=gen, dtype=torch.float64),
                          lattice=torch.randn(2, 3, 3, generator=gen, dtype=torch.float64))
    out = Prediction(torch.randn(2, 3, 3, generator=gen, dtype=torch.float64),
                     torch.randn(3, 3, generator=gen, dtype=torch.float64))
    g_frac, g_lat = 1e-3 * torch.randn(3, 3, generator=gen, dtype=torch.float64), torch.randn(2, 3, 3, generator=gen, dtype=torch.float64)
    term = ConstantGradient(g_frac, g_lat, scale=3.0)
    entry = process.schedule(1000, state)[1000 - t]
    entry = type(entry)(t, t_prev, None)

    def run(guide):
        return process.step(lambda b, tt: out, guide, state, entry, NoiseSource(torch.Generator().manual_seed(1), "cpu"))

    plain, guided = run(Guide(process)), run(Guide(process, [term]))
    var_l = process.lattice.posterior_variance(t, t_prev)
    var_f = process.coords.posterior_variance(t, t_prev)
    torch.testing.assert_close(guided.lattice - plain.lattice, -3.0 * var_l * g_lat)
    torch.testing.assert_close(guided.frac - plain.frac, -3.0 * var_f * g_frac)
    (batch, tt), = term.seen  # DAO-P sees the current state at the current continuous time
    torch.testing.assert_close(tt, torch.full((2,), t / 1000))
    assert batch.lattice is state.lattice


def test_guided_flow_step_shifts_the_velocity_by_exactly_s_times_the_gradient_at_the_endpoint():
    from dao.diffusion.flow_matching import FlowMatchingProcess

    process = FlowMatchingProcess()
    gen = torch.Generator().manual_seed(0)
    state = CrystalBatch.from_compositions([[11, 17], [8]])
    state = state.replace(frac=0.4 + 0.2 * torch.rand(3, 3, generator=gen, dtype=torch.float64),
                          lattice=torch.randn(2, 3, 3, generator=gen, dtype=torch.float64))
    v = Prediction(torch.randn(2, 3, 3, generator=gen, dtype=torch.float64),
                   1e-2 * torch.randn(3, 3, generator=gen, dtype=torch.float64))
    term = ConstantGradient(1e-3 * torch.randn(3, 3, generator=gen, dtype=torch.float64),
                            torch.randn(2, 3, 3, generator=gen, dtype=torch.float64), scale=0.5)
    entry = process.schedule(10, state)[3]
    plain = process.step(lambda b, t: v, Guide(process), state, entry, None)
    guided = process.step(lambda b, t: v, Guide(process, [term]), state, entry, None)
    torch.testing.assert_close(guided.lattice - plain.lattice, -entry.dt * 0.5 * term.g_lat)
    torch.testing.assert_close(guided.frac - plain.frac, -entry.dt * 0.5 * term.g_frac)
    (end, t), = term.seen  # evaluated on the predicted endpoint x + (1 − τ)·v, at t = 0
    torch.testing.assert_close(end.lattice, state.lattice + (1 - entry.tau) * v.lattice)
    torch.testing.assert_close(t, torch.zeros(2, dtype=t.dtype))


def test_predict_api_with_energy_guidance(tiny_checkpoint, tiny_energy_checkpoint):
    import dao
    from dao.models.checkpoint import load_generator

    gen_model = load_generator(tiny_checkpoint)
    kw = dict(n=2, model=gen_model, steps=4, device="cpu", seed=3, rank=False)  # the raw (guided) samples
    plain = dao.predict("NaCl", **kw)
    guided = dao.predict("NaCl", energy_model=tiny_energy_checkpoint, guidance_scale=20.0, **kw)
    assert len(guided) == 2 and all(s.composition.reduced_formula == "NaCl" for s in guided)
    assert any(abs(a.lattice.volume - b.lattice.volume) > 1e-6 for a, b in zip(plain, guided))
    zero = dao.predict("NaCl", energy_model=tiny_energy_checkpoint, guidance_scale=0.0, **kw)
    assert all(abs(a.lattice.volume - b.lattice.volume) < 1e-6 for a, b in zip(plain, zero))
    with pytest.raises(DAOError, match="needs an energy model"):
        dao.predict("NaCl", guidance_scale=5.0, **kw)
    with pytest.raises(DAOError, match="expected 'energy'"):
        dao.predict("NaCl", energy_model=tiny_checkpoint, **kw)


def test_predict_cli_with_energy_guidance(tmp_path, tiny_checkpoint, tiny_energy_model):
    import json

    from dao.cli import main
    from dao.models.checkpoint import save_model
    from dao.models.energy import DAOEnergyModel
    from tests.conftest import tiny_energy_config

    save_model(tmp_path / "p.pt", tiny_energy_model)
    out = tmp_path / "pred"
    main(["predict", "NaCl", "-n", "2", "--model", str(tiny_checkpoint), "--energy-model", str(tmp_path / "p.pt"),
          "--steps", "4", "--out", str(out), "--no-progress", "--device", "cpu"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["guidance"] == {"energy_model": str(tmp_path / "p.pt"), "scale": 20.0}
    save_model(tmp_path / "p100.pt", DAOEnergyModel(tiny_energy_config(num_steps=100)))
    from tests.test_cli import assert_clean_failure, run_dao

    out2 = tmp_path / "pred2"
    proc = run_dao("predict", "NaCl", "--model", str(tiny_checkpoint), "--energy-model", str(tmp_path / "p100.pt"),
                   "--steps", "4", "--out", str(out2))
    assert_clean_failure(proc, "different diffusion schedules")
    assert not out2.exists()
