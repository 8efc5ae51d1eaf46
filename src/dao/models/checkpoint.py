"""DAO checkpoints: one ``.pt`` file with weights, config and metadata, loadable with ``weights_only=True``.

Layout: ``{"dao_format": 1, "kind": "generator" | "energy", "config": {...}, "state_dict": {...}, "meta": {...}}``;
config and meta hold only plain Python types (dict, list, str, int, float, bool, None).
"""
from __future__ import annotations

import importlib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dao.errors import CheckpointError, ConfigError
from dao.structure_io import atomic_write

if TYPE_CHECKING:  # pragma: no cover
    from dao.models.energy import DAOEnergyModel
    from dao.models.generator import DAOGenerator

FORMAT_VERSION = 1
#: the bundled generators, by method; ``"default-diffusion"`` / ``"default-flow"`` name them explicitly
BUNDLED_GENERATORS = {"diffusion": "dao_g_diffusion.pt", "flow": "dao_g_flow.pt"}
DEFAULT_BUNDLED_METHOD = "diffusion"  # what ``"default"`` means for generators (see docs/flow_vs_diffusion.md)
DEFAULT_GENERATOR = BUNDLED_GENERATORS[DEFAULT_BUNDLED_METHOD]
DEFAULT_ENERGY = "dao_p_default.pt"
#: the bundled checkpoint that ``"default"`` names, per model kind
DEFAULT_MODELS = {"generator": DEFAULT_GENERATOR, "energy": DEFAULT_ENERGY}


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` all-or-nothing (see :func:`dao.structure_io.atomic_write`)."""
    atomic_write(path, lambda fh: torch.save(obj, fh))


def save_model(path: str | Path, model: torch.nn.Module, meta: dict | None = None) -> None:
    """Write a model with its config (``model.config.to_dict()``) and plain-type metadata."""
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_torch_save({"dao_format": FORMAT_VERSION, "kind": model.kind, "config": model.config.to_dict(),
                       "state_dict": state, "meta": dict(meta or {})}, path)


def resolve_model_path(spec: str | Path, kind: str = "generator") -> Path:
    """``default`` → the bundled checkpoint of that kind (DAO-G unless ``kind="energy"``);
    ``default-diffusion`` / ``default-flow`` → the bundled generator of that method; else a path."""
    name = str(spec)
    if name == "default":
        return Path(str(resources.files("dao.resources").joinpath(DEFAULT_MODELS.get(kind, DEFAULT_GENERATOR))))
    if name.startswith("default-") and name[8:] in BUNDLED_GENERATORS and not Path(name).exists():
        return Path(str(resources.files("dao.resources").joinpath(BUNDLED_GENERATORS[name[8:]])))
    return Path(spec)


def bundled_generator_for(spec: str | Path, method: str | None) -> str | Path:
    """``--model default --method M`` means the bundled generator of method M."""
    return f"default-{method}" if str(spec) == "default" and method is not None else spec


def load_checkpoint(spec: str | Path, kind: str | None = None) -> dict:
    path = resolve_model_path(spec, kind or "generator")
    if not path.is_file():
        hint = " (the bundled default model is missing from this install)" if str(spec) == "default" else ""
        raise CheckpointError(f"checkpoint not found: {path}{hint}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {type(exc).__name__}") from None
    if not isinstance(ckpt, dict) or "dao_format" not in ckpt:
        raise CheckpointError(f"{path} is not a DAO model checkpoint (a Lightning training checkpoint? "
                              "use the exported model.pt)")
    _check_layout(ckpt, path)
    if kind is not None and ckpt["kind"] != kind:
        raise CheckpointError(f"{path} holds a {ckpt['kind']!r} model, expected {kind!r}")
    ckpt["path"] = str(path)
    return ckpt


def _check_layout(ckpt: dict, path: Path) -> None:
    """Every field of the layout present and of its type (CheckpointError naming the field otherwise)."""
    version = ckpt["dao_format"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path}: dao_format must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer DAO (format {version})")
    ckpt.setdefault("meta", {})
    for key, typ in (("kind", str), ("config", dict), ("state_dict", dict), ("meta", dict)):
        if not isinstance(ckpt.get(key), typ):
            what = "missing" if key not in ckpt else f"a {type(ckpt[key]).__name__}"
            raise CheckpointError(f"{path}: field {key!r} is {what}, expected a {typ.__name__}")
    if ckpt["kind"] not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind {ckpt['kind']!r} (known: {', '.join(sorted(MODEL_KINDS))})")
    bad = [k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entry {bad[0]!r} is not a tensor")
    if not all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point()):
        raise CheckpointError(f"{path}: the weights contain NaN or infinite values")


#: model kinds a checkpoint may hold → their class (import paths, resolved on use). Generators of every
#: method share one class: the method is a config value resolved by :mod:`dao.diffusion.registry`.
MODEL_KINDS: dict[str, str] = {
    "generator": "dao.models.generator:DAOGenerator",
    "energy": "dao.models.energy:DAOEnergyModel",
    "property": "dao.models.property:DAOPropertyModel",
}


def model_class(kind: str) -> type[torch.nn.Module]:
    """The model class of a checkpoint ``kind`` (CheckpointError for an unknown kind)."""
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_KINDS))})")
    module, name = MODEL_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def load_model(spec: str | Path, kind: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Load a checkpoint of the given kind as an eval-mode model on ``device``."""
    ckpt = load_checkpoint(spec, kind=kind)
    cls = model_class(kind)
    try:
        config = cls.config_class.from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {ckpt['path']} has an unusable config: {exc}") from None
    try:
        model = cls(config)
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {ckpt['path']} does not match the model: {str(exc).splitlines()[0][:160]}") from None
    model.meta = ckpt.get("meta", {})
    model.checkpoint_path = ckpt["path"]
    return model.to(device).eval()


def load_generator(spec: str | Path = "default", device: str | torch.device = "cpu",
                   compile: bool = False) -> DAOGenerator:
    """Load a DAO-G checkpoint (``"default"`` for the bundled one) as an eval-mode :class:`DAOGenerator`.

    ``compile=True`` wraps the Crysformer in ``torch.compile(dynamic=True)``: the first batch pays the
    compilation (≈ 25–90 s on a CPU), later network evaluations run faster (measured 1.9× on one CPU
    thread for a batch of 16 small crystals); worth it for long sampling jobs, not for a few structures.
    """
    model = load_model(spec, "generator", device)
    if compile:
        model.backbone = torch.compile(model.backbone, dynamic=True)
    return model


def load_energy_model(spec: str | Path = "default", device: str | torch.device = "cpu") -> DAOEnergyModel:
    """Load a DAO-P checkpoint (``"default"`` for the bundled one) as an eval-mode
    :class:`~dao.models.energy.DAOEnergyModel`."""
    return load_model(spec, "energy", device)
