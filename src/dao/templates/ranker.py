"""A learned order for template candidates (docs/templates.md, 'Learned ranking').

The similarity of the best species assignment alone picks the right template for about six MP-20
compositions in ten, while the right one is among the first five for three in four. :class:`TemplateRanker`
reorders the candidates of one composition with a small classifier of "this candidate matches the true
structure", trained leave-one-out on the index itself (``tools/train_template_ranker.py``): every corpus entry
is a target once, its own structure is removed from the index, and the candidates proposed for it are labelled
with the CSP protocol's StructureMatcher.

Features of a candidate (:data:`FEATURES`) are cheap facts known before any energy is computed: the
assignment's distance under each element similarity of :mod:`dao.templates.elements`, its rank in the
similarity order, whether it is its template's best assignment, how many scanned templates produced the same
structure (votes), how common the prototype is in the index, the template's crystal system and source family,
the volume rescaling, the cell size. The model is a one-hidden-layer network stored as plain arrays
(``.npz``, read with ``allow_pickle=False``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from dao.errors import DAOError
from dao.structure_io import atomic_write

SIMILARITIES = ("en_radius", "en", "mendeleev", "embedding", "substitution")
SOURCE_FAMILIES = ("mp_20", "mpts_52", "perov", "carbon", "wbm", "3dsc")
CRYSTAL_SYSTEMS = ((1, 2), (3, 15), (16, 74), (75, 142), (143, 167), (168, 194), (195, 230))
FEATURES = (tuple(f"d_{s}" for s in SIMILARITIES)
            + ("log_rank", "best_of_template", "log_votes", "vote_similarity",
               "log_prototype_count", "log_volume_ratio", "supercell", "log_atoms", "n_elements", "no_spacegroup")
            + tuple(f"system_{i}" for i in range(len(CRYSTAL_SYSTEMS)))
            + tuple(f"source_{s}" for s in SOURCE_FAMILIES))
#: the optional last feature of a judge-aware ranker: the candidate's energy per atom under the judge minus the
#: lowest among the candidates scored for the same cell, clipped to [0, ENERGY_CLIP] eV/atom (a candidate the
#: judge failed on gets ENERGY_CLIP)
ENERGY_FEATURE, ENERGY_CLIP = "energy_above_lowest", 1.0
RANKER_FORMAT = 1
RERANKED = 16  # the ranker reorders the first RERANKED distinct candidates of the similarity order
DEFAULT_RANKER = "template_ranker.npz"
#: the bundled judge-aware rankers, by judge (scored with the judge's single-point energies)
DEFAULT_ENERGY_RANKERS = {"chgnet": "template_ranker_chgnet.npz"}


def default_ranker_path(judge: str | None = None) -> Path:
    """The ranker bundled with DAO (``src/dao/resources/template_ranker.npz``; card in docs/templates.md), or
    with ``judge`` the bundled ranker that also scores that judge's energies (the path may not exist)."""
    from importlib import resources

    name = DEFAULT_RANKER if judge is None else DEFAULT_ENERGY_RANKERS.get(judge, f"template_ranker_{judge}.npz")
    return Path(str(resources.files("dao.resources").joinpath(name)))


def relative_energies(energies: Sequence[float | None]) -> np.ndarray:
    """The :data:`ENERGY_FEATURE` column for one cell's candidates (see there)."""
    e = np.array([np.nan if v is None else float(v) for v in energies], dtype=np.float64)
    finite = np.isfinite(e)
    if not finite.any():
        return np.full(len(e), ENERGY_CLIP)
    return np.where(finite, np.clip(e - e[finite].min(), 0.0, ENERGY_CLIP), ENERGY_CLIP)


class TemplateRankerError(DAOError):
    """A missing, corrupt or incompatible template ranker file."""


