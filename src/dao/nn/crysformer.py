"""Crysformer: the graph Transformer shared by DAO-G and DAO-P (docs/design.md, 'Crysformer')."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable, NamedTuple

import torch
from torch import nn

from dao.config import Config
from dao.crystal import CrystalBatch
from dao.errors import ConfigError
from dao.nn.attention import CrystalAttention, fourier_angles
from dao.nn.embeddings import ATOM_TABLES, AtomEmbedding, sinusoidal_embedding

#: the output heads a Crysformer can carry: lattice (B, 3, 3), coordinates (N, 3), a scalar per crystal
HEADS = ("lattice", "coord", "energy")


@dataclass
class CrysformerConfig(Config):
    """Every size is a config value. The published model: hidden 384, 12 layers, 8 heads (25.2 M)."""

    section: ClassVar[str] = "model"

    hidden: int = 384
    layers: int = 12
    heads: int = 8
    num_freqs: int = 128
    time_dim: int = 256
    ffn_mult: int = 4
    factored_edges: bool = True
    heads_out: list[str] = field(default_factory=lambda: ["lattice", "coord"])
    # Architecture switches; the defaults are ours, ``OFFICIAL_ARCHITECTURE`` the official DAO code's
    # (docs/convert.md). Checkpoints without these keys load with the defaults, i.e. unchanged.
    atom_table: str = "dao"  # "dao" (ours) or "cgcnn" (the official CGCNN atom_init table)
    atom_offset: bool = True  # learned per-element offset on top of the table (official: none)
    gate_bias: bool = True  # bias of the gated residual's Linear(3d, 1) (official: bias=False)
    final_norm: bool = True  # LayerNorm after the last layer (official decoder: ln: false)

    def validate(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.num_freqs, self.time_dim, self.ffn_mult) < 1:
            raise ConfigError("config model: hidden, layers, heads, num_freqs, time_dim and ffn_mult must be ≥ 1")
        if self.hidden % self.heads:
            raise ConfigError(f"config model: hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        if self.atom_table not in ATOM_TABLES:
            raise ConfigError(f"config model.atom_table: {self.atom_table!r} is not one of {', '.join(ATOM_TABLES)}")
        unknown = sorted(set(self.heads_out) - set(HEADS))
        if unknown:
            raise ConfigError(f"config model.heads_out: unknown head(s) {', '.join(unknown)} (known: {', '.join(HEADS)})")


#: the switches that give the official DAO architecture (see docs/convert.md)
OFFICIAL_ARCHITECTURE = {"atom_table": "cgcnn", "atom_offset": False, "gate_bias": False, "final_norm": False}


def with_heads(cfg: CrysformerConfig, heads: Iterable[str]) -> CrysformerConfig:
    """A copy of ``cfg`` whose output heads include ``heads`` (a model's required heads)."""
    out = CrysformerConfig.from_dict(cfg.to_dict())
    out.heads_out = sorted(set(out.heads_out) | set(heads))
    return out


class CrysformerOutput(NamedTuple):
    lattice: torch.Tensor | None  # (B, 3, 3), O(3)-equivariant
    coord: torch.Tensor | None  # (Nt, 3), invariant
    energy: torch.Tensor | None  # (B,), invariant
    graph: torch.Tensor  # (B, D) pooled crystal feature
    node: torch.Tensor  # (Nt, D)


class GatedResidual(nn.Module):
    """out = g·x + (1 − g)·m with one gate g = sigmoid(w·[x; m; x − m]) per atom."""

    def __init__(self, hidden: int, bias: bool = True) -> None:
        super().__init__()
        self.gate = nn.Linear(3 * hidden, 1, bias=bias)

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([x, m, x - m], dim=-1)))
        return g * x + (1 - g) * m


class CrysformerLayer(nn.Module):
    def __init__(self, cfg: CrysformerConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.norm_attn = nn.LayerNorm(d)
        self.attn = CrystalAttention(d, cfg.heads, cfg.num_freqs, factored=cfg.factored_edges)
        self.gate_attn = GatedResidual(d, cfg.gate_bias)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_mult * d), nn.GELU(), nn.Linear(cfg.ffn_mult * d, d))
        self.gate_ffn = GatedResidual(d, cfg.gate_bias)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, frac: torch.Tensor, gram: torch.Tensor,
                fourier: torch.Tensor | None) -> torch.Tensor:
        h = self.gate_attn(h, self.attn(self.norm_attn(h), mask, frac, gram, fourier))
        return self.gate_ffn(h, self.ffn(self.norm_ffn(h)))


def to_dense(x: torch.Tensor, batch: torch.Tensor, num_atoms: torch.Tensor, n_max: int | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scatter flat per-atom rows (Nt, ...) into a padded (B, Nmax, ...) tensor; returns (dense, mask, pos)."""
    b = num_atoms.shape[0]
    n_max = int(num_atoms.max()) if n_max is None else n_max
    offsets = torch.cumsum(num_atoms, 0) - num_atoms
    pos = torch.arange(batch.shape[0], device=x.device) - offsets[batch]
    dense = x.new_zeros((b, n_max) + tuple(x.shape[1:]))
    dense[batch, pos] = x
    mask = torch.zeros(b, n_max, dtype=torch.bool, device=x.device)
    mask[batch, pos] = True
    return dense, mask, pos


class Crysformer(nn.Module):
    """Crysformer backbone with lattice-noise, coordinate-score and energy heads.

    ``forward(batch, t)`` takes a :class:`CrystalBatch` (atom types, fractional coordinates, lattices)
    and diffusion times ``t`` ∈ [0, 1] per crystal, and returns :class:`CrysformerOutput`.
    """

    def __init__(self, cfg: CrysformerConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        d = cfg.hidden
        self.atom_embedding = AtomEmbedding(d, cfg.atom_table, cfg.atom_offset)
        self.input = nn.Linear(d + cfg.time_dim, d)
        self.layers = nn.ModuleList([CrysformerLayer(cfg) for _ in range(cfg.layers)])
        self.final_norm = nn.LayerNorm(d) if cfg.final_norm else None
        heads = set(cfg.heads_out)
        self.lattice_head = nn.Linear(d, 9, bias=False) if "lattice" in heads else None
        self.coord_head = nn.Linear(d, 3, bias=False) if "coord" in heads else None
        self.energy_head = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1)) if "energy" in heads else None

    def forward(self, batch: CrystalBatch, t: torch.Tensor) -> CrysformerOutput:
        cfg = self.cfg
        temb = sinusoidal_embedding(t, cfg.time_dim)[batch.batch]
        h = self.input(torch.cat([self.atom_embedding(batch.atom_types), temb], dim=-1))
        h, mask, pos = to_dense(h, batch.batch, batch.num_atoms)
        frac, _, _ = to_dense(batch.frac, batch.batch, batch.num_atoms, h.shape[1])
        gram = batch.lattice @ batch.lattice.transpose(1, 2)
        fourier = fourier_angles(frac, cfg.num_freqs) if cfg.factored_edges else None
        for layer in self.layers:
            h = layer(h, mask, frac, gram, fourier)
        if self.final_norm is not None:
            h = self.final_norm(h)
        node = h[batch.batch, pos]
        m = mask.unsqueeze(-1).to(h.dtype)
        graph = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        lattice = coord = energy = None
        if self.lattice_head is not None:
            lattice = self.lattice_head(graph).view(-1, 3, 3) @ batch.lattice
        if self.coord_head is not None:
            coord = self.coord_head(node)
        if self.energy_head is not None:
            energy = self.energy_head(graph).squeeze(-1)
        return CrysformerOutput(lattice, coord, energy, graph, node)
