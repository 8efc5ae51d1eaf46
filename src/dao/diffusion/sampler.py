"""Predictor–corrector sampling for DAO-G (DESIGN §3), with optional guidance terms.

The loop is the only sampling loop in DAO: the network predicts, the processes own the steps, and
guidance (e.g. DAO-P energy guidance) is a term injected into the predictor step.
"""
from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch

from dao.crystal import CrystalBatch
from dao.diffusion.processes import LatticeDDPM, WrappedNormalCoords

#: network(batch, t_continuous (B,)) -> (lattice ε prediction (B,3,3), coordinate output (Nt,3))
Denoiser = Callable[[CrystalBatch, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


class GuidanceTerm(Protocol):
    """An energy whose gradient steers the predictor step: x ← x − scale·σ̃²·∂E/∂x."""

    scale: float

    def gradients(self, batch: CrystalBatch, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (∂E/∂F (Nt, 3), ∂E/∂L (B, 3, 3)) of the summed energy at continuous times t (B,)."""
        ...


def timesteps(num_train_steps: int, num_sample_steps: int | None) -> list[int]:
    """Descending integer times from T to 1, evenly respaced to ``num_sample_steps`` (always ending at 0)."""
    n = num_train_steps if not num_sample_steps else min(num_sample_steps, num_train_steps)
    ts = torch.linspace(num_train_steps, 1, n).round().long().unique().flip(0).tolist()
    return ts


def _guidance_gradients(guidance: Sequence[GuidanceTerm], batch: CrystalBatch, t: torch.Tensor):
    grads_f, grads_l = [], []
    for term in guidance:
        gf, gl = term.gradients(batch, t)
        grads_f.append(term.scale * gf)
        grads_l.append(term.scale * gl)
    return sum(grads_f), sum(grads_l)


@torch.no_grad()
def sample_pc(
    denoiser: Denoiser,
    template: CrystalBatch,
    coords: WrappedNormalCoords,
    lattice: LatticeDDPM,
    num_steps: int | None = None,
    step_lr: float = 1e-5,
    corrector: bool = True,
    guidance: Sequence[GuidanceTerm] = (),
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> CrystalBatch:
    """Sample (F, L) for the atom types of ``template``. Returns a new batch with F in [0, 1).

    Runs without autograd; a guidance term that needs gradients enables them itself
    (``torch.enable_grad()``) on detached copies of the current state.
    """
    from tqdm.auto import tqdm

    device = template.atom_types.device
    T = coords.num_steps

    def randn(shape):
        return torch.randn(shape, generator=generator, device="cpu" if generator is None else generator.device).to(device)

    nt, b = template.atom_types.shape[0], template.num_crystals
    frac = torch.rand((nt, 3), generator=generator, device="cpu" if generator is None else generator.device).to(device)
    lat = randn((b, 3, 3))
    ts = timesteps(T, num_steps)
    # respaced schedules clip the predicted clean lattice: no entry beyond 4× the edge of a cube of
    # 30 Å³ per atom (≈ 64× a typical volume; the full schedule is left exactly as trained)
    clip = 4.0 * (30.0 * template.num_atoms.to(device).double()) ** (1 / 3) if len(ts) < T else None
    for i, t in enumerate(tqdm(ts, desc="sampling", disable=not progress, leave=False, unit="step")):
        t_prev = ts[i + 1] if i + 1 < len(ts) else 0
        tc = torch.full((b,), t / T, device=device)
        if corrector:
            batch = template.replace(frac=frac, lattice=lat)
            _, out_f = denoiser(batch, tc)
            frac = coords.corrector_step(frac, coords.score_from_output(out_f, t), t, randn((nt, 3)), step_lr)
        batch = template.replace(frac=frac, lattice=lat)
        eps_l, out_f = denoiser(batch, tc)
        grad_f = grad_l = None
        scale = 1.0 if guidance else 0.0
        if guidance:
            grad_f, grad_l = _guidance_gradients(guidance, batch, tc)
        score = coords.score_from_output(out_f, t)
        frac = coords.predictor_step(frac, score, t, t_prev, randn((nt, 3)), grad_f, scale)
        lat = lattice.step(lat, eps_l, t, t_prev, randn((b, 3, 3)), grad_l, scale, clip=clip)
    return template.replace(frac=frac.clone(), lattice=lat.clone())
