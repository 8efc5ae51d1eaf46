"""Where the shared datasets live: ``$DAO_DATA_DIR``, else ``../shared/data`` next to a source checkout."""
from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    env = os.environ.get("DAO_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / ".." / "shared" / "data"
