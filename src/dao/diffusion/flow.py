"""Conditional flow matching for crystals (the paper's best, unreleased variant; DESIGN §3, as FlowMM).

Path from noise (τ = 0) to data (τ = 1):

* fractional coordinates on the flat torus: F_τ = (F_0 + τ·Δ) mod 1, Δ the shortest wrapped displacement
  F_1 − F_0 ∈ [−½, ½)³ with its per-crystal mean removed (a global translation is not a property of the
  crystal, and the translation-invariant network could not predict it); target velocity u_F = Δ;
* lattice, Euclidean: L_τ = (1 − τ)·L_0 + τ·L_1, L_0 ~ N(0, I), target velocity u_L = L_1 − L_0.

The network sees t = 1 − τ (the diffusion convention: 1 = noise) and predicts (u_L, u_F). Sampling
integrates the ODE with Euler or Heun in a chosen number of steps.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from dao.crystal import CrystalBatch

Velocity = Callable[[CrystalBatch, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def wrap_displacement(delta: torch.Tensor) -> torch.Tensor:
    """Shortest representative of a displacement on the unit torus, in [−½, ½)."""
    return torch.remainder(delta + 0.5, 1.0) - 0.5


def crystal_mean(x: torch.Tensor, batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
    """Per-crystal mean of per-atom rows, broadcast back to the atoms."""
    sums = x.new_zeros((num_crystals,) + x.shape[1:]).index_add_(0, batch, x)
    counts = torch.bincount(batch, minlength=num_crystals).clamp_min(1).to(x.dtype)
    return (sums / counts.view(-1, *([1] * (x.dim() - 1))))[batch]


class CrystalFlow:
    """Interpolation, targets and ODE steps of the crystal flow; knows nothing about the network."""

    def sample_base(self, template: CrystalBatch, generator: torch.Generator | None = None):
        dev = template.atom_types.device
        g_dev = "cpu" if generator is None else generator.device
        frac = torch.rand((template.atom_types.shape[0], 3), generator=generator, device=g_dev).to(dev)
        lat = torch.randn((template.num_crystals, 3, 3), generator=generator, device=g_dev).to(dev)
        return frac, lat

    def interpolate(self, batch: CrystalBatch, tau: torch.Tensor, frac0: torch.Tensor, lat0: torch.Tensor):
        """Return (F_τ, L_τ, u_F, u_L) for data ``batch``, per-crystal times τ (B,) and base samples."""
        delta = wrap_displacement(batch.frac - frac0)
        delta = delta - crystal_mean(delta, batch.batch, batch.num_crystals)
        tau_atoms = tau[batch.batch].view(-1, 1)
        frac_t = torch.remainder(frac0 + tau_atoms * delta, 1.0)
        tl = tau.view(-1, 1, 1)
        lat_t = (1 - tl) * lat0 + tl * batch.lattice
        return frac_t, lat_t, delta, batch.lattice - lat0

    @staticmethod
    def step(frac: torch.Tensor, lat: torch.Tensor, v_frac: torch.Tensor, v_lat: torch.Tensor, dt: float):
        return torch.remainder(frac + dt * v_frac, 1.0), lat + dt * v_lat


def _guided(velocity: Velocity, guidance: Sequence) -> Velocity:
    """Endpoint energy guidance: v − s·∇E(x̂₁) for each guidance term.

    x̂₁ = (F_τ + (1 − τ)·v_F mod 1, L_τ + (1 − τ)·v_L) is the one-step estimate of the sample the ODE is
    heading to, and ∇E its energy gradient at t = 0 (DAO-P on clean structures, the regime it was trained
    for at t = 0; the flow's intermediate states are not the diffusion noise levels DAO-P knows at t > 0).
    The gradient is applied to the current state unchanged (no back-propagation through the velocity
    network), so the cost is one DAO-P forward and backward per ODE step.
    """
    if not guidance:
        return velocity

    def f(batch: CrystalBatch, t: torch.Tensor):
        v_lat, v_frac = velocity(batch, t)
        remaining = t.to(v_lat.dtype)  # network time t = 1 − τ: the time left to τ = 1
        end = batch.replace(frac=torch.remainder(batch.frac + remaining[batch.batch].view(-1, 1) * v_frac, 1.0),
                            lattice=batch.lattice + remaining.view(-1, 1, 1) * v_lat)
        clean = torch.zeros_like(t)
        for term in guidance:
            g_frac, g_lat = term.gradients(end, clean)
            v_frac = v_frac - term.scale * g_frac
            v_lat = v_lat - term.scale * g_lat
        return v_lat, v_frac

    return f


@torch.no_grad()
def sample_ode(velocity: Velocity, template: CrystalBatch, flow: CrystalFlow, num_steps: int = 50,
               integrator: str = "euler", guidance: Sequence = (), generator: torch.Generator | None = None,
               progress: bool = False, coord_velocity_slope: float = 0.0) -> CrystalBatch:
    """Integrate dF/dτ = v_F, dL/dτ = v_L from τ = 0 (noise) to 1 with Euler or Heun steps.

    ``coord_velocity_slope`` s > 0 integrates dF/dτ = (1 + s·τ)·v_F instead ("velocity annealing": the
    coordinates commit to the predicted endpoint faster late in the trajectory; FlowMM uses it at inference)."""
    from tqdm.auto import tqdm

    if integrator not in ("euler", "heun"):
        raise ValueError(f"unknown integrator {integrator!r} (euler or heun)")
    guided = _guided(velocity, guidance)

    def vel(batch: CrystalBatch, t: torch.Tensor):
        v_lat, v_frac = guided(batch, t)
        if coord_velocity_slope:
            v_frac = v_frac * (1.0 + coord_velocity_slope * (1.0 - t))[batch.batch].view(-1, 1)
        return v_lat, v_frac

    frac, lat = flow.sample_base(template, generator)
    b = template.num_crystals
    dev = frac.device
    dt = 1.0 / num_steps
    for i in tqdm(range(num_steps), desc="sampling", disable=not progress, leave=False, unit="step"):
        tau = i * dt
        t_net = torch.full((b,), 1.0 - tau, device=dev)
        v_lat, v_frac = vel(template.replace(frac=frac, lattice=lat), t_net)
        frac_e, lat_e = flow.step(frac, lat, v_frac, v_lat, dt)
        if integrator == "heun" and i + 1 < num_steps:
            t_next = torch.full((b,), 1.0 - tau - dt, device=dev)
            v_lat2, v_frac2 = vel(template.replace(frac=frac_e, lattice=lat_e), t_next)
            frac, lat = flow.step(frac, lat, 0.5 * (v_frac + v_frac2), 0.5 * (v_lat + v_lat2), dt)
        else:
            frac, lat = frac_e, lat_e
    return template.replace(frac=frac.clone(), lattice=lat.clone())
