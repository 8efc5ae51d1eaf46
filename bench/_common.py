"""Helpers shared by the benchmark scripts (compositions of real MP-20 crystals, environment info)."""
from __future__ import annotations

import os
import platform

import torch

from dao.data.paths import data_dir  # noqa: E402,F401  (re-exported for the scripts)


def mp20_crystals(split: str, n: int):
    """The first n crystals of an MP-20 split (needs the shared data; see DAO_DATA_DIR)."""
    from dao.data.readers import read_csv

    path = data_dir() / "csp" / "mp_20" / f"{split}.csv.gz"
    if not path.is_file():
        raise SystemExit(f"MP-20 {split} split not found at {path}; set DAO_DATA_DIR")
    crystals, _ = read_csv(path)
    return crystals[:n]


def environment(device: torch.device) -> dict:
    return {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
