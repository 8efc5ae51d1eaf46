"""What travels back from the accelerator machine: the JSON log, fp16 checkpoint chunks and their manifest.

Shared by ``train_on_device.py`` (THERE: writes) and ``reassemble.py`` (HERE: reads); torch + numpy only.
A model travels as its DAO checkpoint (:mod:`dao.models.checkpoint` layout) with every parameter cast to
fp16 (buffers stay as they are), serialised with ``torch.save`` and cut into ``CHUNK_BYTES`` pieces
``<name>.pt.part<i>``; the log's ``models`` entry lists the pieces with their sha256 and the sha256 of the
whole, so a truncated or mixed-up transfer is refused on reassembly.
"""
from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dao.crystal import CrystalBatch
from dao.errors import CheckpointError
from dao.models.checkpoint import save_model
from dao.structure_io import atomic_write, atomic_write_text

#: one returned file: under the 16 MiB limit of the device tool
CHUNK_BYTES = 15 * 2**20
#: the device tool returns at most this many files (the log included) and this many bytes together
MAX_FILES, MAX_BYTES = 8, 64 * 2**20
LOG_NAME = "run_log.json"


class LogFile:
    """A JSON record rewritten atomically on every update (a run killed at its time limit keeps its log)."""

    def __init__(self, path: Path, data: dict) -> None:
        self.path, self.data = Path(path), dict(data)
        self.update({})

    def update(self, changes: dict) -> None:
        self.data.update(changes)
        atomic_write_text(self.path, json.dumps(self.data, indent=1, default=str) + "\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export_chunks(model: torch.nn.Module, meta: dict, out: Path, name: str) -> dict:
    """Write ``model`` as fp16 chunks ``out/<name>.pt.part<i>``; returns its manifest entry."""
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / "model.pt", model, meta)  # the one checkpoint layout
        ckpt = torch.load(Path(tmp) / "model.pt", map_location="cpu", weights_only=True)
    params = {n for n, _ in model.named_parameters()}
    ckpt["state_dict"] = {k: (v.half() if k in params and v.is_floating_point() else v)
                          for k, v in ckpt["state_dict"].items()}
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    blob = buf.getvalue()
    pieces = [blob[i:i + CHUNK_BYTES] for i in range(0, len(blob), CHUNK_BYTES)]
    existing = [p for p in Path(out).iterdir() if p.is_file() and p.name != LOG_NAME]
    n_files = len(existing) + len(pieces) + 1
    n_bytes = sum(p.stat().st_size for p in existing) + len(blob)
    if n_files > MAX_FILES or n_bytes > MAX_BYTES - 2**20:
        raise CheckpointError(f"{name}: {n_files} files / {n_bytes / 2**20:.1f} MiB would not come back "
                              f"(at most {MAX_FILES} files, {MAX_BYTES // 2**20} MiB)")
    chunks = []
    for i, piece in enumerate(pieces):
        chunk = f"{name}.pt.part{i}"
        atomic_write(Path(out) / chunk, lambda fh, piece=piece: fh.write(piece))
        chunks.append({"name": chunk, "bytes": len(piece), "sha256": _sha256(piece)})
    return {"file": f"{name}.pt", "bytes": len(blob), "sha256": _sha256(blob), "chunks": chunks,
            "params": sum(p.numel() for p in model.parameters()), "stored_dtype": "float16 parameters"}


def join_chunks(folder: Path, entry: dict) -> dict:
    """The checkpoint dict of one manifest entry, every chunk and the whole checked, fp16 → fp32."""
    parts = []
    for chunk in entry["chunks"]:
        path = Path(folder) / chunk["name"]
        if not path.is_file():
            raise CheckpointError(f"missing chunk {path}")
        data = path.read_bytes()
        if len(data) != chunk["bytes"] or _sha256(data) != chunk["sha256"]:
            raise CheckpointError(f"chunk {path} is damaged (size or sha256 differs from the manifest)")
        parts.append(data)
    blob = b"".join(parts)
    if _sha256(blob) != entry["sha256"]:
        raise CheckpointError(f"{entry['file']}: the joined chunks' sha256 differs from the manifest")
    ckpt = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    ckpt["state_dict"] = {k: (v.float() if v.dtype == torch.float16 else v) for k, v in ckpt["state_dict"].items()}
    return ckpt


def sample_speed(model: Any, data: Any, idx: np.ndarray, count: int, steps: int | None) -> dict:
    """Seconds per structure when sampling the compositions of the first ``count`` crystals of ``idx`` in one
    batch, plus two sanity figures of the samples (finite share, median volume per atom)."""
    idx = np.asarray(idx)[:count]
    comps = [data.numbers[data.offsets[i]:data.offsets[i + 1]].tolist() for i in idx]
    template = CrystalBatch.from_compositions(comps, device=data.device)
    gen = torch.Generator(device=data.device).manual_seed(0)
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = model.sample(template, num_steps=steps, generator=gen)
    if data.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    lat = out.lattice.double()
    bad_atoms = (~torch.isfinite(out.frac)).any(1).double()
    bad = torch.zeros(len(lat), dtype=torch.float64, device=lat.device).index_add_(0, out.batch, bad_atoms)
    finite = torch.isfinite(lat).flatten(1).all(1) & (bad == 0)
    vol = torch.linalg.det(lat).abs() / out.num_atoms.double()
    return {"structures": len(idx), "steps": steps or model.default_steps, "seconds": round(seconds, 2),
            "seconds_per_structure": round(seconds / max(len(idx), 1), 5),
            "finite_share": round(float(finite.double().mean()), 4),
            "median_volume_per_atom": round(float(vol[finite].median()) if finite.any() else float("nan"), 3)}


def read_manifest(folder: Path) -> dict:
    """The ``models`` entry of ``folder/run_log.json`` (CheckpointError when absent or unreadable)."""
    path = Path(folder) / LOG_NAME
    try:
        log = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}") from None
    if not isinstance(log.get("models"), dict) or not log["models"]:
        raise CheckpointError(f"{path} lists no exported model (did the run finish?)")
    return log["models"]
