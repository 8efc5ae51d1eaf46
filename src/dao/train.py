"""Training on Lightning (CPU, one GPU, or DDP over many GPUs/nodes) with EMA, resume and export.

``dao train generator|energy --data A.csv B.csv --val V.csv --config cfg.yaml --out runs/x`` runs
:func:`train_model`, which writes ``runs/x/model.pt`` (EMA weights + config, refreshed after every
validation), Lightning checkpoints in ``runs/x/checkpoints`` (``--resume`` continues from ``last.ckpt``)
and ``metrics.csv``. The configuration (:class:`TrainConfig`, :func:`load_config`) lives in
:mod:`dao.train_config`.
"""
from __future__ import annotations

import copy
import functools
import json
import math
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from dao.crystal import Crystal
from dao.data.dataset import BucketBatchSampler, CrystalDataset, collate
from dao.data.dedupe import remove_overlap
from dao.data.readers import read_any
from dao.diffusion.denoising import record_dataset_step_lr
from dao.errors import DAOError
from dao.models.checkpoint import load_model, model_class, save_model
from dao.runtime import resolve_device
from dao.train_config import TrainConfig, load_config

__all__ = ["DAOModule", "TrainConfig", "accelerator_for", "epoch_lr_lambda", "fit", "load_config", "load_crystals",
           "lr_lambda", "train_model"]

#: the names ``dao train`` prints for each model kind
MODEL_NAMES = {"generator": "DAO-G", "energy": "DAO-P"}


#: how many skipped training entries are named (with their reason) in the log and the run's data_report
SKIP_EXAMPLES = 5


def load_crystals(paths: Sequence[str | Path], min_atoms: int = 1, max_atoms: int = 10**9,
                  progress: bool = True) -> tuple[list[Crystal], dict]:
    """Read and size-filter training data from any supported files; returns (crystals, report)."""
    crystals, report = [], {"sources": {}}
    for p in paths:
        cs, skipped = read_any(p, progress=progress)
        sized = [c for c in cs if min_atoms <= c.num_atoms <= max_atoms]
        report["sources"][str(p)] = {"read": len(cs), "unreadable": len(skipped), "kept_by_size": len(sized),
                                     "unreadable_examples": [f"{name}: {why}" for name, why in skipped[:SKIP_EXAMPLES]]}
        if skipped:  # name them: the first few entries and why (all counted in the run's data_report)
            print(f"{p}: skipped {len(skipped)} unreadable entries, e.g. "
                  + "; ".join(f"{name}: {why}" for name, why in skipped[:SKIP_EXAMPLES]), file=sys.stderr)
        crystals += sized
    return crystals, report


