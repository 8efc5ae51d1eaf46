"""DAO-P as a property model (docs/design.md, 'Properties and Tc'): Crysformer at t = 0 with a fresh scalar head, trained on a
standardised target; the backbone can start from a pretrained DAO-P.

``loss(batch)`` reads the target from ``batch.energy`` (the per-crystal label slot of
:class:`~dao.crystal.CrystalBatch`, filled from ``crystal.meta["target"]``); NaN targets are masked.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from dao.config import Config
from dao.crystal import Crystal, CrystalBatch
from dao.errors import CheckpointError, ConfigError
from dao.nn.crysformer import Crysformer, CrysformerConfig

LABEL_KEY = "target"


@dataclass
class PropertyConfig(Config):
    section: ClassVar[str] = "property"

    model: CrysformerConfig = field(default_factory=CrysformerConfig)
    target: str = "target"  # the column name it was trained on (for reports)
    mean: float = 0.0
    std: float = 1.0
    loss: str = "l1"  # l1 (optimises the MAE that is reported) or mse
    max_atoms: int = 52

    def validate(self) -> None:
        if self.loss not in ("l1", "mse"):
            raise ConfigError(f"config property.loss: {self.loss!r} is not l1 or mse")


class DAOPropertyModel(nn.Module):
    kind = "property"
    method = "property"
    config_class = PropertyConfig
    label_key = LABEL_KEY

    def __init__(self, config: PropertyConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        cfg = copy.deepcopy(config.model)
        cfg.heads_out = ["energy"]  # the scalar graph head, here a property head
        self.backbone = Crysformer(cfg)

    @classmethod
    def from_training_data(cls, config: Mapping[str, Any], crystals: Sequence[Crystal],
                           target: str = "target") -> "DAOPropertyModel":
        """A fresh property model: backbone from ``config["model"]``, head settings from ``config["property"]``,
        target standardisation from the crystals' labels."""
        values = torch.tensor([float(c.meta.get(LABEL_KEY, math.nan)) for c in crystals], dtype=torch.float64)
        values = values[torch.isfinite(values)]
        if len(values) == 0:
            raise ValueError("no finite target values")
        std = float(values.std()) if len(values) > 1 else 1.0
        prop = dict(config.get("property", {}))
        return cls(PropertyConfig.from_dict({"model": config.get("model", {}), "target": target,
                                             "mean": float(values.mean()), "std": std if std > 0 else 1.0,
                                             "max_atoms": max(c.num_atoms for c in crystals), **prop}))

    def init_backbone_from(self, checkpoint: dict) -> int:
        """Copy a pretrained Crysformer's weights (a DAO-P or DAO-G checkpoint dict), all but the output
        heads; the property head stays fresh. Returns the number of tensors copied."""
        if checkpoint["config"].get("model", {}) and CrysformerConfig.from_dict(checkpoint["config"]["model"]).hidden != self.config.model.hidden:
            raise CheckpointError("--init checkpoint has another Crysformer size than the property config")
        own = self.state_dict()
        heads = ("backbone.energy_head", "backbone.lattice_head", "backbone.coord_head")
        take = {k: v for k, v in checkpoint["state_dict"].items()
                if k.startswith("backbone.") and not k.startswith(heads) and k in own and own[k].shape == v.shape}
        missing = [k for k in own if k.startswith("backbone.") and not k.startswith(heads) and k not in take]
        if missing:
            raise CheckpointError(f"--init checkpoint does not fit the property model ({len(missing)} tensors "
                                  f"missing, e.g. {missing[0]})")
        self.load_state_dict(take, strict=False)
        return len(take)

    def forward(self, batch: CrystalBatch) -> torch.Tensor:
        """Standardised prediction (B,)."""
        t = torch.zeros(batch.num_crystals, device=batch.frac.device, dtype=batch.frac.dtype)
        return self.backbone(batch, t).energy

    def predict(self, batch: CrystalBatch) -> torch.Tensor:
        """Prediction in target units (B,)."""
        return self.forward(batch) * self.config.std + self.config.mean

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        pred = self.forward(batch)
        y = (batch.energy.to(pred.dtype) - self.config.mean) / self.config.std
        ok = torch.isfinite(y)
        if not bool(ok.any()):
            zero = pred.sum() * 0.0
            return {"loss": zero, "mae": zero.detach()}
        diff = pred[ok] - y[ok]
        loss = diff.abs().mean() if self.config.loss == "l1" else (diff ** 2).mean()
        return {"loss": loss, "mae": diff.detach().abs().mean() * self.config.std}
