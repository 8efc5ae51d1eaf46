"""The generative processes DAO knows, by method name (docs/design.md, 'Where to change what').

A new process is one module with a :class:`~dao.diffusion.base.Process` subclass and one line here. Entries
are import paths, resolved on use, so that listing the methods (``dao --help``) does not import torch.
"""
from __future__ import annotations

import importlib

from dao.errors import ConfigError

PROCESSES: dict[str, str] = {
    "diffusion": "dao.diffusion.denoising:DiffusionProcess",
    "flow": "dao.diffusion.flow_matching:FlowMatchingProcess",
}
#: the method a generator config without ``method`` uses (every checkpoint before methods existed)
DEFAULT_METHOD = "diffusion"


def methods() -> list[str]:
    """The registered method names."""
    return sorted(PROCESSES)


def register_process(cls: type) -> type:
    """Register a :class:`~dao.diffusion.base.Process` subclass under ``cls.method`` (usable as a decorator)."""
    PROCESSES[cls.method] = f"{cls.__module__}:{cls.__qualname__}"
    _resolved[cls.method] = cls
    return cls


_resolved: dict[str, type] = {}


def process_class(method: str) -> type:
    """The Process class registered as ``method``; ConfigError naming the known methods otherwise."""
    if method not in PROCESSES:
        raise ConfigError(f"unknown generator method {method!r} (known: {', '.join(methods())})")
    if method not in _resolved:
        module, name = PROCESSES[method].split(":")
        _resolved[method] = getattr(importlib.import_module(module), name)
    return _resolved[method]
