"""Node and time embeddings for Crysformer."""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources

import torch
from torch import nn



@lru_cache(maxsize=1)
def atom_feature_table() -> torch.Tensor:
    """The fixed 92-dim elemental descriptor table (row Z, row 0 unused), see tools/make_atom_features.py."""
    data = json.loads(resources.files("dao.resources").joinpath("atom_features.json").read_text())
    table = torch.zeros(data["max_z"] + 1, data["dim"])
    for z, vec in data["features"].items():
        table[int(z)] = torch.tensor(vec, dtype=torch.float32)
    return table


class AtomEmbedding(nn.Module):
    """Linear map of the fixed 92-dim descriptor, plus a learned per-element offset.

    The descriptor table (CGCNN categories) maps Dy, Ho and Er to the same vector; the learned offset
    (initialised to zero) keeps every element distinguishable without changing the initial model.
    """

    def __init__(self, hidden: int) -> None:
        super().__init__()
        table = atom_feature_table()
        self.register_buffer("table", table, persistent=False)
        self.proj = nn.Linear(table.shape[1], hidden)
        self.offset = nn.Embedding(table.shape[0], hidden)
        nn.init.zeros_(self.offset.weight)

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        return self.proj(self.table[atomic_numbers]) + self.offset(atomic_numbers)


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of diffusion time t ∈ [0, 1] (scaled to [0, 1000])."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / max(half - 1, 1))
    args = (t.float() * scale)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