@dataclass
class Scanned:
    """One kept template candidate with the facts its features are computed from."""

    template: list[tuple[int, int]]  # (Z, sites) of the template entry
    mapping: dict[int, int]  # template Z -> target Z
    rank: int
    best_of_template: bool
    votes: int
    vote_similarity: float
    prototype_count: int
    volume_ratio: float
    supercell: int
    atoms: int
    elements: int
    spacegroup: int
    source: str


def _system(sg: int) -> list[float]:
    return [float(lo <= sg <= hi) for lo, hi in CRYSTAL_SYSTEMS]


def _family(source: str) -> list[float]:
    return [float(f in source) for f in SOURCE_FAMILIES]


def features(s: Scanned) -> np.ndarray:
    """The :data:`FEATURES` vector of one scanned candidate."""
    from dao.templates.assign import distance
    from dao.templates.elements import distance_matrix

    row = [distance(s.template, s.mapping, distance_matrix(name)) for name in SIMILARITIES]
    row += [math.log1p(s.rank), float(s.best_of_template), math.log(max(s.votes, 1)), s.vote_similarity,
            math.log1p(s.prototype_count), abs(math.log(max(s.volume_ratio, 1e-6))), float(s.supercell > 1),
            math.log(max(s.atoms, 1)), float(s.elements), float(s.spacegroup <= 0)]
    return np.asarray(row + _system(s.spacegroup) + _family(s.source), dtype=np.float64)


class TemplateRanker:
    """Scores candidates (higher = more likely the true structure): standardised features → tanh hidden
    layer → logit. ``fit`` trains one; ``load``/``save`` use a format-versioned ``.npz``."""

    def __init__(self, mean: np.ndarray, scale: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray,
                 b2: float, meta: str = "{}", energy: bool = False) -> None:
        self.mean, self.scale, self.w1, self.b1, self.w2, self.b2 = mean, scale, w1, b1, w2, float(b2)
        self.meta, self.energy = meta, energy
        width = len(self.feature_names)
        if self.mean.shape != (width,) or self.w1.shape[0] != width:
            raise TemplateRankerError(f"template ranker expects {width} features, file has {self.mean.shape[0]}")

    @property
    def feature_names(self) -> tuple[str, ...]:
        """:data:`FEATURES`, plus :data:`ENERGY_FEATURE` for a judge-aware ranker (``energy``)."""
        return FEATURES + ((ENERGY_FEATURE,) if self.energy else ())

    def score(self, x: np.ndarray) -> np.ndarray:
        """Logits for a (n, len(feature_names)) feature matrix."""
        with np.errstate(invalid="ignore"):  # inf scale: a feature the ranker ignores (see fit)
            z = np.where(np.isinf(self.scale), 0.0, (np.asarray(x, np.float64) - self.mean) / self.scale)
        h = np.tanh(z @ self.w1 + self.b1)
        return h @ self.w2 + self.b2

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None, hidden: int = 16,
            epochs: int = 300, weight_decay: float = 1e-2, seed: int = 0, meta: str = "{}") -> TemplateRanker:
        """Train on features ``x`` (:data:`FEATURES`, optionally followed by :data:`ENERGY_FEATURE`: a
        judge-aware ranker) and 0/1 labels ``y`` (full-batch Adam). With ``groups`` (one id per row:
        the composition its candidates were proposed for) the loss is listwise: the softmax cross-entropy of
        the right candidates within each group that has one, plus 0.3 × the per-candidate binary
        cross-entropy (which alone is the loss without ``groups``). The listwise term trains the decision
        the ranker makes: which candidate of one composition goes first."""
        import torch

        g = torch.Generator().manual_seed(seed)
        xt = torch.as_tensor(x, dtype=torch.float64)
        std = xt.std(0)
        # a feature constant in training (e.g. a source family absent from the training index) carries no
        # learned meaning: an infinite scale maps it to 0 wherever it is used, instead of a huge input
        mean, scale = xt.mean(0), torch.where(std > 1e-6, std, torch.full_like(std, math.inf))
        xs, yt = (xt - mean) / scale, torch.as_tensor(y, dtype=torch.float64)
        w1 = (torch.randn(x.shape[1], hidden, generator=g, dtype=torch.float64) / math.sqrt(x.shape[1]))
        params = [w1.requires_grad_(), torch.zeros(hidden, dtype=torch.float64, requires_grad=True),
                  (torch.randn(hidden, generator=g, dtype=torch.float64) / math.sqrt(hidden)).requires_grad_(),
                  torch.zeros((), dtype=torch.float64, requires_grad=True)]
        inv = None
        if groups is not None and float(np.max(y, initial=0)) > 0:
            inv = torch.as_tensor(np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1))
        opt = torch.optim.Adam(params, lr=0.02, weight_decay=weight_decay)
        for _ in range(epochs):
            opt.zero_grad()
            logit = torch.tanh(xs @ params[0] + params[1]) @ params[2] + params[3]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, yt)
            if inv is not None:
                loss = 0.3 * loss + listwise_loss(logit, yt, inv)
            loss.backward()
            opt.step()
        n = [p.detach().numpy() for p in params]
        return cls(mean.numpy(), scale.numpy(), n[0], n[1], n[2], float(n[3]), meta,
                   energy=x.shape[1] == len(FEATURES) + 1)

    def save(self, path: str | Path) -> None:
        """Write the ranker (atomically)."""
        arrays = {"format_version": np.array([RANKER_FORMAT]), "features": np.array(self.feature_names), "mean": self.mean,
                  "scale": self.scale, "w1": self.w1, "b1": self.b1, "w2": self.w2, "b2": np.array([self.b2]),
                  "meta": np.array(self.meta)}
        atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays))

    @classmethod
    def load(cls, path: str | Path) -> TemplateRanker:
        """Read a ranker file; a missing, corrupt or incompatible one raises :class:`TemplateRankerError`."""
        import zipfile

        try:
            with np.load(Path(path), allow_pickle=False) as z:
                names = tuple(z["features"].tolist())
                if int(z["format_version"][0]) != RANKER_FORMAT or names not in (FEATURES, FEATURES + (ENERGY_FEATURE,)):
                    raise TemplateRankerError(f"template ranker {path}: another format or feature set")
                return cls(z["mean"], z["scale"], z["w1"], z["b1"], z["w2"], float(z["b2"][0]), str(z["meta"]),
                           energy=names[-1] == ENERGY_FEATURE)
        except TemplateRankerError:
            raise
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, IndexError) as exc:
            raise TemplateRankerError(f"cannot read template ranker {path}: {type(exc).__name__}: {exc}") from None


