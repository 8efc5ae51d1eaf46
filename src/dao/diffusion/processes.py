"""The two noise primitives of DAO-G's diffusion, independent of any network (docs/design.md, 'Diffusion (DAO-G)').

Each owns its schedule and exposes ``add_noise`` (training targets) and reverse steps (sampling). Time is an
integer index t ∈ {1..T}; the network sees t / T. :class:`dao.diffusion.denoising.DiffusionProcess` combines
them into one :class:`~dao.diffusion.base.Process`; energy guidance enters through the network's prediction
(:mod:`dao.diffusion.guidance`), not through these steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

import torch

from dao.config import Config
from dao.diffusion import wrapped_normal
from dao.errors import ConfigError
from dao.diffusion.schedules import cosine_alpha_bar, geometric_sigmas


class LatticeDDPM:
    """DDPM on the raw 3×3 lattice with a cosine schedule: L_t = √ᾱ_t L_0 + √(1−ᾱ_t) ε; the model predicts ε."""

    def __init__(self, num_steps: int = 1000, s: float = 0.008, beta_min: float = 0.0, beta_max: float = 0.999
                 ) -> None:
        self.num_steps = num_steps
        ab = cosine_alpha_bar(num_steps, s, beta_min, beta_max)
        self.alpha_bar = ab.float()
        self.alpha = torch.cat([torch.ones(1, dtype=torch.float64), ab[1:] / ab[:-1]]).float()
        self.beta = 1 - self.alpha

    def add_noise(self, lattice0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (L_t, ε) for per-crystal integer times t (B,)."""
        noise = torch.randn_like(lattice0) if noise is None else noise
        ab = self.alpha_bar.to(lattice0.device)[t].view(-1, 1, 1)
        return ab.sqrt() * lattice0 + (1 - ab).sqrt() * noise, noise

    def posterior_variance(self, t: int, t_prev: int) -> float:
        """σ̃² of the step t → t_prev."""
        ab, ab_prev = float(self.alpha_bar[t]), float(self.alpha_bar[t_prev])
        return (1 - ab / ab_prev) * (1 - ab_prev) / (1 - ab)

    def mean_per_eps(self, t: int, t_prev: int) -> float:
        """∂(posterior mean)/∂ε̂ of the step t → t_prev (negative): how an ε̂ change moves the mean."""
        ab, ab_prev = float(self.alpha_bar[t]), float(self.alpha_bar[t_prev])
        a = ab / ab_prev
        return -(1 - a) / ((1 - ab) ** 0.5 * a**0.5)

    def step(self, lattice_t: torch.Tensor, eps_pred: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor,
             clip: torch.Tensor | None = None) -> torch.Tensor:
        """Ancestral step L_t → L_{t_prev} (t_prev = t − 1, or fewer steps with a respaced schedule).

        ``clip`` (B,) bounds the entries of the predicted clean lattice L̂₀ to [−clip, clip] before the
        posterior mean is formed (DDPM's clip_denoised): on a respaced schedule the first steps divide by
        a tiny √ᾱ and one poor ε̂ can otherwise explode a cell."""
        ab, ab_prev = float(self.alpha_bar[t]), float(self.alpha_bar[t_prev])
        a = ab / ab_prev
        b = 1 - a
        var = b * (1 - ab_prev) / (1 - ab)
        if clip is None:
            mean = (lattice_t - b / (1 - ab) ** 0.5 * eps_pred) / a**0.5
        else:  # the same posterior mean written through L̂₀, with L̂₀ clipped
            bound = clip.view(-1, 1, 1).to(lattice_t.dtype)
            l0 = (lattice_t - (1 - ab) ** 0.5 * eps_pred) / ab**0.5
            l0 = torch.maximum(torch.minimum(l0, bound), -bound)
            mean = (ab_prev**0.5 * b / (1 - ab)) * l0 + (a**0.5 * (1 - ab_prev) / (1 - ab)) * lattice_t
        return mean + var**0.5 * noise