def lr_lambda(warmup: int, total: int, lr: float, lr_min: float) -> Callable[[int], float]:
    """The LambdaLR factor: linear warm-up over ``warmup`` steps, then cosine decay from lr to lr_min."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total <= warmup or lr <= 0:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return (lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))) / lr

    return f


def epoch_lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """The per-epoch LambdaLR factor of ``schedule: epochs`` (the official recipe): linear warm-up over
    ``warmup_epochs`` from ``warmup_start_factor`` to 1, then a cosine with warm restarts of period
    ``cosine_epochs`` (0: ``max_epochs``) from lr to lr_min — the values of torch's LinearLR followed by
    CosineAnnealingWarmRestarts (T_mult 1) in a SequentialLR, epoch by epoch."""
    warmup, start, lr, lr_min = cfg.warmup_epochs, cfg.warmup_start_factor, cfg.lr, cfg.lr_min
    period = cfg.cosine_epochs or max(cfg.max_epochs, 1)

    def f(epoch: int) -> float:
        if epoch < warmup:
            return start + (1.0 - start) * epoch / warmup
        if lr <= 0:
            return 1.0
        k = (epoch - warmup) % period
        return (lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * k / period))) / lr

    return f


class DAOModule(L.LightningModule):
    """Wraps any DAO model exposing ``loss(batch) -> dict`` (generator or energy model)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, out_dir: Path, meta: dict,
                 train_sampler: Any = None) -> None:
        super().__init__()
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.cfg, self.out_dir, self.meta = cfg, Path(out_dir), meta
        self.started = time.time()
        self.train_sampler = train_sampler
        self.batches_in_epoch = 0
        self._resumed_mid_epoch = False
        self._pending_rng = None

    # ---- exact resume: the batch position inside the epoch and the random state go into every
    # checkpoint; on resume the sampler skips the batches already trained on and the RNGs continue
    def on_train_epoch_start(self) -> None:
        if not self._resumed_mid_epoch:
            self.batches_in_epoch = 0
        self._resumed_mid_epoch = False

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        state, self._pending_rng = self._pending_rng, None
        if state is None:
            return
        torch.set_rng_state(state["torch_rng"])
        name, keys, pos, has_gauss, cached = state["numpy_rng"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        version, internal, gauss = state["python_rng"]
        random.setstate((version, tuple(internal), gauss))
        if state["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        py_state = random.getstate()
        checkpoint["dao_resume"] = {
            "sampler_epoch": int(self.train_sampler.current) if self.train_sampler is not None else None,
            "batches_in_epoch": int(self.batches_in_epoch),
            # plain containers only: Lightning loads checkpoints with weights_only=True
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": [v.tolist() if hasattr(v, "tolist") else v for v in np.random.get_state()],
            "python_rng": [py_state[0], list(py_state[1]), py_state[2]],
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("dao_resume")
        if not state:
            return
        self._pending_rng = state  # applied just before the next training batch
        sampler, done = self.train_sampler, state["batches_in_epoch"]
        if sampler is None or state.get("sampler_epoch") is None:
            return
        if done >= len(sampler):  # saved at the end of an epoch: the next one starts afresh
            sampler.epoch = state["sampler_epoch"] + 1
        else:
            sampler.epoch, sampler.skip_next = state["sampler_epoch"], done
            self.batches_in_epoch, self._resumed_mid_epoch = done, True

    def on_train_start(self) -> None:
        self.meta["started_at_step"] = int(self.global_step)  # > 0 when resumed from a checkpoint

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch.to(device)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        losses = self.model.loss(batch)
        self.batches_in_epoch += 1  # batches, not optimiser steps: they differ under gradient accumulation
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False,
                      batch_size=batch.num_crystals, on_step=True, on_epoch=True, sync_dist=False)
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=batch.num_crystals)
        return losses["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # EMA here, not in on_train_batch_end: checkpoint callbacks run before the module's batch-end hook
        d = min(self.cfg.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p.detach(), 1 - d)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(1000 + batch_idx)  # the same noise every validation: comparable curves
            losses = self.ema.loss(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=False,
                      batch_size=batch.num_crystals, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if self.trainer.is_global_zero:
            self.export(metrics)

    def export(self, metrics: dict) -> None:
        """Write the EMA weights, config and run metadata to ``out_dir/model.pt``."""
        meta = dict(self.meta)
        meta.update({"epoch": int(self.current_epoch), "global_step": int(self.global_step),
                     "train_seconds": round(time.time() - self.started, 1), "val": metrics})
        save_model(self.out_dir / "model.pt", self.ema, meta)

    def configure_optimizers(self) -> dict:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        if self.cfg.schedule == "epochs":
            sched = torch.optim.lr_scheduler.LambdaLR(opt, epoch_lr_lambda(self.cfg))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 10**6
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg.warmup_steps, total, self.cfg.lr, self.cfg.lr_min))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
            self.export(metrics)


def accelerator_for(device: str) -> str:
    """Lightning's accelerator name for a DAO ``--device``."""
    return {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[device]


def fit(model: torch.nn.Module, train: Sequence[Crystal], val: Sequence[Crystal], cfg: TrainConfig, out_dir: str | Path,
        resume: bool = False, device: str = "auto", devices: int | str = "auto", num_nodes: int = 1,
        meta: dict | None = None, progress: bool = True, callbacks: Sequence = (), strategy: str = "auto") -> Path:
    """Train ``model`` (anything with ``loss(batch)``) and return the path of the exported ``model.pt``.

    ``devices`` > 1 or ``num_nodes`` > 1 trains data-parallel (DDP: NCCL on GPUs, gloo on CPUs); under
    ``torchrun`` or SLURM Lightning reads the world layout from the environment (see the README).
    ``strategy``: a Lightning strategy name ("ddp", "ddp_spawn", ...); "auto" picks DDP when needed.
    ``callbacks``: extra Lightning callbacks. Resuming is exact on one process (data order, RNG, EMA);
    under DDP the data order is exact but only rank 0's RNG state is checkpointed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_ds, val_ds = CrystalDataset(train), CrystalDataset(val)
    collate_fn = functools.partial(collate, label_key=getattr(model, "label_key", "e_above_hull"))
    train_sampler = BucketBatchSampler(train_ds.sizes, cfg.batch_size, seed=cfg.seed)
    # the loaders get their own generator: creating an iterator must not draw from the global RNG (exact resume)
    train_dl = DataLoader(train_ds, batch_sampler=train_sampler, collate_fn=collate_fn, num_workers=cfg.num_workers,
                          generator=torch.Generator().manual_seed(cfg.seed))
    val_dl = DataLoader(val_ds, batch_sampler=BucketBatchSampler(val_ds.sizes, cfg.batch_size, shuffle=False),
                        collate_fn=collate_fn, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed)) if len(val_ds) else None
    meta = dict(meta or {})
    meta.update({"train_config": cfg.to_dict(), "num_train": len(train_ds), "num_val": len(val_ds),
                 "max_atoms_seen": int(train_ds.sizes.max()) if len(train_ds) else 0})
    (out_dir / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    module = DAOModule(model, cfg, out_dir, meta, train_sampler)
    ckpt_cb = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                              every_n_train_steps=cfg.ckpt_every_n_steps, save_on_train_epoch_end=True)
    trainer = L.Trainer(
        accelerator=accelerator_for(device), devices=devices, num_nodes=num_nodes, strategy=strategy,
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, max_time=cfg.max_time,
        gradient_clip_val=cfg.grad_clip, gradient_clip_algorithm=cfg.grad_clip_algorithm,
        accumulate_grad_batches=cfg.accumulate_grad_batches, precision=cfg.precision, callbacks=[ckpt_cb, *callbacks],
        logger=CSVLogger(out_dir, name="logs", version=0), default_root_dir=out_dir,
        check_val_every_n_epoch=cfg.val_every_n_epochs, enable_progress_bar=progress,
        use_distributed_sampler=False, enable_model_summary=False, log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    with warnings.catch_warnings():  # the module restores the position inside the epoch itself
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    return out_dir / "model.pt"


def _read_training_data(data: Sequence[str | Path], val: Sequence[str | Path], exclude: Sequence[str | Path],
                        tcfg: TrainConfig) -> tuple[list[Crystal], list[Crystal], dict]:
    """Training and validation crystals within the config's size limits, without anything matching
    ``exclude`` (same id or same structure); the report says what was read, skipped and removed."""
    crystals, report = load_crystals(data, tcfg.min_atoms, tcfg.max_atoms)
    val_crystals = load_crystals(val, tcfg.min_atoms, tcfg.max_atoms)[0] if val else []
    excluded: list[Crystal] = []
    for p in exclude:
        excluded += read_any(p)[0]
    if excluded:
        crystals, removed = remove_overlap(crystals, excluded)
        report["removed_overlapping_excluded"] = removed
    if not crystals:
        raise DAOError("no training structures left after reading and filtering")
    return crystals, val_crystals, report


def _build_model(kind: str, cfg: dict, tcfg: TrainConfig, crystals: Sequence[Crystal], method: str | None,
                 init: str | None) -> torch.nn.Module:
    """A fresh model of ``kind`` sized from the data (initial weights seeded by train.seed), or the weights
    and model config of the checkpoint ``init`` — whose ``max_atoms`` (the largest cell it will generate)
    grows to the largest training cell when finetuning on larger cells."""
    if init is not None:
        model = load_model(init, kind).train()
        if method is not None and method != getattr(model, "method", method):
            raise DAOError(f"--method {method}, but --init {init} is a {model.method} model")
        if crystals and hasattr(model.config, "max_atoms"):
            model.config.max_atoms = max(model.config.max_atoms, max(c.num_atoms for c in crystals))
        return model
    if method is not None:
        cfg["method"] = method
    torch.manual_seed(tcfg.seed)  # the seed governs the initial weights too
    return model_class(kind).from_training_data(cfg, crystals)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def train_model(kind: str, data: Sequence[str | Path], out: str | Path, *, val: Sequence[str | Path] = (),
                exclude: Sequence[str | Path] = (), config: str | Path | None = None, resume: bool = True,
                seed: int | None = None, device: str = "auto", devices: int | str = "auto", num_nodes: int = 1,
                max_time: str | None = None, method: str | None = None, init: str | None = None,
                log: Callable[[str], None] = _stderr) -> Path:
    """Everything ``dao train generator|energy`` does; returns the path of the exported ``model.pt``.

    Reads the YAML ``config`` (``seed`` and ``max_time`` override its train section; the whole config is
    checked before anything is read or written), reads and filters ``data``/``val``, drops training entries
    matching ``exclude``, builds the model of ``kind`` (or starts from checkpoint ``init``; ``method``:
    "diffusion" or "flow" for generators) and fits it into ``out``. Progress lines go to ``log``.
    """
    cfg = load_config(config)
    overrides = {k: v for k, v in (("seed", seed), ("max_time", max_time)) if v is not None}
    tcfg = TrainConfig.from_dict({**(cfg.get("train") or {}), **overrides})
    crystals, val_crystals, report = _read_training_data(data, val, exclude, tcfg)
    model = _build_model(kind, cfg, tcfg, crystals, method, init)
    step_lr = record_dataset_step_lr(getattr(model.config, "process", None), cfg, data)
    if step_lr is not None:
        log(f"  sampling step_lr {step_lr['step_lr']:g}: the official value for {step_lr['dataset']}")
    log(f"training {MODEL_NAMES.get(kind, kind)} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M "
        f"parameters) on {len(crystals)} crystals, validating on {len(val_crystals)}")
    energy_cfg = getattr(model.config, "energy", None)
    if energy_cfg is not None:
        log(f"  energy labels: {energy_cfg.num_labels} of {len(crystals)} training crystals; standardised "
            f"with mean {energy_cfg.mean:.4f}, std {energy_cfg.std:.4f} eV/atom")
    meta = {"data": [str(p) for p in data], "val": [str(p) for p in val], "exclude": [str(p) for p in exclude],
            "data_report": report, "command": " ".join(sys.argv), "init": init, "dataset_step_lr": step_lr}
    path = fit(model, crystals, val_crystals, tcfg, out, resume=resume, device=resolve_device(device).type,
               devices=devices, num_nodes=num_nodes, meta=meta)
    log(f"model written to {path}")
    return path
