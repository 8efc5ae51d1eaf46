"""DAO-G: Crysformer + diffusion over lattices and fractional coordinates (DESIGN §3)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from torch import nn

from dao.crystal import CrystalBatch
from dao.diffusion.processes import DiffusionConfig, LatticeDDPM, WrappedNormalCoords
from dao.diffusion.sampler import GuidanceTerm, sample_pc
from dao.nn.crysformer import Crysformer, CrysformerConfig, with_heads


@dataclass
class GeneratorConfig:
    model: CrysformerConfig = field(default_factory=CrysformerConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    max_atoms: int = 52  # largest cell the model is meant to generate (set from training data)

    def to_dict(self) -> dict:
        return {"model": self.model.to_dict(), "diffusion": asdict(self.diffusion), "max_atoms": self.max_atoms}

    @classmethod
    def from_dict(cls, d: dict) -> "GeneratorConfig":
        diff = {k: v for k, v in d.get("diffusion", {}).items() if k in DiffusionConfig.__dataclass_fields__}
        return cls(CrysformerConfig.from_dict(d.get("model", {})), DiffusionConfig(**diff), int(d.get("max_atoms", 52)))


class DAOGenerator(nn.Module):
    """Structure generator: predicts lattice noise ε and the normalised coordinate score."""

    kind = "generator"
    method = "diffusion"
    config_class = GeneratorConfig
    required_heads: tuple[str, ...] = ("lattice", "coord")

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Crysformer(with_heads(config.model, self.required_heads))
        d = config.diffusion
        self.lattice_process = LatticeDDPM(d.num_steps, d.cosine_s)
        self.coord_process = WrappedNormalCoords(d.num_steps, d.sigma_min, d.sigma_max)

    @classmethod
    def from_training_data(cls, config: dict, crystals: Sequence) -> "DAOGenerator":
        """Build a fresh model for ``dao train`` from the YAML config and the training crystals."""
        return cls(GeneratorConfig.from_dict({**config, "max_atoms": max(c.num_atoms for c in crystals)}))

    @property
    def default_steps(self) -> int:
        """Sampling steps used when none are given: the full training schedule."""
        return self.config.diffusion.num_steps

    def denoise(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.backbone(batch, t)
        return out.lattice, out.coord

    def noisy_batch(self, batch: CrystalBatch, generator: torch.Generator | None = None):
        """Draw t ~ U{1..T} per crystal and noise the batch; returns (noisy batch, t_int, ε_L, coord target)."""
        T = self.config.diffusion.num_steps
        b = batch.num_crystals
        t = torch.randint(1, T + 1, (b,), device=batch.frac.device, generator=generator)
        lat_t, eps = self.lattice_process.add_noise(batch.lattice, t)
        frac_t, target = self.coord_process.add_noise(batch.frac, t[batch.batch])
        return batch.replace(frac=frac_t, lattice=lat_t), t, eps, target

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        noisy, t, eps, target = self.noisy_batch(batch)
        out = self.backbone(noisy, t.float() / self.config.diffusion.num_steps)
        return self.losses(batch, out, eps, target)

    def losses(self, batch: CrystalBatch, out, eps: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_lattice + L_coord from the backbone output on the noised batch (subclasses add terms)."""
        loss_l = ((out.lattice - eps) ** 2).mean()
        loss_f = ((out.coord - target) ** 2).mean()
        return {"loss": loss_l + loss_f, "loss_lattice": loss_l, "loss_coord": loss_f}

    def sample(self, template: CrystalBatch, num_steps: int | None = None, corrector: bool = True,
               guidance: Sequence[GuidanceTerm] = (), generator: torch.Generator | None = None,
               progress: bool = False) -> CrystalBatch:
        from dao.runtime import sampling_context

        was_training = self.training
        self.eval()
        try:
            with sampling_context(guidance):
                return sample_pc(self.denoise, template, self.coord_process, self.lattice_process, num_steps=num_steps,
                                 step_lr=self.config.diffusion.step_lr, corrector=corrector, guidance=guidance,
                                 generator=generator, progress=progress)
        finally:
            self.train(was_training)
