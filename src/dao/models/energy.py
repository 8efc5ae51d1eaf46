"""DAO-P: Crysformer + noise heads + energy head, trained with the exponential energy loss
(docs/design.md, 'Energy model (DAO-P) and guidance').

DAO-P is a DAO-G (same process, same L_lattice + L_coord; any registered process) whose Crysformer also carries the energy head
f_φ(M_t, t). It adds

    L_E = ( exp(−f_φ(M_t, t)) − exp(−β·E(M_0)) )²,   β = 1,

on the noisy structure M_t, E being the standardised energy above hull of the clean structure M_0
(``(E_hull − mean) / std``, mean and std from the training labels, stored in the config). The minimiser is
the intermediate energy f*(M_t, t) = −log E_{q(M_0|M_t)}[exp(−β E(M_0))] (contrastive energy prediction),
whose gradient is what energy guidance needs (:mod:`dao.diffusion.guidance`). At t = 0 it is β·E(M_0), so
``energy_per_atom`` returns E_hull in eV/atom. Entries without a label (NaN) only train the noise heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from dao.config import Config
from dao.crystal import Crystal, CrystalBatch
from dao.errors import DAOError
from dao.models.generator import DAOGenerator, GeneratorConfig

#: Crystal.meta / CSV label used as E(M_0) (eV/atom); ``collate`` puts it into ``CrystalBatch.energy``.
LABEL_KEY = "e_above_hull"


def exponential_energy_loss(pred: torch.Tensor, target: torch.Tensor, beta: float = 1.0,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over labelled entries of (exp(−pred) − exp(−β·target))².

    ``target`` may hold NaN for unlabelled entries; they (and entries where ``mask`` is False) contribute
    neither to the value nor to the gradient. Returns 0 (with a zero gradient) when nothing is labelled.
    ``pred`` is clamped at −30 before the exponential so that a wild output cannot overflow float32.
    """
    ok = torch.isfinite(target)
    if mask is not None:
        ok = ok & mask
    y = torch.where(ok, target, torch.zeros_like(target))  # NaN must not reach the graph
    per = (torch.exp(-pred.clamp(min=-30.0)) - torch.exp(-beta * y)) ** 2
    per = torch.where(ok, per, torch.zeros_like(per))
    return per.sum() / ok.sum().clamp_min(1).to(per.dtype)


@dataclass
class EnergyHeadConfig(Config):
    """The energy loss and the label standardisation (mean, std in eV/atom, set from the training labels)."""

    section: ClassVar[str] = "energy"

    beta: float = 1.0
    loss_weight: float = 1.0
    mean: float = 0.0
    std: float = 1.0
    #: labels above this (eV/atom) are treated as unlabelled, as CrysDB keeps E_hull < 1 eV/atom; None: keep all
    max_label: float | None = 1.0
    num_labels: int = 0  # labelled training structures the statistics came from (informational)


@dataclass
class EnergyConfig(GeneratorConfig):
    energy: EnergyHeadConfig = field(default_factory=EnergyHeadConfig)

    keys: ClassVar[tuple[str, ...]] = GeneratorConfig.keys + ("energy",)

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "energy": self.energy.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "EnergyConfig":
        return cls(**cls._parts(d), energy=EnergyHeadConfig.from_dict(d.get("energy")))


def label_statistics(labels: Sequence[float], max_label: float | None = 1.0) -> tuple[float, float, int]:
    """(mean, std, count) of the finite labels ≤ ``max_label``; std falls back to 1 for < 2 distinct values."""
    y = np.asarray(labels, dtype=np.float64)
    y = y[np.isfinite(y)]
    if max_label is not None:
        y = y[y <= max_label]
    if len(y) == 0:
        return 0.0, 1.0, 0
    std = float(y.std())
    return float(y.mean()), (std if std > 1e-8 else 1.0), int(len(y))


