"""DAO-G's diffusion as a :class:`~dao.diffusion.base.Process` (docs/design.md, 'Diffusion (DAO-G)').

Training: t ~ U{1..T} per crystal; the lattice is noised by the cosine DDPM (target ε), coordinates by the
wrapped normal (target: the normalised score); the loss is ‖ε̂ − ε‖² + ‖ŝ − s‖². Sampling: predictor–
corrector — an annealed Langevin corrector step on the coordinates, then the reverse-SDE predictor step for
coordinates and the ancestral step for the lattice, over T steps or an evenly respaced subset.

Energy guidance shifts the predictor's posterior means by −s·σ̃²·∂E/∂x (σ̃² the step's posterior variance),
E being DAO-P's intermediate energy at the current state and time. :meth:`DiffusionProcess.guidance_point`
expresses that shift in the network's output units so that :class:`~dao.diffusion.guidance.Guide` applies it.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from dao.crystal import CrystalBatch
from dao.diffusion.base import (GuidancePoint, Network, NoiseSource, Prediction, Process, TrainingSample,
                                check_start, uniform_prior)
from dao.diffusion.processes import DiffusionConfig, LatticeDDPM, WrappedNormalCoords
from dao.errors import DAOError

#: the official per-dataset corrector step sizes for CSP (one sample per composition); see docs/official.md
STEP_LR_BY_DATASET = {"mp_20": 1e-5, "mpts_52": 1e-5, "perov_5": 5e-7, "carbon_24": 5e-6}
_DATASET_NAME = re.compile(r"^(mp_?20|mpts_?52|perov_?5|carbon_?24)$")


def timesteps(num_train_steps: int, num_sample_steps: int | None, first: int | None = None) -> list[int]:
    """Descending integer times from ``first`` (default T) to 1, evenly respaced to ``num_sample_steps``
    (the sampler's last step always ends at 0)."""
    first = num_train_steps if first is None else first
    n = first if not num_sample_steps else min(num_sample_steps, first)
    return torch.linspace(first, 1, n).round().long().unique().flip(0).tolist()


def dataset_of(paths: Sequence[str | Path]) -> str | None:
    """The benchmark dataset (a key of :data:`STEP_LR_BY_DATASET`) that every one of ``paths`` belongs to,
    recognised by a folder or file stem named after it (``csp/mp_20/train.csv.gz``, ``perov-5.csv``);
    None when a path names none of them or the paths name different ones."""
    found = set()
    for p in paths:
        names_in_path = [*Path(p).parts[:-1], Path(p).name.split(".")[0]]
        parts = [q.lower().replace("-", "_") for q in names_in_path]
        names = {m.group(1).replace("_", "") for m in map(_DATASET_NAME.match, parts) if m}
        if len(names) != 1:
            return None
        found |= names
    if len(found) != 1:
        return None
    key = found.pop()
    return next(k for k in STEP_LR_BY_DATASET if k.replace("_", "") == key)


@dataclass(frozen=True)
class DiffusionStep:
    """One entry of the reverse grid: integer times t → t_prev, and the lattice clip bound (None: no clip)."""

    t: int
    t_prev: int
    clip: torch.Tensor | None


class DiffusionProcess(Process):
    """Cosine-DDPM lattice + wrapped-normal coordinates, sampled predictor–corrector."""

    method = "diffusion"
    config_class = DiffusionConfig
    config: DiffusionConfig

    def __init__(self, config: DiffusionConfig | None = None, corrector: bool = True) -> None:
        super().__init__(config or DiffusionConfig())
        c = self.config
        self.lattice = LatticeDDPM(c.num_steps, c.cosine_s, c.beta_min, c.beta_max)
        self.coords = WrappedNormalCoords(c.num_steps, c.sigma_min, c.sigma_max)
        self.corrector = corrector

    @property
    def num_train_steps(self) -> int:
        return self.config.num_steps

    @property
    def default_steps(self) -> int:
        """The full training schedule."""
        return self.config.num_steps

    def training_sample(self, batch: CrystalBatch, generator: torch.Generator | None = None) -> TrainingSample:
        T = self.config.num_steps
        t = torch.randint(1, T + 1, (batch.num_crystals,), device=batch.frac.device, generator=generator)
        lat_t, eps = self.lattice.add_noise(batch.lattice, t)
        frac_t, target = self.coords.add_noise(batch.frac, t[batch.batch])
        return TrainingSample(batch.replace(frac=frac_t, lattice=lat_t), t.float() / T, (eps, target))

    def loss(self, prediction: Prediction, targets: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
        eps, target = targets
        loss_l = ((prediction.lattice - eps) ** 2).mean()
        loss_f = ((prediction.coord - target) ** 2).mean()
        return {"loss": loss_l + loss_f, "loss_lattice": loss_l, "loss_coord": loss_f}

    def prior(self, template: CrystalBatch, rng: NoiseSource) -> CrystalBatch:
        return uniform_prior(template, rng)

    def _first_step(self, start: float) -> int:
        """The integer time a run starting at continuous time ``start`` begins at (1..T)."""
        T = self.config.num_steps
        return min(T, max(1, round(check_start(start) * T)))

    def add_noise(self, clean: CrystalBatch, t: float, rng: NoiseSource) -> CrystalBatch:
        """q(x_t | x_0) at the integer time nearest t·T: the cosine-DDPM lattice and wrapped-normal
        coordinates of training."""
        first = self._first_step(t)
        times = torch.full((clean.num_crystals,), first, dtype=torch.long, device=clean.frac.device)
        lat_t, _ = self.lattice.add_noise(clean.lattice, times, rng.randn(clean.num_crystals, 3, 3))
        frac_t, _ = self.coords.add_noise(clean.frac, times[clean.batch], rng.randn(clean.frac.shape[0], 3))
        return clean.replace(frac=frac_t, lattice=lat_t)

    def schedule(self, num_steps: int, template: CrystalBatch, start: float = 1.0) -> list[DiffusionStep]:
        T = self.config.num_steps
        first = self._first_step(start)
        ts = timesteps(T, max(1, math.ceil(num_steps * first / T - 1e-9)), first=first)
        # respaced schedules clip the predicted clean lattice: no entry beyond 4× the edge of a cube of
        # 30 Å³ per atom (≈ 64× a typical volume; the full schedule is left exactly as trained)
        clip = None
        if len(ts) < first:
            clip = 4.0 * (30.0 * template.num_atoms.to(template.frac.device).double()) ** (1 / 3)
        return [DiffusionStep(t, ts[i + 1] if i + 1 < len(ts) else 0, clip) for i, t in enumerate(ts)]

    def _time(self, state: CrystalBatch, entry: DiffusionStep) -> torch.Tensor:
        return torch.full((state.num_crystals,), entry.t / self.config.num_steps, device=state.frac.device)

    def step(self, network: Network, guide: Callable[[CrystalBatch, Prediction, DiffusionStep], Prediction],
             state: CrystalBatch, entry: DiffusionStep, rng: NoiseSource) -> CrystalBatch:
        t, t_prev, nt = entry.t, entry.t_prev, state.frac.shape[0]
        tc = self._time(state, entry)
        frac = state.frac
        if self.corrector:
            _, out_f = network(state, tc)
            noise = rng.randn(nt, 3)  # drawn either way: both settings share every other random number
            if t_prev == 0 and not self.config.final_corrector_noise:
                noise = torch.zeros_like(noise)  # the official sampler's last corrector step is noise-free
            frac = self.coords.corrector_step(frac, self.coords.score_from_output(out_f, t), t, noise,
                                              self.config.step_lr)
            state = state.replace(frac=frac)
        pred = guide(state, Prediction(*network(state, tc)), entry)
        frac = self.coords.predictor_step(frac, self.coords.score_from_output(pred.coord, t), t, t_prev,
                                          rng.randn(nt, 3))
        lat = self.lattice.step(state.lattice, pred.lattice, t, t_prev, rng.randn(state.num_crystals, 3, 3),
                                clip=entry.clip)
        return state.replace(frac=frac, lattice=lat)

    def guidance_point(self, state: CrystalBatch, prediction: Prediction, entry: DiffusionStep) -> GuidancePoint:
        """E at the current state and time; weights that turn s·∇E into a −s·σ̃²·∇E shift of each mean.

        Coordinates: the predictor adds (σ_t² − σ_{t'}²)·√λ_t·output, so an output change of
        −σ̃²/((σ_t² − σ_{t'}²)·√λ_t)·s∇_F E shifts it by −s·σ̃²·∇_F E. Lattice: the mean moves by
        ∂mean/∂ε̂ per unit of ε̂, so an ε̂ change of σ̃²/(∂mean/∂ε̂)·s∇_L E (∂mean/∂ε̂ < 0) shifts it by
        −s·σ̃²·∇_L E."""
        t, t_prev = entry.t, entry.t_prev
        c = self.coords
        w_coord = c.posterior_variance(t, t_prev) / (c.step_size(t, t_prev) * float(c.lam[t]) ** 0.5)
        w_lat = self.lattice.posterior_variance(t, t_prev) / self.lattice.mean_per_eps(t, t_prev)
        return GuidancePoint(state, self._time(state, entry), w_lat, w_coord)

    def compatible_energy_time(self, energy_process: Process | None) -> str | None:
        """DAO-P reads t as this schedule's t/T: it must have been trained with the same schedule."""
        if not isinstance(energy_process, DiffusionProcess):
            return "the energy model was not trained with a diffusion schedule"
        g, e = asdict(self.config), asdict(energy_process.config)
        keys = ("num_steps", "cosine_s", "sigma_min", "sigma_max")
        diff = [f"{k} {g[k]} vs {e[k]}" for k in keys if g[k] != e[k]]
        if diff:
            return ("the energy model and the generator use different diffusion schedules "
                    f"(generator vs energy model: {', '.join(diff)}); energy guidance needs the same one")
        return None


def record_dataset_step_lr(process_config: Any, config: Mapping[str, Any], data: Sequence[str | Path]
                           ) -> dict[str, Any] | None:
    """Training a diffusion model on one benchmark dataset (:func:`dataset_of` of its ``data``) records that
    dataset's official corrector step size in ``process_config`` (saved with the checkpoint, used by
    ``dao predict`` without ``--step-lr``), unless the YAML ``config`` sets ``diffusion.step_lr``. Returns
    what was recorded (None: nothing), for the run's metadata."""
    dataset = dataset_of(data)
    if not isinstance(process_config, DiffusionConfig) or dataset is None or "step_lr" in (config.get("diffusion") or {}):
        return None
    process_config.step_lr = STEP_LR_BY_DATASET[dataset]
    return {"dataset": dataset, "step_lr": process_config.step_lr}


def with_step_lr(process: Process, step_lr: float) -> Process:
    """A copy of a diffusion ``process`` whose corrector uses ``step_lr`` (the schedule is shared, the
    original is untouched). DAOError for a process without a corrector or a negative/non-finite value."""
    if not isinstance(process, DiffusionProcess):
        raise DAOError(f"a corrector step size (--step-lr) applies to diffusion generators only; this one "
                       f"is a {process.method} generator (use --method diffusion or a diffusion checkpoint)")
    if not (math.isfinite(step_lr) and step_lr >= 0):
        raise DAOError(f"--step-lr must be a finite number ≥ 0, got {step_lr}")
    out = copy.copy(process)
    out.config = replace(process.config, step_lr=float(step_lr))
    return out
