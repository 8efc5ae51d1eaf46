"""Training on Lightning (CPU, one GPU, or DDP over many GPUs/nodes) with EMA, resume and export.

``dao train generator|energy --data A.csv B.csv --val V.csv --config cfg.yaml --out runs/x`` writes
``runs/x/model.pt`` (EMA weights + config, refreshed after every validation), Lightning checkpoints
in ``runs/x/checkpoints`` (``--resume`` continues from ``last.ckpt``) and ``metrics.csv``.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import lightning as L
import torch

from dao.crystal import Crystal


@dataclass
class TrainConfig:
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

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            from dao.errors import DAOError

            raise DAOError(f"unknown train config keys: {sorted(unknown)}")
        return cls(**d)


def load_config(path: str | Path | None) -> dict:
    if path is None:
        return {}
    import yaml

    from dao.errors import DAOError

    p = Path(path)
    if not p.is_file():
        raise DAOError(f"config file not found: {p}")
    try:
        cfg = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DAOError(f"malformed YAML in {p}: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict):
        raise DAOError(f"{p}: expected a mapping with model/diffusion/train sections")
    return cfg


def load_crystals(paths: Sequence[str | Path], min_atoms: int = 1, max_atoms: int = 10**9,
                  progress: bool = True) -> tuple[list[Crystal], dict]:
    """Read and size-filter training data from any supported files; returns (crystals, report)."""
    from dao.data.readers import read_any

    crystals, report = [], {"sources": {}}
    for p in paths:
        cs, skipped = read_any(p, progress=progress)
        sized = [c for c in cs if min_atoms <= c.num_atoms <= max_atoms]
        report["sources"][str(p)] = {"read": len(cs), "unreadable": len(skipped), "kept_by_size": len(sized)}
        crystals += sized
    return crystals, report


def lr_lambda(warmup: int, total: int, lr: float, lr_min: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if total <= warmup or lr <= 0:
            return 1.0
        progress = min(1.0, (step - warmup) / (total - warmup))
        return (lr_min + 0.5 * (lr - lr_min) * (1 + math.cos(math.pi * progress))) / lr

    return f


class DAOModule(L.LightningModule):
    """Wraps any DAO model exposing ``loss(batch) -> dict`` (generator or energy model)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, out_dir: Path, meta: dict,
                 train_sampler=None) -> None:
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
    def on_train_epoch_start(self):
        if not self._resumed_mid_epoch:
            self.batches_in_epoch = 0
        self._resumed_mid_epoch = False

    def on_train_batch_start(self, batch, batch_idx):
        import random

        import numpy as np

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

    def on_save_checkpoint(self, checkpoint):
        import random

        import numpy as np

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

    def on_load_checkpoint(self, checkpoint):
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

    def on_train_start(self):
        self.meta["started_at_step"] = int(self.global_step)  # > 0 when resumed from a checkpoint

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device)

    def training_step(self, batch, batch_idx):
        losses = self.model.loss(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items()}, prog_bar=False,
                      batch_size=batch.num_crystals, on_step=True, on_epoch=True, sync_dist=False)
        self.log("loss", losses["loss"], prog_bar=True, logger=False, batch_size=batch.num_crystals)
        return losses["loss"]

    def optimizer_step(self, *args, **kwargs):
        super().optimizer_step(*args, **kwargs)
        # EMA here, not in on_train_batch_end: checkpoint callbacks run before the module's batch-end hook
        d = min(self.cfg.ema_decay, (1 + self.global_step) / (10 + self.global_step))
        with torch.no_grad():
            for pe, p in zip(self.ema.parameters(), self.model.parameters()):
                pe.lerp_(p.detach(), 1 - d)
        self.batches_in_epoch += 1

    def validation_step(self, batch, batch_idx):
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(1000 + batch_idx)  # the same noise every validation: comparable curves
            losses = self.ema.loss(batch)
        self.log_dict({f"val/{k}": v for k, v in losses.items()}, prog_bar=False,
                      batch_size=batch.num_crystals, on_epoch=True, sync_dist=True)

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
        if self.trainer.is_global_zero:
            self.export(metrics)

    def export(self, metrics: dict) -> None:
        from dao.models.checkpoint import save_model

        meta = dict(self.meta)
        meta.update({"epoch": int(self.current_epoch), "global_step": int(self.global_step),
                     "train_seconds": round(time.time() - self.started, 1), "val": metrics})
        save_model(self.out_dir / "model.pt", self.ema, meta)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        total = self.trainer.estimated_stepping_batches
        total = int(total) if math.isfinite(total) else 10**6
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.cfg.warmup_steps, total, self.cfg.lr, self.cfg.lr_min))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_train_end(self):
        if self.trainer.is_global_zero:
            metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val/")}
            self.export(metrics)


def accelerator_for(device: str) -> str:
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
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from torch.utils.data import DataLoader

    from dao.data.dataset import BucketBatchSampler, CrystalDataset, collate

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    train_ds, val_ds = CrystalDataset(train), CrystalDataset(val)
    import functools

    collate_fn = functools.partial(collate, label_key=getattr(model, "label_key", "e_above_hull"))
    train_sampler = BucketBatchSampler(train_ds.sizes, cfg.batch_size, seed=cfg.seed)
    # the loaders get their own generator: creating an iterator must not draw from the global RNG (exact resume)
    train_dl = DataLoader(train_ds, batch_sampler=train_sampler, collate_fn=collate_fn, num_workers=cfg.num_workers,
                          generator=torch.Generator().manual_seed(cfg.seed))
    val_dl = DataLoader(val_ds, batch_sampler=BucketBatchSampler(val_ds.sizes, cfg.batch_size, shuffle=False),
                        collate_fn=collate_fn, num_workers=cfg.num_workers,
                        generator=torch.Generator().manual_seed(cfg.seed)) if len(val_ds) else None
    meta = dict(meta or {})
    meta.update({"train_config": asdict(cfg), "num_train": len(train_ds), "num_val": len(val_ds),
                 "max_atoms_seen": int(train_ds.sizes.max()) if len(train_ds) else 0})
    (out_dir / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    module = DAOModule(model, cfg, out_dir, meta, train_sampler)
    ckpt_cb = ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True, save_top_k=0,
                              every_n_train_steps=cfg.ckpt_every_n_steps, save_on_train_epoch_end=True)
    trainer = L.Trainer(
        accelerator=accelerator_for(device), devices=devices, num_nodes=num_nodes, strategy=strategy,
        max_epochs=cfg.max_epochs, max_steps=cfg.max_steps, max_time=cfg.max_time,
        gradient_clip_val=cfg.grad_clip, precision=cfg.precision, callbacks=[ckpt_cb, *callbacks],
        logger=CSVLogger(out_dir, name="logs", version=0), default_root_dir=out_dir,
        check_val_every_n_epoch=cfg.val_every_n_epochs, enable_progress_bar=progress,
        use_distributed_sampler=False, enable_model_summary=False, log_every_n_steps=10,
        num_sanity_val_steps=0,
    )
    last = out_dir / "checkpoints" / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    import warnings

    with warnings.catch_warnings():  # the module restores the position inside the epoch itself
        warnings.filterwarnings("ignore", message=".*resuming from a checkpoint that ended before the epoch ended.*")
        trainer.fit(module, train_dl, val_dl, ckpt_path=ckpt_path)
    return out_dir / "model.pt"
