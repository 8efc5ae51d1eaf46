"""The learned template ranker: it learns, it round-trips, it reorders proposals, bad files are one error."""
from __future__ import annotations

import numpy as np
import pytest

from dao.formula import parse_formula
from dao.templates import TemplateIndex
from dao.templates.ranker import (FEATURES, TemplateRanker, TemplateRankerError, default_ranker_path, listwise_loss,
                                  top1_rate)
from tests.conftest import small_structures, write_csv


def _groups(rng, n_groups=60, size=6):
    """Groups of noisy candidates where the true one (at a random position) has a low first feature."""
    xs, ys = [], []
    for _ in range(n_groups):
        x = rng.normal(size=(size, len(FEATURES)))
        y = np.zeros(size)
        y[rng.integers(size)] = 1.0
        x[:, 0] -= 3.0 * y
        xs.append(x), ys.append(y)
    return xs, ys


@pytest.mark.parametrize("listwise", [False, True])
def test_ranker_learns_which_candidate_is_right(listwise):
    rng = np.random.default_rng(0)
    xs, ys = _groups(rng)
    groups = np.repeat(np.arange(len(xs)), [len(x) for x in xs]) if listwise else None
    model = TemplateRanker.fit(np.concatenate(xs), np.concatenate(ys), groups=groups, epochs=150)
    tx, ty = _groups(np.random.default_rng(1))
    learned = top1_rate([model.score(x) for x in tx], ty)
    first = top1_rate([-np.arange(len(x), dtype=float) for x in tx], ty)
    assert learned >= 0.9 and first < 0.4


def test_listwise_loss_is_the_softmax_cross_entropy_of_the_right_candidates():
    torch = pytest.importorskip("torch")
    logit = torch.tensor([2.0, 0.5, -1.0, 0.3, 0.1, 4.0, -3.0], dtype=torch.float64)
    labels = torch.tensor([0, 1, 1, 0, 0, 0, 0], dtype=torch.float64)
    group = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # group 1 has no right candidate: no signal, left out
    p0 = torch.softmax(logit[:3], 0)
    want = -torch.log(p0[1] + p0[2])
    assert torch.allclose(listwise_loss(logit, labels, group), want)
    labels2 = labels.clone()
    labels2[6] = 1.0  # group 2's right candidate is 7 logits behind: its term is −log softmax, averaged in
    want2 = (want - torch.log_softmax(logit[5:], 0)[1]) / 2
    assert torch.allclose(listwise_loss(logit, labels2, group), want2)
    shifted = logit + torch.tensor([5.0, 5.0, 5.0, -2.0, -2.0, 100.0, 100.0], dtype=torch.float64)
    assert torch.allclose(listwise_loss(shifted, labels2, group), want2)  # a constant per group changes nothing


def test_ranker_file_round_trip_and_bad_files(tmp_path):
    rng = np.random.default_rng(0)
    xs, ys = _groups(rng, n_groups=10)
    model = TemplateRanker.fit(np.concatenate(xs), np.concatenate(ys), epochs=20, meta='{"k": 1}')
    model.save(tmp_path / "r.npz")
    again = TemplateRanker.load(tmp_path / "r.npz")
    np.testing.assert_allclose(again.score(xs[0]), model.score(xs[0]), rtol=0, atol=1e-12)
    assert again.meta == '{"k": 1}'
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    for path in (tmp_path / "bad.npz", tmp_path / "missing.npz"):
        with pytest.raises(TemplateRankerError, match="cannot read template ranker"):
            TemplateRanker.load(path)
    arrays = dict(np.load(tmp_path / "r.npz"))
    arrays["features"] = arrays["features"][:-1]
    np.savez(tmp_path / "other.npz", **arrays)
    with pytest.raises(TemplateRankerError, match="another format or feature set"):
        TemplateRanker.load(tmp_path / "other.npz")


def _prefers_late(rank_weight: float) -> TemplateRanker:
    """A hand-set ranker whose score is rank_weight × log(1 + similarity rank)."""
    n = len(FEATURES)
    w1 = np.zeros((n, 1))
    w1[FEATURES.index("log_rank"), 0] = 1.0
    return TemplateRanker(np.zeros(n), np.ones(n), w1, np.zeros(1), np.array([rank_weight]), 0.0)


def test_index_with_a_ranker_orders_by_its_scores_deterministically(tmp_path):
    index = TemplateIndex.build([write_csv(tmp_path / "t.csv", small_structures())])
    plain = [c.info["template_formula"] for c in index.propose(parse_formula("KBr"), limit=8)]
    assert len(plain) == 2
    reverse = index.with_ranker(_prefers_late(5.0))
    ranked = reverse.propose(parse_formula("KBr"), limit=8)
    assert [c.info["template_formula"] for c in ranked] == plain[::-1]
    assert all(0 < c.prior < 1 for c in ranked) and ranked[0].prior > ranked[1].prior
    again = reverse.propose(parse_formula("KBr"), limit=8)
    assert [c.structure for c in again] == [c.structure for c in ranked]
    top = reverse.propose(parse_formula("KBr"), limit=1)
    assert [c.info["template_formula"] for c in top] == plain[-1:]  # the limit applies after reordering


def test_scan_skip_leaves_entries_out(tmp_path):
    index = TemplateIndex.build([write_csv(tmp_path / "t.csv", small_structures())])
    nacl = int(np.flatnonzero([i == "test-0" for i in index.arrays.ids])[0]) if "test-0" in index.arrays.ids else 0
    left = index.scan(parse_formula("KBr"), depth=64, skip={nacl}.__contains__)
    assert str(index.arrays.ids[nacl]) not in {c.info["template_id"] for c, _ in left}
    assert len(left) == len(index.scan(parse_formula("KBr"), depth=64)) - 1


@pytest.mark.skipif(not default_ranker_path().is_file(), reason="no bundled ranker")
def test_bundled_ranker_loads_with_the_default_index():
    index = TemplateIndex.load("default")
    assert index.ranker is not None
    cands = index.propose(parse_formula("KBr"), limit=3)
    assert len(cands) == 3 and all(0 < c.prior < 1 for c in cands)
    assert TemplateIndex.load("default", ranker=None).ranker is None


def test_a_feature_constant_in_training_is_ignored_where_it_varies():
    rng = np.random.default_rng(0)
    xs, ys = _groups(rng, n_groups=20)
    x = np.concatenate(xs)
    x[:, 5] = 0.0  # e.g. a source family absent from the training index
    model = TemplateRanker.fit(x, np.concatenate(ys), epochs=30)
    probe = x[:4].copy()
    moved = probe.copy()
    moved[:, 5] = 1.0
    np.testing.assert_allclose(model.score(moved), model.score(probe), rtol=0, atol=0)
    assert np.all(np.isfinite(model.score(moved)))
