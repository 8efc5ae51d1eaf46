"""Noise schedules: cosine β for the lattice DDPM, geometric σ for wrapped-normal coordinates."""
from __future__ import annotations

import math

import torch


def cosine_alpha_bar(num_steps: int, s: float = 0.008, beta_min: float = 0.0, beta_max: float = 0.999
                     ) -> torch.Tensor:
    """ᾱ_t for t = 0..T (ᾱ_0 = 1), Nichol & Dhariwal's cosine schedule with β_t clipped to
    [beta_min, beta_max] (ours: [0, 0.999]; the official DAO/DiffCSP code: [1e-4, 0.9999])."""
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(min=beta_min, max=beta_max)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


def geometric_sigmas(num_steps: int, sigma_min: float = 0.005, sigma_max: float = 0.5) -> torch.Tensor:
    """σ_t for t = 0..T: σ_0 = 0, then geometric from σ_min (t = 1) to σ_max (t = T)."""
    sig = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_steps, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dtype=torch.float64), sig])
