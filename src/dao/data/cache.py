"""On-disk cache of parsed crystal files.

Parsing a CIF with pymatgen costs milliseconds; a 30k-row CSV costs minutes. The parsed arrays are
stored as one ``.npz`` (+ JSON metadata) per source file under ``$DAO_CACHE_DIR`` (default
``~/.cache/dao``), keyed by the file's absolute path, size and modification time and the cache format.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np

from dao.crystal import Crystal

CACHE_VERSION = 2  # 2: extxyz frames keep their integer info (numpy scalars were dropped)


def cache_dir() -> Path:
    return Path(os.environ.get("DAO_CACHE_DIR", Path.home() / ".cache" / "dao"))


def _key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|v{CACHE_VERSION}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _save(target: Path, crystals: list[Crystal], skipped: list) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    n = np.array([c.num_atoms for c in crystals], dtype=np.int64)
    arrays = {
        "num_atoms": n,
        "atomic_numbers": np.concatenate([c.atomic_numbers for c in crystals]) if crystals else np.zeros(0, np.int64),
        "frac": np.concatenate([c.frac_coords for c in crystals]) if crystals else np.zeros((0, 3)),
        "lattice": np.stack([c.lattice for c in crystals]) if crystals else np.zeros((0, 3, 3)),
    }
    meta = json.dumps({"meta": [c.meta for c in crystals], "skipped": skipped}, allow_nan=True)
    tmp = target.with_suffix(".tmp.npz")
    np.savez(tmp, meta=np.frombuffer(meta.encode(), dtype=np.uint8), **arrays)
    os.replace(tmp, target)


def _load(target: Path) -> tuple[list[Crystal], list]:
    with np.load(target) as z:
        meta = json.loads(z["meta"].tobytes().decode())
        bounds = np.concatenate([[0], np.cumsum(z["num_atoms"])])
        numbers, frac, lattice = z["atomic_numbers"], z["frac"], z["lattice"]
    crystals = [
        Crystal(numbers[a:b], frac[a:b], lattice[i], m)
        for i, (a, b, m) in enumerate(zip(bounds[:-1], bounds[1:], meta["meta"]))
    ]
    return crystals, [tuple(s) for s in meta["skipped"]]


def cached_read(path: Path, parse: Callable[[], tuple[list[Crystal], list]]) -> tuple[list[Crystal], list]:
    target = cache_dir() / f"{path.name}.{_key(path)}.npz"
    if target.is_file():
        try:
            return _load(target)
        except Exception:
            pass  # a corrupt cache entry is rebuilt below
    crystals, skipped = parse()
    try:
        _save(target, crystals, skipped)
    except OSError:
        pass  # a read-only cache location must not break reading
    return crystals, skipped
