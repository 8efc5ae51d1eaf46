"""Join the fp16 chunks that came back from the accelerator into one fp32 DAO checkpoint (runs HERE).

    .venv/bin/python recipes/accelerator/reassemble.py --from /work/.device/<run folder> \\
        --model dao_g_diffusion --out runs/accel/dao_g_diffusion.pt

Every chunk and the joined whole are checked against the sha256 in the run's ``run_log.json``; the
parameters go back to fp32; the checkpoint is written atomically and then loaded with
:func:`dao.models.checkpoint.load_generator` (and one structure sampled) before the command reports success.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_io import join_chunks, read_manifest  # noqa: E402

from dao.crystal import CrystalBatch  # noqa: E402
from dao.errors import CheckpointError, DAOError  # noqa: E402
from dao.models.checkpoint import atomic_torch_save, load_generator  # noqa: E402


def reassemble(folder: Path, name: str, out: Path, check_steps: int = 2) -> dict:
    """Write the checkpoint ``name`` of the run in ``folder`` to ``out``; returns a short report.

    The check samples one NaCl-like cell with ``check_steps`` steps: it proves the weights load and run,
    not that the model is good (that is ``dao benchmark``'s job)."""
    models = read_manifest(folder)
    if name not in models:
        raise CheckpointError(f"{folder} holds no model {name!r} (it holds: {', '.join(sorted(models))})")
    ckpt = join_chunks(folder, models[name])
    ckpt["meta"] = {**ckpt.get("meta", {}), "reassembled": {"from": str(folder), "sha256_fp16": models[name]["sha256"],
                                                           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}}
    unchecked = out.parent / f".{out.name}.unchecked"
    atomic_torch_save(ckpt, unchecked)
    try:  # only a checkpoint that loads and samples takes the name ``out``
        model = load_generator(unchecked)
        template = CrystalBatch.from_compositions([[11, 17]])
        sample = model.sample(template, num_steps=check_steps, generator=torch.Generator().manual_seed(0))
        if not bool(torch.isfinite(sample.lattice).all()):
            raise CheckpointError(f"{out}: the reassembled model sampled a non-finite lattice")
        os.replace(unchecked, out)
    finally:
        unchecked.unlink(missing_ok=True)
    return {"out": str(out), "method": model.method, "params": sum(p.numel() for p in model.parameters()),
            "bytes": out.stat().st_size, "steps_trained": ckpt["meta"].get("steps"),
            "val_loss": (ckpt["meta"].get("val_loss") or [[None, None, None]])[-1][2]}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--from", dest="folder", type=Path, required=True, help="the folder the run's $OUT came back to")
    ap.add_argument("--model", default="dao_g_diffusion", help="dao_g_diffusion or dao_g_flow")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        report = reassemble(args.folder, args.model, args.out)
    except DAOError as exc:
        print(f"dao: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
