"""DAO-G: a Crysformer paired with a generative process (docs/design.md, 'Diffusion (DAO-G)', 'Flow matching').

The model is the same for every process: the network predicts, and the process (diffusion, flow matching,
or any registered in :mod:`dao.diffusion.registry`) owns the corruption, the loss, the prior and the
reverse steps. The process is named by ``method`` in the config, its settings live in the config section
of that name (``diffusion:`` / ``flow:``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from dao.config import Config
from dao.crystal import Crystal, CrystalBatch
from dao.diffusion.base import Prediction, Process
from dao.diffusion.denoising import with_step_lr
from dao.diffusion.guidance import GuidanceTerm
from dao.diffusion.registry import DEFAULT_METHOD, methods, process_class
from dao.diffusion.sampler import sample
from dao.errors import ConfigError
from dao.nn.crysformer import Crysformer, CrysformerConfig, with_heads


@dataclass
class GeneratorConfig:
    """Backbone, method, the method's process config and the largest cell the model is meant for.

    Serialised as ``{"method", "model", <process section>, "max_atoms"}``: the process section is named
    by the process's config class (``diffusion`` / ``flow``)."""

    model: CrysformerConfig = field(default_factory=CrysformerConfig)
    method: str = DEFAULT_METHOD
    process: Config | None = None  # None: the method's defaults
    max_atoms: int = 52  # set from the training data

    #: top-level keys besides the process section that this config understands
    keys: ClassVar[tuple[str, ...]] = ("method", "model", "max_atoms")

    def __post_init__(self) -> None:
        cls = process_class(self.method)
        if self.process is None:
            self.process = cls.config_class()
        elif not isinstance(self.process, cls.config_class):
            raise ConfigError(f"method {self.method!r} needs a {cls.config_class.__name__}, "
                              f"got {type(self.process).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.model.to_dict(),
                self.process.section: self.process.to_dict(), "max_atoms": self.max_atoms}

    @classmethod
    def _parts(cls, d: Mapping[str, Any]) -> dict[str, Any]:
        """The constructor arguments of the shared fields, after checking every key is known."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a model config must be a mapping, got {type(d).__name__}")
        method = d.get("method", DEFAULT_METHOD)
        if not isinstance(method, str):
            raise ConfigError(f"config method: expected a string, got {method!r}")
        pcls = process_class(method).config_class
        # a config may carry the sections of several methods (one YAML for a diffusion and a flow run):
        # the model keeps its own method's, the others are checked and set aside
        sections = {process_class(m).config_class.section: process_class(m).config_class for m in methods()}
        unknown = sorted(set(d) - set(cls.keys) - set(sections))
        if unknown:
            raise ConfigError(f"unknown config section(s): {', '.join(unknown)} (known: "
                              f"{', '.join(sorted(set(cls.keys) | set(sections)))})")
        for name, other in sections.items():
            if name in d and other is not pcls:
                other.from_dict(d[name])
        max_atoms = d.get("max_atoms", 52)
        if isinstance(max_atoms, bool) or not isinstance(max_atoms, int) or max_atoms < 1:
            raise ConfigError(f"config max_atoms: expected a positive integer, got {max_atoms!r}")
        return {"model": CrysformerConfig.from_dict(d.get("model")), "method": method,
                "process": pcls.from_dict(d.get(pcls.section)), "max_atoms": max_atoms}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GeneratorConfig":
        return cls(**cls._parts(d))


class DAOGenerator(nn.Module):
    """Structure generator: a Crysformer predicting the process's targets; ``sample`` runs the process."""

    kind = "generator"
    config_class: ClassVar[type] = GeneratorConfig
    required_heads: ClassVar[tuple[str, ...]] = ("lattice", "coord")

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = Crysformer(with_heads(config.model, self.required_heads))
        self.process: Process = process_class(config.method)(config.process)

    @classmethod
    def training_config(cls, config: Mapping[str, Any], crystals: Sequence[Crystal]) -> GeneratorConfig:
        """The model config of a ``dao train`` YAML (its ``train`` section is the trainer's), with
        ``max_atoms`` set to the largest training cell."""
        model_cfg = {k: v for k, v in config.items() if k != "train"}
        return cls.config_class.from_dict({**model_cfg, "max_atoms": max(c.num_atoms for c in crystals)})

    @classmethod
    def from_training_data(cls, config: Mapping[str, Any], crystals: Sequence[Crystal]) -> "DAOGenerator":
        """A fresh model for ``dao train`` from a YAML config and the training crystals."""
        return cls(cls.training_config(config, crystals))

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def default_steps(self) -> int:
        """Sampling steps used when none are given (the process's default)."""
        return self.process.default_steps

    def network(self, batch: CrystalBatch, t: torch.Tensor) -> Prediction:
        """The Crysformer's (lattice, coordinate) outputs at continuous times t (B,)."""
        out = self.backbone(batch, t)
        return Prediction(out.lattice, out.coord)

    def loss(self, batch: CrystalBatch) -> dict[str, torch.Tensor]:
        noisy, t, targets = self.process.training_sample(batch)
        out = self.backbone(noisy, t)
        losses = self.process.loss(Prediction(out.lattice, out.coord), targets)
        return self.extra_losses(batch, noisy, t, out, losses)

    def extra_losses(self, batch: CrystalBatch, noisy: CrystalBatch, t: torch.Tensor, out: Any,
                     losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hook for models with more heads (DAO-P adds its energy loss); returns ``losses`` here."""
        return losses

    def sample(self, template: CrystalBatch, num_steps: int | None = None, guidance: Sequence[GuidanceTerm] = (),
               generator: torch.Generator | None = None, progress: bool = False,
               step_lr: float | None = None, start: float | None = None) -> CrystalBatch:
        """Generate (F, L) for the atom types of ``template`` (see :func:`dao.diffusion.sampler.sample`), or
        with ``start`` in (0, 1) refine the structures of ``template`` from that noise level.
        ``step_lr``: the diffusion corrector's step size for this call (default: the config's)."""
        process = self.process if step_lr is None else with_step_lr(self.process, step_lr)
        was_training = self.training
        self.eval()
        try:
            context = torch.no_grad() if guidance else torch.inference_mode()
            with context:  # guidance needs autograd inside its terms; unguided sampling needs none at all
                return sample(process, self.network, template, num_steps=num_steps, guidance=guidance,
                              generator=generator, progress=progress, start=start)
        finally:
            self.train(was_training)