def listwise_loss(logit: "torch.Tensor", labels: "torch.Tensor", group: "torch.Tensor") -> "torch.Tensor":
    """Mean over the groups that hold a right candidate (``labels`` 1) of −log Σ_right softmax(logit), the
    softmax taken within each group; ``group`` numbers the rows' groups 0..G−1. The loss of a ranker (and of
    a judge, with logit = −energy) that decides which of one composition's candidates comes first."""
    import torch

    n = int(group.max()) + 1
    top = torch.full((n,), -math.inf, dtype=logit.dtype).scatter_reduce(0, group, logit.detach(), "amax")
    ex = torch.exp(logit - top[group])
    den = torch.zeros(n, dtype=logit.dtype).index_add(0, group, ex)
    num = torch.zeros(n, dtype=logit.dtype).index_add(0, group, ex * labels)
    right = torch.zeros(n, dtype=logit.dtype).index_add(0, group, labels) > 0
    return -(torch.log(num[right].clamp_min(torch.finfo(logit.dtype).tiny)) - torch.log(den[right])).mean()


def top1_rate(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    """Fraction of groups (one per composition) whose highest-scored candidate is labelled 1."""
    hits = [float(lab[int(np.argmax(s))]) for s, lab in zip(scores, labels) if len(s)]
    return sum(hits) / max(len(scores), 1)
