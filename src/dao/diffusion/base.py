"""The interface every generative process implements (see docs/design.md, 'Module map').

A *process* owns everything about one way of turning noise into crystals and back — its configuration, the
corruption used for training (``training_sample`` + ``loss``), the prior, the time grid and one reverse
``step`` — and nothing about the network. The network is any callable
``network(batch, t) -> (lattice output (B, 3, 3), coordinate output (N, 3))`` with continuous t ∈ [0, 1]
(1 = noise). :func:`dao.diffusion.sampler.sample` is the only sampling loop; guidance is applied by
:class:`dao.diffusion.guidance.Guide`, the only place that touches a prediction with an energy gradient,
at the point and with the weights that :meth:`Process.guidance_point` names.

A new process is one module with a :class:`Process` subclass plus one line in
:mod:`dao.diffusion.registry`.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch

from dao.config import Config
from dao.crystal import CrystalBatch

#: network(batch, t (B,)) -> (lattice output (B, 3, 3), coordinate output (N, 3))
Network = Callable[[CrystalBatch, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class Prediction(NamedTuple):
    """A network output: per-crystal lattice output (B, 3, 3) and per-atom coordinate output (N, 3)."""

    lattice: torch.Tensor
    coord: torch.Tensor


class TrainingSample(NamedTuple):
    """A corrupted batch, the network time for each crystal (B,) and the process's regression targets."""

    noisy: CrystalBatch
    t: torch.Tensor
    targets: Any


@dataclass(frozen=True)
class GuidancePoint:
    """Where the energy gradient is taken and how it enters the prediction: the guided prediction is
    ``prediction − (lattice_weight · Σ s∇_L E, coord_weight · Σ s∇_F E)`` with E evaluated on ``batch`` at
    continuous times ``t`` (B,). Weights are floats or per-crystal/per-atom tensors that broadcast."""

    batch: CrystalBatch
    t: torch.Tensor
    lattice_weight: float | torch.Tensor
    coord_weight: float | torch.Tensor


class NoiseSource:
    """Draws the sampler's random numbers from one ``torch.Generator`` (on its own device, then moved), so
    that a seed gives the same samples on every device."""

    def __init__(self, generator: torch.Generator | None, device: torch.device | str) -> None:
        self.generator = generator
        self.device = torch.device(device)
        self._gen_device = "cpu" if generator is None else generator.device

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, device=self._gen_device).to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, device=self._gen_device).to(self.device)


class Process(ABC):
    """A generative process over (fractional coordinates F, lattice L) given the atom types."""

    #: the registry name, stored as ``method`` in a generator's config
    method: ClassVar[str]
    #: the process's configuration dataclass; its ``section`` is the config/YAML section name
    config_class: ClassVar[type[Config]]

    def __init__(self, config: Config) -> None:
        self.config = config

    @property
    @abstractmethod
    def default_steps(self) -> int:
        """Sampling steps used when none are given."""

    def resolve_steps(self, num_steps: int | None) -> int:
        """``num_steps``, or the default when None (the one place that rule lives)."""
        return int(num_steps) if num_steps else self.default_steps

    # ----------------------------------------------------------------------------------------- training
    @abstractmethod
    def training_sample(self, batch: CrystalBatch, generator: torch.Generator | None = None) -> TrainingSample:
        """Corrupt a clean batch at random times: what the network sees and what it must predict."""

    @abstractmethod
    def loss(self, prediction: Prediction, targets: Any) -> dict[str, torch.Tensor]:
        """``{"loss", "loss_lattice", "loss_coord"}`` of a prediction against ``training_sample`` targets."""

    # ----------------------------------------------------------------------------------------- sampling
    @abstractmethod
    def prior(self, template: CrystalBatch, rng: NoiseSource) -> CrystalBatch:
        """The starting state: ``template`` with noise coordinates and lattice."""

    @abstractmethod
    def schedule(self, num_steps: int, template: CrystalBatch, start: float = 1.0) -> Sequence[Any]:
        """The reverse-time grid: one opaque entry per :meth:`step`. ``start`` < 1 is the part of the grid
        from time ``start`` on, ≈ ``start·num_steps`` entries (a run that begins at :meth:`add_noise`)."""

    def add_noise(self, clean: CrystalBatch, t: float, rng: NoiseSource) -> CrystalBatch:
        """``clean`` corrupted to time t ∈ (0, 1] (1 = the prior): the state a run that refines a given
        structure starts from, before ``schedule(num_steps, clean, start=t)``."""
        raise NotImplementedError(f"the {self.method} process cannot start from a given structure")

    @abstractmethod
    def step(self, network: Network, guide: Callable[[CrystalBatch, Prediction, Any], Prediction],
             state: CrystalBatch, entry: Any, rng: NoiseSource) -> CrystalBatch:
        """One reverse step from ``state`` at grid ``entry``. Predictions that should follow the guidance
        pass through ``guide(state, prediction, entry)``."""

    @abstractmethod
    def guidance_point(self, state: CrystalBatch, prediction: Prediction, entry: Any) -> GuidancePoint:
        """Where and with which weights energy guidance acts on the prediction at this step."""

    def compatible_energy_time(self, energy_process: Process | None) -> str | None:
        """None if a DAO-P trained with ``energy_process`` can guide this process, else the reason."""
        return None


def check_start(start: float) -> float:
    """A run's start time as a float in (0, 1]; ValueError otherwise."""
    start = float(start)
    if not 0.0 < start <= 1.0:
        raise ValueError(f"a sampling run starts at a time in (0, 1], got {start}")
    return start


def uniform_prior(template: CrystalBatch, rng: NoiseSource) -> CrystalBatch:
    """Coordinates uniform on the torus, lattice entries standard normal (the prior of both DAO processes)."""
    frac = rng.rand(template.atom_types.shape[0], 3)
    lattice = rng.randn(template.num_crystals, 3, 3)
    return template.replace(frac=frac, lattice=lattice)
