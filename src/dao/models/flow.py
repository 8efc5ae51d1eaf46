"""DAO-G with flow matching: the same Crysformer, trained on velocities and sampled by an ODE (DESIGN §3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from dao.crystal import CrystalBatch
from dao.diffusion.flow import CrystalFlow, sample_ode
from dao.nn.crysformer import Crysformer, CrysformerConfig, with_heads


@dataclass
class FlowConfig:
    num_steps: int = 50  # default ODE steps for sampling
    integrator: str = "euler"  # euler | heun
    lattice_weight: float = 1.0
    coord_weight: float = 10.0  # coordinate velocities are ~10× smaller than lattice velocities (Å)
    # sampling only: coordinate velocity × (1 + slope·τ) ("velocity annealing", as FlowMM's inference slope)
    coord_velocity_slope: float = 0.0


@dataclass
class FlowGeneratorConfig:
    model: CrysformerConfig = field(default_factory=CrysformerConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    max_atoms: int = 52
    method: str = "flow"

    def to_dict(self) -> dict:
        return {"method": "flow", "model": self.model.to_dict(), "flow": asdict(self.flow), "max_atoms": self.max_atoms}

    @classmethod
    def from_dict(cls, d: dict) -> "FlowGeneratorConfig":
        flow = {k: v for k, v in d.get("flow", {}).items() if k in FlowConfig.__dataclass_fields__}
        return cls(CrysformerConfig.from_dict(d.get("model", {})), FlowConfig(**flow), int(d.get("max_atoms", 52)))


class DAOFlowGenerator(nn.Module):
    """Structure generator by conditional flow matching; ``sample`` has DAOGenerator's signature."""

    kind = "generator"
    method = "flow"
    config_class = FlowGeneratorConfig

    def __init__(self, config: FlowGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Crysformer(with_heads(config.model, ("lattice", "coord")))
        self.flow = CrystalFlow()

    @classmethod
    def from_training_data(cls, config: dict, crystals) -> "DAOFlowGenerator":
        """Build a fresh model for ``dao train generator --method flow`` from the YAML config and the data."""
        return cls(FlowGeneratorConfig.from_dict({**config, "max_atoms": max(c.num_atoms for c in crystals)}))

    @property
    def default_steps(self) -> int:
        return self.config.flow.num_steps

    def velocity(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone(batch, t)
        return out.lattice, out.coord

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        b = batch.num_crystals
        tau = torch.rand(b, device=batch.frac.device)
        frac0, lat0 = self.flow.sample_base(batch)
        frac_t, lat_t, u_frac, u_lat = self.flow.interpolate(batch, tau, frac0, lat0)
        v_lat, v_frac = self.velocity(batch.replace(frac=frac_t, lattice=lat_t), 1.0 - tau)
        loss_l = ((v_lat - u_lat) ** 2).mean()
        loss_f = ((v_frac - u_frac) ** 2).mean()
        w = self.config.flow
        return {"loss": w.lattice_weight * loss_l + w.coord_weight * loss_f, "loss_lattice": loss_l, "loss_coord": loss_f}

    def sample(self, template: CrystalBatch, num_steps: int | None = None, corrector: bool = True,
               guidance: Sequence = (), generator: torch.Generator | None = None,
               progress: bool = False) -> CrystalBatch:
        from dao.runtime import sampling_context

        was_training = self.training
        self.eval()
        try:
            with sampling_context(guidance):
                return sample_ode(self.velocity, template, self.flow, num_steps=num_steps or self.default_steps,
                                  integrator=self.config.flow.integrator, guidance=guidance, generator=generator,
                                  progress=progress, coord_velocity_slope=self.config.flow.coord_velocity_slope)
        finally:
            self.train(was_training)
