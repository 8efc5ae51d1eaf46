"""Crysformer attention with periodic, O(3)-invariant edge features — direct and factored forms.

Edge feature of the ordered pair (i, j) in one crystal (docs/design.md, 'Crysformer'):

    raw_ij = [vec(L·Lᵀ) (9); sin(2πkΔf_a), cos(2πkΔf_a) for a = 1..3, k = 0..K−1],  Δf = f_j − f_i
    e_ij   = LayerNorm(raw_ij) = γ ⊙ (raw_ij − μ_ij) / σ_ij + β

and attention of atom i over j uses k_ij = W_k h_j + W_e e_ij, v_ij = W_v h_j + W_e e_ij.

The *direct* form materialises e_ij (B×N×N×(9+6K)). The *factored* form is the same math without it:

* the logit term q_i·W_e e_ij = u_i·e_ij with u_i = W_eᵀ q_i (per head), and
  sin(θ_j − θ_i) = s_j c_i − c_j s_i, cos(θ_j − θ_i) = c_j c_i + s_j s_i turn u_i·raw_ij into one batched
  matrix product of per-atom features;
* μ_ij needs only Σ sin and Σ cos (again products of per-atom features) and σ_ij follows from
  Σ raw² = ‖vec(LLᵀ)‖² + 3K, since sin² + cos² = 1;
* the value term Σ_j α_ij W_e e_ij = W_e Σ_j α_ij e_ij, and Σ_j (α_ij/σ_ij) raw_ij factorises the same way.

Both forms are exact; ``tests/nn/test_crysformer.py`` checks that they agree.
"""
from __future__ import annotations

import math

import torch
from torch import nn

LN_EPS = 1e-5