class DAOEnergyModel(DAOGenerator):
    """DAO-P. ``energy(batch, t)`` is the standardised intermediate energy f_φ(M_t, t) (B,);
    ``energy_per_atom(batch)`` is the t = 0 prediction in eV/atom. Being a DAO-G of its config's method
    (diffusion by default, or any registered process), it can also sample."""

    kind = "energy"
    config_class = EnergyConfig
    required_heads = ("lattice", "coord", "energy")
    config: EnergyConfig

    @classmethod
    def from_training_data(cls, config: Mapping[str, Any], crystals: Sequence[Crystal]) -> "DAOEnergyModel":
        """A fresh DAO-P whose label standardisation comes from the training crystals' ``e_above_hull``."""
        cfg = cls.training_config(config, crystals)
        mean, std, n = label_statistics([c.meta.get(LABEL_KEY, math.nan) for c in crystals], cfg.energy.max_label)
        if n == 0:
            raise DAOError(f"no training structure carries an {LABEL_KEY} label"
                           + (f" ≤ {cfg.energy.max_label} eV/atom" if cfg.energy.max_label is not None else "")
                           + " (DAO-P needs energy labels)")
        cfg.energy.mean, cfg.energy.std, cfg.energy.num_labels = mean, std, n
        return cls(cfg)

    def standardised_labels(self, batch: CrystalBatch) -> torch.Tensor:
        """(E_hull − mean) / std per crystal; NaN where unlabelled or above ``max_label``."""
        e = self.config.energy
        if batch.energy is None:
            return torch.full((batch.num_crystals,), math.nan, device=batch.frac.device, dtype=batch.frac.dtype)
        y = batch.energy.to(batch.frac.dtype)
        if e.max_label is not None:
            y = torch.where(y <= e.max_label, y, torch.full_like(y, math.nan))
        return (y - e.mean) / e.std

    def energy(self, batch: CrystalBatch, t: torch.Tensor) -> torch.Tensor:
        """f_φ(M_t, t): the standardised intermediate energy at continuous times t ∈ [0, 1] (B,)."""
        return self.backbone(batch, t).energy

    def energy_per_atom(self, batch: CrystalBatch) -> torch.Tensor:
        """Predicted E_hull (eV/atom) of clean structures: f_φ(M, 0)/β · std + mean."""
        t = torch.zeros(batch.num_crystals, device=batch.frac.device, dtype=batch.frac.dtype)
        e = self.config.energy
        return self.energy(batch, t) / e.beta * e.std + e.mean

    def extra_losses(self, batch: CrystalBatch, noisy: CrystalBatch, t: torch.Tensor, out: Any,
                     losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adds L_E on the noisy structures (labels from the clean batch) and, in validation, the t = 0 MAE."""
        e = self.config.energy
        y = self.standardised_labels(batch)
        loss_e = exponential_energy_loss(out.energy, y, e.beta)
        losses["loss"] = losses["loss"] + e.loss_weight * loss_e
        losses["loss_energy"] = loss_e
        labelled = torch.isfinite(y)
        if not self.training and bool(labelled.any()):  # validation: E_hull MAE of the clean structures
            with torch.no_grad():
                pred = self.energy_per_atom(batch)
            losses["energy_mae_t0"] = (pred - batch.energy.to(pred.dtype))[labelled].abs().mean()
        return losses


@torch.no_grad()
def predict_energies(model: DAOEnergyModel, crystals: Sequence[Crystal], batch_size: int = 64) -> np.ndarray:
    """Predicted E_hull (eV/atom) of each crystal at t = 0, in the order given."""
    p = next(model.parameters())
    out = []
    for start in range(0, len(crystals), batch_size):
        batch = CrystalBatch.from_crystals(crystals[start:start + batch_size]).to(p.device)
        batch = batch.replace(frac=batch.frac.to(p.dtype), lattice=batch.lattice.to(p.dtype))
        out.append(model.energy_per_atom(batch).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)
