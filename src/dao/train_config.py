"""Training configuration: the ``train:`` section (:class:`TrainConfig`) and the YAML file that holds it.

Light on purpose (no torch, no Lightning): ``dao train`` checks the whole configuration here before it
reads data or creates a run folder.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import yaml

from dao.config import Config
from dao.diffusion.registry import methods, process_class
from dao.errors import ConfigError

#: top-level sections a configuration YAML may have besides the registered processes' (see config_sections)
BASE_SECTIONS = ("model", "method", "energy", "property", "train")

#: Lightning precision names ``train.precision`` accepts ("32-true": fp32, the official recipe's)
PRECISIONS = ("32-true", "32", "16-mixed", "16", "bf16-mixed", "bf16", "16-true", "bf16-true", "64-true", "64")

_MAX_TIME = re.compile(r"^\d+:\d{1,2}:\d{1,2}:\d{1,2}$")


@dataclass
class TrainConfig(Config):
    """Optimisation, schedule, EMA, data size limits and checkpointing of one training run.

    Schedule (``schedule``): ``"steps"`` (default) warms up linearly over ``warmup_steps`` optimiser steps
    and then decays by a cosine from ``lr`` to ``lr_min`` over the rest of the run, updated every step;
    ``"epochs"`` (the official recipe, docs/official.md) warms up linearly over ``warmup_epochs`` from
    ``warmup_start_factor``·lr to lr, then follows a cosine with warm restarts of period ``cosine_epochs``
    (0: ``max_epochs``) from lr to ``lr_min``, updated once per epoch. ``grad_clip_algorithm``: "norm"
    (Lightning's default) or "value"; ``accumulate_grad_batches`` multiplies the effective batch;
    ``ema_decay`` 0 turns EMA off (the exported weights are the trained ones).
    """

    section: ClassVar[str] = "train"

    batch_size: int = 64
    lr: float = 3e-4
    lr_min: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 500
    max_epochs: int = 1000
    max_steps: int = -1
    max_time: str | None = None  # "DD:HH:MM:SS"
    grad_clip: float = 0.5
    ema_decay: float = 0.999
    max_atoms: int = 52
    min_atoms: int = 1
    seed: int = 0
    num_workers: int = 0
    val_every_n_epochs: int = 1
    ckpt_every_n_steps: int = 200
    precision: str = "32-true"
    grad_clip_algorithm: str = "norm"
    accumulate_grad_batches: int = 1
    schedule: str = "steps"
    warmup_epochs: int = 0
    warmup_start_factor: float = 0.001
    cosine_epochs: int = 0

    def validate(self) -> None:
        """Range checks (a ConfigError naming ``train.<key>``); lr = 0 is allowed (frozen weights)."""
        checks = [("batch_size", self.batch_size >= 1, "at least 1"),
                  ("lr", self.lr >= 0, "at least 0"),
                  ("lr_min", self.lr_min >= 0, "at least 0"),
                  ("weight_decay", self.weight_decay >= 0, "at least 0"),
                  ("warmup_steps", self.warmup_steps >= 0, "at least 0"),
                  ("max_epochs", self.max_epochs >= -1, "at least -1 (-1: no limit)"),
                  ("max_steps", self.max_steps >= -1, "at least -1 (-1: no limit)"),
                  ("max_time", self.max_time is None or bool(_MAX_TIME.match(self.max_time)), "DD:HH:MM:SS"),
                  ("grad_clip", self.grad_clip >= 0, "at least 0 (0: no clipping)"),
                  ("ema_decay", 0 <= self.ema_decay < 1, "in [0, 1)"),
                  ("min_atoms", self.min_atoms >= 1, "at least 1"),
                  ("max_atoms", self.max_atoms >= self.min_atoms, f"at least min_atoms ({self.min_atoms})"),
                  ("num_workers", self.num_workers >= 0, "at least 0"),
                  ("val_every_n_epochs", self.val_every_n_epochs >= 1, "at least 1"),
                  ("ckpt_every_n_steps", self.ckpt_every_n_steps >= 1, "at least 1"),
                  ("precision", self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
                  ("grad_clip_algorithm", self.grad_clip_algorithm in ("norm", "value"), "norm or value"),
                  ("accumulate_grad_batches", self.accumulate_grad_batches >= 1, "at least 1"),
                  ("schedule", self.schedule in ("steps", "epochs"), "steps or epochs"),
                  ("warmup_epochs", self.warmup_epochs >= 0, "at least 0"),
                  ("warmup_start_factor", 0 < self.warmup_start_factor <= 1, "in (0, 1]"),
                  ("cosine_epochs", self.cosine_epochs >= 0, "at least 0 (0: max_epochs)"),
                  ("seed", 0 <= self.seed <= 2**32 - 1, "in [0, 2**32 - 1] (numpy's seed range)"),
                  ("cosine_epochs", self.schedule != "epochs" or self.cosine_epochs > 0 or self.max_epochs > 0,
                   "above 0 with schedule: epochs and no max_epochs limit")]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"config train.{key}: expected {expected}, got {getattr(self, key)!r}")


def config_sections() -> tuple[str, ...]:
    """Every top-level section a configuration YAML may have: :data:`BASE_SECTIONS` and the config section
    of each registered generative process (``diffusion``, ``flow``, ...; see :mod:`dao.diffusion.registry`)."""
    return tuple(sorted({*BASE_SECTIONS, *(process_class(m).config_class.section for m in methods())}))


def load_config(path: str | Path | None) -> dict[str, Any]:
    """The YAML configuration at ``path`` as a dict ({} for None). ConfigError for a missing or malformed
    file and for a top-level section not in :func:`config_sections`; the sections' keys are checked by their
    own config classes."""
    if path is None:
        return {}
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"malformed YAML in {p}: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p}: expected a mapping with model/diffusion/train sections")
    known = config_sections()
    unknown = sorted(str(k) for k in cfg if k not in known)
    if unknown:
        raise ConfigError(f"{p}: unknown config section(s): {', '.join(unknown)} (known: {', '.join(known)})")
    not_mappings = sorted(str(k) for k, v in cfg.items() if k != "method" and not isinstance(v, (dict, type(None))))
    if not_mappings:
        raise ConfigError(f"{p}: config section(s) {', '.join(not_mappings)} must be mappings (key: value)")
    return cfg
