"""Conditional flow matching for crystals as a :class:`~dao.diffusion.base.Process`
(docs/design.md, 'Flow matching').

Path from noise (τ = 0) to data (τ = 1):

* fractional coordinates on the flat torus: F_τ = (F_0 + τ·Δ) mod 1, Δ the shortest wrapped displacement
  F_1 − F_0 ∈ [−½, ½)³ with its per-crystal mean removed (a global translation is not a property of the
  crystal, and the translation-invariant network could not predict it); target velocity u_F = Δ;
* lattice, Euclidean: L_τ = (1 − τ)·L_0 + τ·L_1, L_0 ~ N(0, I), target velocity u_L = L_1 − L_0.

The network sees t = 1 − τ (the diffusion convention: 1 = noise) and predicts (u_L, u_F). Sampling
integrates the ODE with Euler or Heun in a chosen number of steps. Energy guidance subtracts s·∇E(x̂₁) from
the velocity, x̂₁ = x_τ + (1 − τ)·v the one-step estimate of the endpoint and E DAO-P's energy at t = 0 (the
clean regime it knows; the flow's intermediate states are not diffusion noise levels), so any DAO-P can guide.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch

from dao.config import Config
from dao.crystal import CrystalBatch
from dao.diffusion.base import (GuidancePoint, Network, NoiseSource, Prediction, Process, TrainingSample,
                                check_start, uniform_prior)
from dao.errors import ConfigError

INTEGRATORS = ("euler", "heun")


@dataclass
class FlowConfig(Config):
    section: ClassVar[str] = "flow"

    num_steps: int = 50  # default ODE steps for sampling
    integrator: str = "euler"  # euler | heun
    lattice_weight: float = 1.0
    coord_weight: float = 10.0  # coordinate velocities are ~10× smaller than lattice velocities (Å)
    # sampling only: coordinate velocity × (1 + slope·τ) ("velocity annealing", as FlowMM's inference slope)
    coord_velocity_slope: float = 0.0

    def validate(self) -> None:
        if self.integrator not in INTEGRATORS:
            raise ConfigError(f"config flow.integrator: {self.integrator!r} is not one of {', '.join(INTEGRATORS)}")
        if self.num_steps < 1:
            raise ConfigError(f"config flow.num_steps: at least 1, got {self.num_steps}")


def wrap_displacement(delta: torch.Tensor) -> torch.Tensor:
    """Shortest representative of a displacement on the unit torus, in [−½, ½)."""
    return torch.remainder(delta + 0.5, 1.0) - 0.5


def crystal_mean(x: torch.Tensor, batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """Per-crystal mean of per-atom rows, broadcast back to the atoms."""
    sums = x.new_zeros((num_crystals,) + x.shape[1:]).index_add_(0, batch, x)
    counts = torch.bincount(batch, minlength=num_crystals).clamp_min(1).to(x.dtype)
    return (sums / counts.view(-1, *([1] * (x.dim() - 1))))[batch]


def interpolate(batch: CrystalBatch, tau: torch.Tensor, frac0: torch.Tensor, lat0: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (F_τ, L_τ, u_F, u_L) for data ``batch``, per-crystal times τ (B,) and base samples."""
    delta = wrap_displacement(batch.frac - frac0)
    delta = delta - crystal_mean(delta, batch.batch, batch.num_crystals)
    tau_atoms = tau[batch.batch].view(-1, 1)
    frac_t = torch.remainder(frac0 + tau_atoms * delta, 1.0)
    tl = tau.view(-1, 1, 1)
    lat_t = (1 - tl) * lat0 + tl * batch.lattice
    return frac_t, lat_t, delta, batch.lattice - lat0


def advance(state: CrystalBatch, velocity: Prediction, dt: float | torch.Tensor) -> CrystalBatch:
    """x + dt·v on the torus (coordinates) and in ℝ^{3×3} (lattice); dt a float or per-crystal (B,)."""
    if isinstance(dt, torch.Tensor):
        dt_atoms, dt_lat = dt[state.batch].view(-1, 1), dt.view(-1, 1, 1)
    else:
        dt_atoms = dt_lat = dt
    return state.replace(frac=torch.remainder(state.frac + dt_atoms * velocity.coord, 1.0),
                         lattice=state.lattice + dt_lat * velocity.lattice)


@dataclass(frozen=True)
class FlowStep:
    """One ODE step from τ to τ + dt; ``last`` marks the final step (Heun falls back to Euler there);
    ``anneal``: whether velocity annealing applies (runs from the prior only)."""

    tau: float
    dt: float
    last: bool
    anneal: bool = True