def fourier_angles(frac: torch.Tensor, num_freqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-atom sin/cos of 2πk·f for k = 0..K−1 on each axis: two tensors (..., 3K), axis-major."""
    k = torch.arange(num_freqs, device=frac.device, dtype=frac.dtype)
    theta = 2 * math.pi * frac[..., :, None] * k  # (..., 3, K)
    theta = theta.flatten(-2)
    return torch.sin(theta), torch.cos(theta)


def edge_raw_direct(frac: torch.Tensor, gram: torch.Tensor, num_freqs: int) -> torch.Tensor:
    """Materialised raw edge features (B, N, N, 9 + 6K) for padded coordinates (B, N, 3)."""
    b, n, _ = frac.shape
    delta = (frac[:, None, :, :] - frac[:, :, None, :]) % 1.0  # [b, i, j] = f_j - f_i
    k = torch.arange(num_freqs, device=frac.device, dtype=frac.dtype)
    theta = (2 * math.pi * delta[..., None] * k).flatten(-2)  # (B, N, N, 3K)
    g = gram.reshape(b, 1, 1, 9).expand(b, n, n, 9)
    return torch.cat([g, torch.sin(theta), torch.cos(theta)], dim=-1)


class CrystalAttention(nn.Module):
    """Multi-head attention of each atom over all atoms of its own crystal (padded dense layout)."""

    def __init__(self, hidden: int, heads: int, num_freqs: int, factored: bool = True) -> None:
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        self.hidden, self.heads, self.num_freqs = hidden, heads, num_freqs
        self.head_dim = hidden // heads
        self.edge_dim = 9 + 6 * num_freqs
        self.factored = factored
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.edge_norm = nn.LayerNorm(self.edge_dim, eps=LN_EPS)
        self.edge = nn.Linear(self.edge_dim, hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, H, N, d)
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, h: torch.Tensor, mask: torch.Tensor, frac: torch.Tensor, gram: torch.Tensor,
                fourier: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """h (B, N, D), mask (B, N) bool, frac (B, N, 3), gram = L·Lᵀ (B, 3, 3) -> (B, N, D)."""
        if self.factored:
            out = self._factored(h, mask, frac, gram, fourier)
        else:
            out = self._direct(h, mask, frac, gram)
        return self.out(out)

    def _direct(self, h, mask, frac, gram):
        b, n, _ = h.shape
        e = self.edge(self.edge_norm(edge_raw_direct(frac, gram, self.num_freqs)))  # (B, N, N, D)
        e = e.view(b, n, n, self.heads, self.head_dim).permute(0, 3, 1, 2, 4)  # (B, H, i, j, d)
        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        logits = torch.einsum("bhid,bhijd->bhij", q, k[:, :, None, :, :] + e) / math.sqrt(self.head_dim)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhij,bhijd->bhid", attn, v[:, :, None, :, :] + e)
        return out.transpose(1, 2).reshape(b, n, self.hidden)

    def _factored(self, h, mask, frac, gram, fourier):
        b, n, _ = h.shape
        nk = 3 * self.num_freqs
        de = self.edge_dim
        s, c = fourier if fourier is not None else fourier_angles(frac, self.num_freqs)  # (B, N, 3K)
        g = gram.reshape(b, 9)
        gamma, beta = self.edge_norm.weight, self.edge_norm.bias
        # LayerNorm statistics of raw_ij from per-atom products.
        sum_sin = torch.bmm(c, s.transpose(1, 2)) - torch.bmm(s, c.transpose(1, 2))  # [i, j] = Σ sin(θ_j − θ_i)
        sum_cos = torch.bmm(c, c.transpose(1, 2)) + torch.bmm(s, s.transpose(1, 2))
        mu = (g.sum(-1)[:, None, None] + sum_sin + sum_cos) / de  # (B, N, N)
        sumsq = (g * g).sum(-1)[:, None, None] + float(nk)
        inv_sigma = torch.rsqrt((sumsq / de - mu * mu).clamp_min(0.0) + LN_EPS)  # (B, N, N)

        q, k, v = self._split(self.q(h)), self._split(self.k(h)), self._split(self.v(h))
        w_e = self.edge.weight.view(self.heads, self.head_dim, de)  # per head (d, De)
        u = torch.einsum("bhid,hde->bhie", q, w_e)  # (B, H, N, De)
        ug = u * gamma
        w_g, w_s, w_c = ug[..., :9], ug[..., 9:9 + nk], ug[..., 9 + nk:]
        s_, c_ = s[:, None], c[:, None]  # (B, 1, N, 3K)
        p = torch.cat([w_s * c_ + w_c * s_, w_c * c_ - w_s * s_], dim=-1)  # (B, H, N, 6K)
        z = torch.cat([s, c], dim=-1)[:, None]  # (B, 1, N, 6K)
        dot_raw = torch.matmul(p, z.transpose(-1, -2)) + (w_g * g[:, None, None, :]).sum(-1, keepdim=True)
        edge_logit = inv_sigma[:, None] * (dot_raw - mu[:, None] * ug.sum(-1, keepdim=True)) + (u * beta).sum(-1, keepdim=True)
        logits = (torch.matmul(q, k.transpose(-1, -2)) + edge_logit) / math.sqrt(self.head_dim)
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(logits, dim=-1)  # (B, H, N, N)

        omega = attn * inv_sigma[:, None]  # α_ij / σ_ij
        om_s = torch.matmul(omega, s[:, None])  # Σ_j ω s_j  (B, H, N, 3K)
        om_c = torch.matmul(omega, c[:, None])
        agg_sin = c_ * om_s - s_ * om_c  # Σ_j ω sin(θ_j − θ_i)
        agg_cos = c_ * om_c + s_ * om_s
        agg_g = omega.sum(-1, keepdim=True) * g[:, None, None, :]
        om_mu = (omega * mu[:, None]).sum(-1, keepdim=True)
        agg = torch.cat([agg_g, agg_sin, agg_cos], dim=-1) - om_mu  # Σ_j ω (raw_ij − μ_ij)
        agg = gamma * agg + beta * attn.sum(-1, keepdim=True)  # Σ_j α_ij e_ij
        edge_out = torch.einsum("bhie,hde->bhid", agg, w_e)
        out = torch.matmul(attn, v) + edge_out
        return out.transpose(1, 2).reshape(b, n, self.hidden)
