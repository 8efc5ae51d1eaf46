"""Energy guidance: DAO-P's intermediate energy as a :class:`~dao.diffusion.sampler.GuidanceTerm` (DESIGN §4).

The sampler subtracts ``scale · σ̃² · ∂f_φ/∂F`` and ``scale · σ̃² · ∂f_φ/∂L`` in every predictor step, f_φ
being DAO-P's standardised intermediate energy at the current t, so that samples follow
p_t ∝ q_t · exp(−s·E_t). Gradients come from autograd through DAO-P on detached copies of the current
state (the sampler itself runs under ``torch.no_grad``).
"""
from __future__ import annotations

from dataclasses import asdict

import torch

from dao.crystal import CrystalBatch
from dao.errors import DAOError


class EnergyGuidance:
    """Guidance by a model with ``energy(batch, t) -> (B,)`` (a :class:`~dao.models.energy.DAOEnergyModel`).

    ``t`` is the continuous time t_int / T that the sampler passes to the generator, so the energy model
    must share the generator's diffusion schedule (see :func:`check_same_schedule`).
    """

    def __init__(self, model: torch.nn.Module, scale: float = 20.0) -> None:
        self.model = model
        self.scale = float(scale)

    def gradients(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂E/∂F (Nt, 3), ∂E/∂L (B, 3, 3)) of the summed energy of the batch at times t (B,)."""
        with torch.enable_grad():
            frac = batch.frac.detach().requires_grad_(True)
            lattice = batch.lattice.detach().requires_grad_(True)
            energy = self.model.energy(batch.replace(frac=frac, lattice=lattice), t.detach())
            grad_f, grad_l = torch.autograd.grad(energy.sum(), (frac, lattice))
        return grad_f.detach(), grad_l.detach()


def check_same_schedule(generator, energy_model) -> None:
    """Raise :class:`DAOError` unless both models were trained with the same diffusion schedule
    (num_steps, and the σ / cosine parameters that map a step index to a noise level). A flow-matching
    generator has no schedule: its sampler guides with DAO-P at t = 0 on the predicted endpoint
    (see :mod:`dao.diffusion.flow`), so any DAO-P works with it."""
    if getattr(generator, "method", "diffusion") == "flow":
        return
    g, e = asdict(generator.config.diffusion), asdict(energy_model.config.diffusion)
    keys = ("num_steps", "cosine_s", "sigma_min", "sigma_max")
    diff = [f"{k} {g[k]} vs {e[k]}" for k in keys if g[k] != e[k]]
    if diff:
        raise DAOError("the energy model and the generator use different diffusion schedules "
                       f"(generator vs energy model: {', '.join(diff)}); energy guidance needs the same one")


def energy_guidance(generator, energy_model, scale: float = 20.0) -> list[EnergyGuidance]:
    """The guidance list for :func:`dao.prediction.generate`, after checking the two models are compatible."""
    check_same_schedule(generator, energy_model)
    if not hasattr(energy_model, "energy"):
        raise DAOError("the energy model has no energy head (expected a DAO-P checkpoint)")
    return [EnergyGuidance(energy_model, scale)]