class FlowMatchingProcess(Process):
    """Straight-line flow matching on the torus × lattice space, integrated by Euler or Heun steps."""

    method = "flow"
    config_class = FlowConfig
    config: FlowConfig

    def __init__(self, config: FlowConfig | None = None) -> None:
        super().__init__(config or FlowConfig())

    @property
    def default_steps(self) -> int:
        return self.config.num_steps

    def training_sample(self, batch: CrystalBatch, generator: torch.Generator | None = None) -> TrainingSample:
        tau = torch.rand(batch.num_crystals, device=batch.frac.device, generator=generator)
        base = uniform_prior(batch, NoiseSource(generator, batch.frac.device))
        frac_t, lat_t, u_frac, u_lat = interpolate(batch, tau, base.frac, base.lattice)
        return TrainingSample(batch.replace(frac=frac_t, lattice=lat_t), 1.0 - tau, (u_lat, u_frac))

    def loss(self, prediction: Prediction, targets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        u_lat, u_frac = targets
        loss_l = ((prediction.lattice - u_lat) ** 2).mean()
        loss_f = ((prediction.coord - u_frac) ** 2).mean()
        w = self.config
        return {"loss": w.lattice_weight * loss_l + w.coord_weight * loss_f, "loss_lattice": loss_l,
                "loss_coord": loss_f}

    def prior(self, template: CrystalBatch, rng: NoiseSource) -> CrystalBatch:
        return uniform_prior(template, rng)

    def add_noise(self, clean: CrystalBatch, t: float, rng: NoiseSource) -> CrystalBatch:
        """The straight-line path at τ = 1 − t from a prior sample to ``clean``."""
        base = uniform_prior(clean, rng)
        tau = torch.full((clean.num_crystals,), 1.0 - check_start(t), device=clean.frac.device)
        frac_t, lat_t, _, _ = interpolate(clean, tau, base.frac, base.lattice)
        return clean.replace(frac=frac_t, lattice=lat_t)

    def schedule(self, num_steps: int, template: CrystalBatch, start: float = 1.0) -> list[FlowStep]:
        """Equal steps from τ = 1 − start to 1: ``num_steps`` over the whole path, ⌈start·num_steps⌉ from a
        later start."""
        start = check_start(start)
        n = max(1, math.ceil(start * num_steps - 1e-9))
        dt, tau0 = start / n, 1.0 - start
        # velocity annealing multiplies the coordinate velocity by up to 1 + slope: a correction for runs
        # from noise, an overshoot of (1 + slope·τ)× the residual for a run refining a nearly clean input
        anneal = start >= 1.0
        return [FlowStep(tau0 + i * dt, dt, i + 1 == n, anneal) for i in range(n)]

    def _velocity(self, network: Network, guide: Callable, state: CrystalBatch, tau: float,
                  entry: FlowStep) -> Prediction:
        t_net = torch.full((state.num_crystals,), 1.0 - tau, device=state.frac.device)
        v = guide(state, Prediction(*network(state, t_net)), FlowStep(tau, entry.dt, entry.last, entry.anneal))
        slope = self.config.coord_velocity_slope
        if slope and entry.anneal:  # velocity annealing: dF/dτ = (1 + slope·τ)·v_F
            v = Prediction(v.lattice, v.coord * (1.0 + slope * tau))
        return v

    def step(self, network: Network, guide: Callable[[CrystalBatch, Prediction, FlowStep], Prediction],
             state: CrystalBatch, entry: FlowStep, rng: NoiseSource) -> CrystalBatch:
        v = self._velocity(network, guide, state, entry.tau, entry)
        euler = advance(state, v, entry.dt)
        if self.config.integrator == "euler" or entry.last:
            return euler
        v2 = self._velocity(network, guide, euler, entry.tau + entry.dt, entry)
        return advance(state, Prediction(0.5 * (v.lattice + v2.lattice), 0.5 * (v.coord + v2.coord)), entry.dt)

    def guidance_point(self, state: CrystalBatch, prediction: Prediction, entry: FlowStep) -> GuidancePoint:
        """DAO-P at t = 0 on the predicted endpoint x̂₁ = x_τ + (1 − τ)·v; the velocity takes −s∇E as is."""
        end = advance(state, prediction, 1.0 - entry.tau)
        return GuidancePoint(end, torch.zeros(state.num_crystals, device=state.frac.device), 1.0, 1.0)
