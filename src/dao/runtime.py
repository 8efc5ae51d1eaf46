"""Runtime choices shared by every command: the torch device."""
from __future__ import annotations

import torch

from dao.errors import DAOError


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a user error."""
    device = str(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DAOError("--device cuda requested but no CUDA GPU is available")
    return torch.device(device)
