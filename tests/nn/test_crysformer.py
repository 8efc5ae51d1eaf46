"""Crysformer math: the factored edge projection equals the direct form; O(3), periodic and
permutation symmetries of the heads."""
from __future__ import annotations


import pytest
import torch

from dao.crystal import CrystalBatch
from dao.nn.crysformer import Crysformer, CrysformerConfig


def random_rotation(gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:  # test improper rotations too: flip one axis half of the time
        q[:, 0] = -q[:, 0]
    return q if torch.rand(1, generator=gen) < 0.5 else q @ torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))


def make_batch(gen: torch.Generator) -> CrystalBatch:
    comps = [[8, 8, 26, 26, 26], [3, 9], [11, 17, 11, 17, 11, 17, 11, 17], [6]]
    b = CrystalBatch.from_compositions(comps)
    lat = torch.eye(3, dtype=torch.float64) * 4 + torch.randn(len(comps), 3, 3, generator=gen, dtype=torch.float64)
    return b.replace(frac=torch.rand(b.frac.shape, generator=gen, dtype=torch.float64), lattice=lat)


def make_model(factored: bool = True, seed: int = 0) -> Crysformer:
    torch.manual_seed(seed)
    cfg = CrysformerConfig(hidden=32, layers=2, heads=4, num_freqs=12, time_dim=16, factored_edges=factored,
                           heads_out=["lattice", "coord", "energy"])
    model = Crysformer(cfg).double().eval()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters exercise every term of the factorisation
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def test_factored_edge_projection_equals_direct(gen):
    batch = make_batch(gen)
    t = torch.rand(batch.num_crystals, generator=gen, dtype=torch.float64)
    fact, direct = make_model(True), make_model(False)
    direct.load_state_dict(fact.state_dict())
    a, b = fact(batch, t), direct(batch, t)
    for x, y in [(a.lattice, b.lattice), (a.coord, b.coord), (a.energy, b.energy), (a.node, b.node)]:
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9)


def test_factored_gradients_equal_direct(gen):
    batch = make_batch(gen)
    t = torch.rand(batch.num_crystals, generator=gen, dtype=torch.float64)
    fact, direct = make_model(True), make_model(False)
    direct.load_state_dict(fact.state_dict())
    fact(batch, t).energy.sum().backward()
    direct(batch, t).energy.sum().backward()
    for (name, p), q in zip(fact.named_parameters(), direct.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_rotation_invariance_and_lattice_equivariance(gen):
    model = make_model()
    batch = make_batch(gen)
    t = torch.rand(batch.num_crystals, generator=gen, dtype=torch.float64)
    out = model(batch, t)
    for _ in range(3):
        rot = random_rotation(gen)
        rotated = batch.replace(lattice=batch.lattice @ rot.T)  # X = F L → X Rᵀ
        out_r = model(rotated, t)
        torch.testing.assert_close(out_r.energy, out.energy, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out_r.coord, out.coord, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(out_r.lattice, out.lattice @ rot.T, rtol=1e-9, atol=1e-9)


def test_periodic_translation_invariance(gen):
    model = make_model()
    batch = make_batch(gen)
    t = torch.rand(batch.num_crystals, generator=gen, dtype=torch.float64)
    out = model(batch, t)
    shift = torch.rand(batch.num_crystals, 3, generator=gen, dtype=torch.float64)[batch.batch]
    for frac in [(batch.frac + shift) % 1.0, batch.frac + 3.0]:  # common translation; integer lattice shift
        out_t = model(batch.replace(frac=frac), t)
        torch.testing.assert_close(out_t.energy, out.energy, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(out_t.coord, out.coord, rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(out_t.lattice, out.lattice, rtol=1e-8, atol=1e-8)


def test_permutation_equivariance(gen):
    model = make_model()
    batch = make_batch(gen)
    t = torch.rand(batch.num_crystals, generator=gen, dtype=torch.float64)
    out = model(batch, t)
    # permute atoms within each crystal (the batch stays grouped by crystal)
    perm = torch.cat([torch.nonzero(batch.batch == i).flatten()[torch.randperm(int(n), generator=gen)]
                      for i, n in enumerate(batch.num_atoms)])
    out_p = model(batch.replace(atom_types=batch.atom_types[perm], frac=batch.frac[perm]), t)
    torch.testing.assert_close(out_p.energy, out.energy, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_p.lattice, out.lattice, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out_p.coord, out.coord[perm], rtol=1e-9, atol=1e-9)


def test_crystals_in_a_batch_do_not_interact(gen):
    model = make_model()
    batch = make_batch(gen)
    t = torch.rand(batch.num_crystals, generator=gen, dtype=torch.float64)
    out = model(batch, t)
    first = batch.batch == 0
    single = CrystalBatch(batch.atom_types[first], batch.frac[first], batch.lattice[:1], batch.num_atoms[:1],
                          torch.zeros(int(first.sum()), dtype=torch.long))
    out1 = model(single, t[:1])
    torch.testing.assert_close(out1.coord, out.coord[first], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out1.energy, out.energy[:1], rtol=1e-9, atol=1e-9)


def test_published_size_is_about_25m_parameters():
    model = Crysformer(CrysformerConfig(hidden=384, layers=12, heads=8, heads_out=["lattice", "coord", "energy"]))
    n = sum(p.numel() for p in model.parameters())
    assert 23e6 < n < 28e6, n
