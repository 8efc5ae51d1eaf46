"""Energy guidance, applied in one place for every process (docs/design.md, 'Energy model (DAO-P) and guidance').

A guidance term is an energy with a scale s. :class:`Guide` is what every process's ``step`` passes its
guided predictions through: it asks the process for the :class:`~dao.diffusion.base.GuidancePoint` (where the
energy is evaluated, at which time, and with which weights a gradient enters the network's output), sums
s·∇E over the terms by autograd and subtracts the weighted gradients from the prediction. For diffusion that
is the published −s·σ̃²·∂E/∂x shift of each posterior mean, so samples follow p_t ∝ q_t·exp(−s·E_t); for flow
matching it is −s·∇E(x̂₁) on the velocity. The sampler itself runs under ``torch.no_grad``; gradients come
from detached copies of the state.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence

import torch

from dao.crystal import CrystalBatch
from dao.diffusion.base import Prediction, Process
from dao.errors import DAOError


class GuidanceTerm(Protocol):
    """An energy whose gradient steers sampling, with its scale s."""

    scale: float

    def gradients(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (∂E/∂F (N, 3), ∂E/∂L (B, 3, 3)) of the summed energy at continuous times t (B,)."""
        ...


class EnergyGuidance:
    """Guidance by a model with ``energy(batch, t) -> (B,)`` (a DAO-P, :class:`~dao.models.energy.DAOEnergyModel`)."""

    def __init__(self, model: torch.nn.Module, scale: float = 20.0) -> None:
        self.model = model
        self.scale = float(scale)

    def gradients(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(∂E/∂F (N, 3), ∂E/∂L (B, 3, 3)) of the summed energy of the batch at times t (B,)."""
        with torch.enable_grad():
            frac = batch.frac.detach().requires_grad_(True)
            lattice = batch.lattice.detach().requires_grad_(True)
            energy = self.model.energy(batch.replace(frac=frac, lattice=lattice), t.detach())
            grad_f, grad_l = torch.autograd.grad(energy.sum(), (frac, lattice))
        return grad_f.detach(), grad_l.detach()


def guidance_gradients(terms: Sequence[GuidanceTerm], batch: CrystalBatch, t: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ s·∂E/∂F and Σ s·∂E/∂L over the terms."""
    grads = [term.gradients(batch, t) for term in terms]
    g_frac = sum(term.scale * g for term, (g, _) in zip(terms, grads))
    g_lat = sum(term.scale * g for term, (_, g) in zip(terms, grads))
    return g_frac, g_lat


def _per_row(weight: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return weight.view(-1, *([1] * (like.dim() - 1)))
    return weight


class Guide:
    """Applies guidance terms to a process's predictions; with no terms it returns them unchanged."""

    def __init__(self, process: Process, terms: Sequence[GuidanceTerm] = ()) -> None:
        self.process = process
        self.terms = list(terms)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def __call__(self, state: CrystalBatch, prediction: Prediction, entry: Any) -> Prediction:
        if not self.terms:
            return prediction
        point = self.process.guidance_point(state, prediction, entry)
        g_frac, g_lat = guidance_gradients(self.terms, point.batch, point.t)
        return Prediction(prediction.lattice - _per_row(point.lattice_weight, g_lat) * g_lat,
                          prediction.coord - _per_row(point.coord_weight, g_frac) * g_frac)


def energy_guidance(generator: Any, energy_model: Any, scale: float = 20.0) -> list[EnergyGuidance]:
    """The guidance list for sampling ``generator`` with DAO-P ``energy_model``, after checking that the
    energy model can be read at the generator's times (:meth:`~dao.diffusion.base.Process.compatible_energy_time`)."""
    if not hasattr(energy_model, "energy"):
        raise DAOError("the energy model has no energy head (expected a DAO-P checkpoint)")
    reason = generator.process.compatible_energy_time(getattr(energy_model, "process", None))
    if reason:
        raise DAOError(reason)
    return [EnergyGuidance(energy_model, scale)]
