"""The sampling loop: the only one in DAO, for every process (docs/design.md, 'Module map').

The network predicts, the process owns the prior, the time grid and each reverse step, and guidance terms
act through :class:`~dao.diffusion.guidance.Guide`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from dao.crystal import CrystalBatch
from dao.diffusion.base import Network, NoiseSource, Process
from dao.diffusion.guidance import GuidanceTerm, Guide


@torch.no_grad()
def sample(process: Process, network: Network, template: CrystalBatch, num_steps: int | None = None,
           guidance: Sequence[GuidanceTerm] = (), generator: torch.Generator | None = None,
           progress: bool = False, start: float | None = None) -> CrystalBatch:
    """Sample (F, L) for the atom types of ``template`` in ``num_steps`` (default: the process's) steps.

    ``start`` in (0, 1) refines ``template`` itself instead (its coordinates and lattice are the input):
    the run begins at ``process.add_noise(template, start)`` and takes the last ≈ start·num_steps steps
    of the grid, so a small start keeps the input's arrangement and a start of 1 forgets it.

    Returns a new batch with F in [0, 1). Runs without autograd; a guidance term enables gradients itself
    on detached copies of the state. Random numbers come from ``generator`` alone (on its device), so a
    seed reproduces the samples."""
    from tqdm.auto import tqdm

    rng = NoiseSource(generator, template.atom_types.device)
    guide = Guide(process, guidance)
    steps = process.resolve_steps(num_steps)
    if start is None:
        state, grid = process.prior(template, rng), process.schedule(steps, template)
    else:
        state, grid = process.add_noise(template, start, rng), process.schedule(steps, template, start=start)
    for entry in tqdm(grid, desc="sampling", disable=not progress, leave=False, unit="step"):
        state = process.step(network, guide, state, entry, rng)
    return state.replace(frac=state.frac.clone(), lattice=state.lattice.clone())
