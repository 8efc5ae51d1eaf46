"""Node and time embeddings for Crysformer."""
from __future__ import annotations

import json
import math
from functools import lru_cache
from importlib import resources

import torch
from torch import nn

#: the elemental descriptor tables a Crysformer can use (``CrysformerConfig.atom_table``): ours, built from
#: pymatgen by tools/make_atom_features.py, and the official DAO code's CGCNN table (atom_init.json categories)
ATOM_TABLES = {"dao": "atom_features.json", "cgcnn": "atom_features_cgcnn.json"}


@lru_cache(maxsize=len(ATOM_TABLES))
def atom_feature_table(name: str = "dao") -> torch.Tensor:
    """A fixed 92-dim elemental descriptor table (row Z, row 0 all zeros): ``"dao"`` (ours, see
    tools/make_atom_features.py) or ``"cgcnn"`` (the official DAO code's CGCNN table, stored as set bits)."""
    if name not in ATOM_TABLES:
        raise ValueError(f"unknown atom table {name!r} (known: {', '.join(ATOM_TABLES)})")
    data = json.loads(resources.files("dao.resources").joinpath(ATOM_TABLES[name]).read_text())
    table = torch.zeros(data["max_z"] + 1, data["dim"])
    if "set_bits" in data:
        for z, bits in data["set_bits"].items():
            table[int(z), bits] = 1.0
    else:
        for z, vec in data["features"].items():
            table[int(z)] = torch.tensor(vec, dtype=torch.float32)
    return table


class AtomEmbedding(nn.Module):
    """Linear map of a fixed 92-dim descriptor, plus (``offset=True``) a learned per-element offset.

    Our descriptor table maps Dy, Ho and Er to the same vector; the learned offset (initialised to zero)
    keeps every element distinguishable without changing the initial model. The official architecture is
    ``table="cgcnn", offset=False``.
    """

    def __init__(self, hidden: int, table: str = "dao", offset: bool = True) -> None:
        super().__init__()
        features = atom_feature_table(table)
        self.register_buffer("table", features, persistent=False)
        self.proj = nn.Linear(features.shape[1], hidden)
        self.offset = nn.Embedding(features.shape[0], hidden) if offset else None
        if self.offset is not None:
            nn.init.zeros_(self.offset.weight)

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        out = self.proj(self.table[atomic_numbers])
        return out if self.offset is None else out + self.offset(atomic_numbers)


def sinusoidal_embedding(t: torch.Tensor, dim: int, scale: float = 1000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of diffusion time t ∈ [0, 1] (scaled to [0, 1000]).

    Computed in float32, or in float64 when ``t`` is float64 (a float64 model then matches the official
    integer-time embedding to rounding)."""
    dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=dtype) / max(half - 1, 1))
    args = (t.to(dtype) * scale)[:, None] * freqs[None, :]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