class WrappedNormalCoords:
    """Wrapped-normal noise on fractional coordinates: F_t = (F_0 + σ_t ε) mod 1.

    The network predicts the score of N_w(F_t | F_0, σ_t²) divided by √λ_t, λ_t = E‖score‖² per
    dimension (precomputed once by quadrature), so its targets have unit scale at every t.
    """

    def __init__(self, num_steps: int = 1000, sigma_min: float = 0.005, sigma_max: float = 0.5) -> None:
        self.num_steps = num_steps
        self.sigma = geometric_sigmas(num_steps, sigma_min, sigma_max).float()
        self.lam = _lambda_table(num_steps, sigma_min, sigma_max)

    def add_noise(self, frac0: torch.Tensor, t_atoms: torch.Tensor, noise: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (F_t, target) for per-atom integer times; target = score / √λ_t."""
        noise = torch.randn_like(frac0) if noise is None else noise
        sigma = self.sigma.to(frac0.device)[t_atoms].view(-1, 1)
        disp = sigma * noise
        target = wrapped_normal.score(disp, sigma.expand_as(disp)) / self.lam.to(frac0.device)[t_atoms].sqrt().view(-1, 1)
        return torch.remainder(frac0 + disp, 1.0), target

    def score_from_output(self, output: torch.Tensor, t: int) -> torch.Tensor:
        return output * float(self.lam[t]) ** 0.5

    def step_size(self, t: int, t_prev: int) -> float:
        """σ_t² − σ_{t_prev}²: the score's coefficient in the predictor step."""
        return float(self.sigma[t]) ** 2 - float(self.sigma[t_prev]) ** 2

    def posterior_variance(self, t: int, t_prev: int) -> float:
        """σ̃² = σ_{t_prev}²·(σ_t² − σ_{t_prev}²)/σ_t² of the step t → t_prev."""
        return float(self.sigma[t_prev]) ** 2 * self.step_size(t, t_prev) / float(self.sigma[t]) ** 2

    def predictor_step(self, frac_t: torch.Tensor, score: torch.Tensor, t: int, t_prev: int,
                       noise: torch.Tensor) -> torch.Tensor:
        """Reverse-SDE step σ_t → σ_{t_prev}."""
        out = frac_t + self.step_size(t, t_prev) * score + self.posterior_variance(t, t_prev) ** 0.5 * noise
        return torch.remainder(out, 1.0)

    def corrector_step(self, frac_t: torch.Tensor, score: torch.Tensor, t: int, noise: torch.Tensor, step_lr: float) -> torch.Tensor:
        """Langevin step with size step_lr·(σ_t/σ_1)²."""
        step = step_lr * (float(self.sigma[t]) / float(self.sigma[1])) ** 2
        return torch.remainder(frac_t + step * score + (2 * step) ** 0.5 * noise, 1.0)


@lru_cache(maxsize=8)
def _lambda_table(num_steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    lam = torch.ones(num_steps + 1)
    lam[1:] = wrapped_normal.expected_squared_score(geometric_sigmas(num_steps, sigma_min, sigma_max)[1:]).float()
    return lam


@dataclass
class DiffusionConfig(Config):
    """The diffusion schedule (shared by DAO-G and the DAO-P that guides it) and the corrector: its step size
    ``step_lr`` (training on a benchmark dataset records that dataset's official value, see
    docs/official.md) and whether its last step (t → 0) adds Langevin noise (``final_corrector_noise``;
    off, as in the official sampler)."""

    section: ClassVar[str] = "diffusion"

    num_steps: int = 1000
    cosine_s: float = 0.008
    beta_min: float = 0.0  # the cosine schedule's β clip; official: [1e-4, 0.9999] (docs/official.md)
    beta_max: float = 0.999
    sigma_min: float = 0.005
    sigma_max: float = 0.5
    step_lr: float = 1e-5
    final_corrector_noise: bool = False

    def validate(self) -> None:
        if self.num_steps < 2:
            raise ConfigError(f"config diffusion.num_steps: at least 2, got {self.num_steps}")
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"config diffusion: need 0 < sigma_min < sigma_max, got {self.sigma_min}, {self.sigma_max}")
        if not self.step_lr >= 0 or self.cosine_s < 0:
            raise ConfigError("config diffusion: step_lr and cosine_s must be ≥ 0")
        if not 0 <= self.beta_min < self.beta_max < 1:
            raise ConfigError(f"config diffusion: need 0 ≤ beta_min < beta_max < 1, got {self.beta_min}, "
                              f"{self.beta_max}")
