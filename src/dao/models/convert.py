"""Convert the official DAO checkpoints (GLAD-RUC/DAO, PyTorch Lightning) into DAO model checkpoints.

See docs/convert.md. An official checkpoint of DAO-G (``CrystGenerativePretrainModel`` /
``CrystGenerativeFinetuneModel``), DAO-P (``IEPModule`` or a pretrain model with its ``scalar_out`` head)
or a finetuned property model (``CrystPredictiveFinetuneModel``, head ``predictor``) is read **without
executing pickle code**, every official parameter is mapped onto a Crysformer with the official
architecture switches (:data:`dao.nn.crysformer.OFFICIAL_ARCHITECTURE`), and anything that cannot be
mapped (an unexpected or missing key, a wrong shape) is refused with an error naming the key.

Exact re-parametrisations: the official ``to_kv`` is split into our ``k`` and ``v``; the official edge
projection ``edges_to_kv`` has a bias b_e that is added to both keys and values. Added to the keys it
shifts all logits of atom i by the same q_i·b_e, which the softmax removes; added to the values it adds
Σ_j α_ij b_e = b_e. So b_e is folded into our key and value biases and the function is unchanged.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch

from dao.errors import CheckpointError
from dao.models.checkpoint import model_class, save_model
from dao.nn.crysformer import OFFICIAL_ARCHITECTURE, CrysformerConfig
from dao.nn.embeddings import atom_feature_table

KINDS = ("generator", "energy", "property")
#: official parameters that our models have no use for: unused embeddings and heads, and the diffusion
#: schedules' buffers (recomputed by our process from the config this converter writes)
IGNORED = ("decoder.node_embedding.", "decoder.type_out.", "beta_scheduler.", "sigma_scheduler.")
#: the official scalar head of each kind (its prefix) and the official heads a kind ignores
SCALAR_HEAD = {"generator": None, "energy": "decoder.scalar_out.", "property": "predictor."}
IGNORED_BY_KIND = {"generator": ("decoder.scalar_out.",), "energy": (),
                   "property": ("decoder.scalar_out.", "decoder.lattice_out.", "decoder.coord_out.")}


class Opaque:
    """Stand-in for any class or function a checkpoint's pickle names beyond plain containers and tensors
    (OmegaConf configs, Lightning's AttributeDict, callbacks' state, ...). Unpickling calls it with the
    recorded arguments and state, which it only stores: nothing named in the file is imported or run."""

    qualified_name = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # not called when unpickled by NEWOBJ
        self.recorded_args, self.recorded_kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.recorded_state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        vars(self).setdefault("recorded_items", {})[key] = value

    def append(self, value: Any) -> None:
        vars(self).setdefault("recorded_list", []).append(value)

    def extend(self, values: Any) -> None:
        vars(self).setdefault("recorded_list", []).extend(values)


def _stand_in(name: str) -> type:
    module, _, qual = name.rpartition(".")
    return type(qual or name, (Opaque,), {"__module__": module, "qualified_name": name})


def safe_load(path: str | Path) -> Any:
    """``torch.load(weights_only=True)``; a file that names other globals (a Lightning checkpoint's
    hyper-parameters) is loaded again, still weights-only, with every such global replaced by an
    :class:`Opaque` stand-in. Raises CheckpointError for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        pass
    except Exception as exc:
        raise CheckpointError(f"unreadable checkpoint {path}: {type(exc).__name__}") from None
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        with torch.serialization.safe_globals([(_stand_in(n), n) for n in names]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # torch refuses some modules (os, subprocess, ...) even as stand-ins
        why = [ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln] or ["a global it refuses"]
        raise CheckpointError(f"refused checkpoint {path}: its pickle names {why[0][:200]}") from None
    except (zipfile.BadZipFile, RuntimeError, ValueError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"unreadable checkpoint {path}: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else ''}") from None


def plain(obj: Any, depth: int = 0) -> Any:
    """Plain Python data (dict, list, str, int, float, bool, None) from loaded hyper-parameters: OmegaConf
    containers and nodes (stand-ins) are read through their recorded state; anything else becomes None."""
    if depth > 50:
        return None
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k): plain(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, depth + 1) for v in obj]
    if isinstance(obj, Opaque):
        rec = vars(obj)
        state = rec.get("recorded_state")
        state = state[0] if isinstance(state, tuple) and state else state
        if rec.get("recorded_items"):
            return plain(rec["recorded_items"], depth + 1)
        if isinstance(state, dict) and "_content" in state:
            return plain(state["_content"], depth + 1)
        if isinstance(state, dict) and "_val" in state:
            return plain(state["_val"], depth + 1)
        if rec.get("recorded_list"):
            return plain(rec["recorded_list"], depth + 1)
    return None


def find_key(tree: Any, key: str) -> Any:
    """The first value stored under ``key`` anywhere in nested plain data (depth first), or None."""
    if isinstance(tree, dict):
        if tree.get(key) is not None:
            return tree[key]
        for value in tree.values():
            found = find_key(value, key)
            if found is not None:
                return found
    elif isinstance(tree, list):
        for value in tree:
            found = find_key(value, key)
            if found is not None:
                return found
    return None


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, int]:
    """The (rows, columns) of the official weight matrix ``key``."""
    if key not in state:
        raise CheckpointError(f"official checkpoint: missing key {key!r}")
    if state[key].ndim != 2:
        raise CheckpointError(f"official checkpoint: {key} has shape {tuple(state[key].shape)}, expected a matrix")
    return int(state[key].shape[0]), int(state[key].shape[1])


#: official CrysFormer options whose other values change the function (the official configs use these)
REQUIRED_OPTIONS = {"edge_style": "fc", "ip": True, "norm_edge": True, "dis_emb": "sin"}


def _check_variant(hparams: dict) -> None:
    """CheckpointError when the hyper-parameters name an official variant we do not implement."""
    decoder = hparams.get("decoder") if isinstance(hparams.get("decoder"), dict) else {}
    for key, want in REQUIRED_OPTIONS.items():
        got = decoder.get(key)
        if got is not None and got != want:
            raise CheckpointError(f"official checkpoint: decoder.{key} = {got!r} is not supported (only {want!r})")


def infer_backbone(state: dict[str, torch.Tensor], hparams: dict, kind: str,
                   heads: int | None = None) -> CrysformerConfig:
    """The Crysformer config of an official state dict: sizes from the shapes, the number of attention
    heads from the hyper-parameters (``head_num``) unless given, the official architecture switches."""
    _check_variant(hparams)
    hidden, _ = _shape(state, "decoder.embedding_in.1.weight")
    _, latent_in = _shape(state, "decoder.atom_latent_emb.weight")
    _, edge_dim = _shape(state, "decoder.block_0.attention.fn.edges_to_kv.weight")
    layers = 0
    while f"decoder.block_{layers}.attention.norm.weight" in state:
        layers += 1
    if (edge_dim - 9) % 6 or edge_dim <= 9:
        raise CheckpointError(f"official checkpoint: edge width {edge_dim} is not 9 + 6K (the 'sin' edge embedding)")
    if heads is None:
        heads = find_key(hparams.get("decoder"), "head_num") or find_key(hparams, "head_num")
    if not isinstance(heads, int) or isinstance(heads, bool) or heads < 1:
        raise CheckpointError("official checkpoint: the number of attention heads (decoder.head_num) is not in its "
                              "hyper-parameters; pass it with --heads")
    if hidden % heads:
        raise CheckpointError(f"official checkpoint: hidden width {hidden} is not a multiple of {heads} heads")
    _, ffn = _shape(state, "decoder.block_0.ffn.fn.net.2.weight")
    heads_out = {"generator": ["lattice", "coord"], "energy": ["lattice", "coord", "energy"],
                 "property": ["energy"]}[kind]
    return CrysformerConfig(hidden=hidden, layers=layers, heads=heads, num_freqs=(edge_dim - 9) // 6,
                            time_dim=latent_in - hidden, ffn_mult=max(ffn // hidden, 1), heads_out=heads_out,
                            final_norm="decoder.final_layer_norm.weight" in state,
                            **{k: v for k, v in OFFICIAL_ARCHITECTURE.items() if k != "final_norm"})


def _layer_map(i: int) -> dict[str, str]:
    """Our key suffix → official key, for layer ``i`` (the k/v split and the edge bias are handled apart)."""
    o, ours = f"decoder.block_{i}.", f"layers.{i}."
    pairs = {"norm_attn": "attention.norm", "attn.q": "attention.fn.to_q", "attn.out": "attention.fn.to_out",
             "attn.edge_norm": "attention.fn.edge_norm", "norm_ffn": "ffn.norm", "ffn.0": "ffn.fn.net.0",
             "ffn.2": "ffn.fn.net.2"}
    out = {f"{ours}{a}.{p}": f"{o}{b}.{p}" for a, b in pairs.items() for p in ("weight", "bias")}
    out[f"{ours}attn.edge.weight"] = f"{o}attention.fn.edges_to_kv.weight"
    out[f"{ours}gate_attn.gate.weight"] = f"{o}attention.residue.proj.0.weight"
    out[f"{ours}gate_ffn.gate.weight"] = f"{o}ffn.residue.proj.0.weight"
    return out


def official_key_map(cfg: CrysformerConfig, kind: str) -> dict[str, str]:
    """Backbone key (ours, without the ``backbone.`` prefix) → official key, for the one-to-one tensors."""
    out = {"atom_embedding.proj.weight": "decoder.embedding_in.1.weight",
           "atom_embedding.proj.bias": "decoder.embedding_in.1.bias",
           "input.weight": "decoder.atom_latent_emb.weight", "input.bias": "decoder.atom_latent_emb.bias"}
    for i in range(cfg.layers):
        out.update(_layer_map(i))
    if cfg.final_norm:
        out.update({f"final_norm.{p}": f"decoder.final_layer_norm.{p}" for p in ("weight", "bias")})
    if "lattice" in cfg.heads_out:
        out["lattice_head.weight"] = "decoder.lattice_out.weight"
    if "coord" in cfg.heads_out:
        out["coord_head.weight"] = "decoder.coord_out.weight"
    if SCALAR_HEAD[kind] is not None:
        out.update({f"energy_head.{j}.{p}": f"{SCALAR_HEAD[kind]}{j}.{p}" for j in (0, 2) for p in ("weight", "bias")})
    return out


def _check_table(state: dict[str, torch.Tensor]) -> None:
    key = "decoder.embedding_in.0.weight"
    table = atom_feature_table("cgcnn")
    got = state.get(key)
    if got is None or tuple(got.shape) != tuple(table.shape):
        raise CheckpointError(f"official checkpoint: {key} is missing or not of shape {tuple(table.shape)}")
    bad = (got.float() - table).abs().amax(dim=1) > 1e-6
    if bool(bad.any()):
        raise CheckpointError(f"official checkpoint: {key} differs from the CGCNN table at Z = {int(bad.nonzero()[0])}")


def map_state_dict(state: dict[str, torch.Tensor], cfg: CrysformerConfig, kind: str) -> dict[str, torch.Tensor]:
    """Our backbone state dict (keys without ``backbone.``) from an official one; CheckpointError naming the
    first unexpected official key, missing official key or wrong shape."""
    _check_table(state)
    mapping = official_key_map(cfg, kind)
    used = set(mapping.values()) | {"decoder.embedding_in.0.weight"}
    for i in range(cfg.layers):
        used |= {f"decoder.block_{i}.attention.fn.to_kv.{p}" for p in ("weight", "bias")}
        used.add(f"decoder.block_{i}.attention.fn.edges_to_kv.bias")
    ignored = IGNORED + IGNORED_BY_KIND[kind]
    unexpected = [k for k in state if k not in used and not k.startswith(ignored)]
    if unexpected:
        raise CheckpointError(f"official checkpoint: unexpected key {unexpected[0]!r} (cannot map it onto a "
                              f"{kind} model)")
    missing = [k for k in sorted(used) if k not in state]
    if missing:
        raise CheckpointError(f"official checkpoint: missing key {missing[0]!r}")
    out = {ours: state[theirs] for ours, theirs in mapping.items()}
    d = cfg.hidden
    for i in range(cfg.layers):
        o = f"decoder.block_{i}.attention.fn."
        w, b, eb = state[o + "to_kv.weight"], state[o + "to_kv.bias"], state[o + "edges_to_kv.bias"]
        if tuple(w.shape) != (2 * d, d) or tuple(b.shape) != (2 * d,) or tuple(eb.shape) != (d,):
            raise CheckpointError(f"official checkpoint: {o}to_kv / edges_to_kv.bias have the wrong shape")
        out[f"layers.{i}.attn.k.weight"], out[f"layers.{i}.attn.v.weight"] = w[:d], w[d:]
        out[f"layers.{i}.attn.k.bias"], out[f"layers.{i}.attn.v.bias"] = b[:d] + eb, b[d:] + eb
    return {k: v.detach().float().clone() for k, v in out.items()}


#: the official cosine schedule clips β_t to [1e-4, 0.9999] (DiffCSP's cosine_beta_schedule)
OFFICIAL_BETA_CLIP = {"beta_min": 1e-4, "beta_max": 0.9999}


def _schedule(state: dict[str, torch.Tensor], hparams: dict) -> dict[str, Any]:
    """The diffusion schedule (T, σ_min, σ_max) from the official scheduler buffers, else the
    hyper-parameters, else the official defaults (1000, 0.005, 0.5); β clipped as the official code does."""
    sigmas = state.get("sigma_scheduler.sigmas")
    if sigmas is not None and sigmas.ndim == 1 and len(sigmas) >= 3:
        out = {"num_steps": len(sigmas) - 1, "sigma_min": float(sigmas[1]), "sigma_max": float(sigmas[-1])}
    else:
        out = {"num_steps": find_key(hparams, "timesteps") or 1000,
               "sigma_min": find_key(hparams, "sigma_begin") or 0.005, "sigma_max": find_key(hparams, "sigma_end") or 0.5}
    out.update(OFFICIAL_BETA_CLIP)
    stored = state.get("beta_scheduler.alphas_cumprod")
    if stored is not None:  # the official ᾱ_t buffer (t = 0..T) must be the schedule we sample with
        from dao.diffusion.schedules import cosine_alpha_bar

        ours = cosine_alpha_bar(int(out["num_steps"]), 0.008, **OFFICIAL_BETA_CLIP)
        if stored.shape != ours.shape or not torch.allclose(stored.double(), ours, rtol=0, atol=1e-6):
            raise CheckpointError("official checkpoint: beta_scheduler.alphas_cumprod is not the official cosine "
                                  "schedule (s = 0.008, β clipped to [1e-4, 0.9999]); cannot reproduce its sampler")
    if out["num_steps"] != 1000:
        raise CheckpointError(f"official checkpoint: T = {out['num_steps']} diffusion steps; DAO's time embedding "
                              "reads t/T·1000, which equals the official integer-time embedding only for T = 1000")
    return out


def build_model(kind: str, backbone: CrysformerConfig, schedule: dict[str, Any], mean: float, std: float,
                max_atoms: int, target: str = "property") -> torch.nn.Module:
    """A fresh model of ``kind`` with the given backbone config and target standardisation."""
    cls = model_class(kind)
    d: dict[str, Any] = {"model": backbone.to_dict(), "max_atoms": max_atoms}
    if kind == "property":
        d.update({"mean": mean, "std": std, "target": target})
    else:
        d.update({"method": "diffusion", "diffusion": schedule})
        if kind == "energy":
            d["energy"] = {"mean": mean, "std": std}
    return cls(cls.config_class.from_dict(d))


def read_scaler(path: str | Path) -> tuple[float, float]:
    """(mean, std) of an official scaler file (``prop_scaler.pt`` beside the official checkpoints: a pickled
    scaler object with ``means`` and ``stds``), read weights-only like a checkpoint."""
    obj = safe_load(path)
    state = vars(obj).get("recorded_state") if isinstance(obj, Opaque) else obj
    state = state[0] if isinstance(state, tuple) and state else state
    try:
        mean, std = (float(torch.as_tensor(state[k]).reshape(-1)[0]) for k in ("means", "stds"))
    except (TypeError, KeyError, IndexError, ValueError, RuntimeError):
        raise CheckpointError(f"{path} is not an official scaler (no scalar 'means' and 'stds')") from None
    return mean, std


def _official_state(ckpt: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(ckpt, dict) and "dao_format" in ckpt:
        raise CheckpointError(f"{path} is already a DAO checkpoint (nothing to convert)")
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{path} holds no state_dict (not an official Lightning checkpoint)")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entry {bad[0]!r} is not a tensor")
    if not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise CheckpointError(f"{path}: the weights contain NaN or infinite values")
    return state


def _check_shapes(mapped: dict[str, torch.Tensor], own: dict[str, torch.Tensor], names: dict[str, str]) -> None:
    """CheckpointError naming the official key of the first tensor whose shape does not fit our model."""
    for key, value in mapped.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise CheckpointError(f"official checkpoint: {names.get(key, key)} has shape {tuple(value.shape)}, "
                                  f"expected {tuple(own[key].shape)}")


def convert_checkpoint(src: str | Path, kind: str, out: str | Path, heads: int | None = None, mean: float = 0.0,
                       std: float = 1.0, max_atoms: int = 52, scaler: str | Path | None = None,
                       log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Convert an official DAO checkpoint ``src`` into a DAO checkpoint of ``kind`` at ``out``.

    ``mean``/``std``: the standardisation of the official model's scalar target (the official scaler is
    not stored in its checkpoint; 0/1 keeps the official model's standardised units), or ``scaler``: the
    official scaler file to read them from. Returns a summary (kind, config, counts of converted and
    ignored tensors)."""
    if kind not in KINDS:
        raise CheckpointError(f"unknown kind {kind!r} (known: {', '.join(KINDS)})")
    if scaler is not None:
        mean, std = read_scaler(scaler)
    if not (std > 0 and mean == mean):
        raise CheckpointError(f"--std must be > 0 and --mean a number, got mean {mean}, std {std}")
    path = Path(src)
    ckpt = safe_load(path)
    state = _official_state(ckpt, path)
    hparams = plain(ckpt.get("hyper_parameters", {})) if isinstance(ckpt, dict) else {}
    hparams = hparams if isinstance(hparams, dict) else {}
    backbone = infer_backbone(state, hparams, kind, heads)
    mapped = map_state_dict(state, backbone, kind)
    target = find_key(hparams.get("data"), "prop")  # the official data config's target column
    target = target if isinstance(target, str) and target and "$" not in target else "property"
    model = build_model(kind, backbone, _schedule(state, hparams), mean, std, max_atoms, target)
    _check_shapes(mapped, model.backbone.state_dict(), official_key_map(backbone, kind))
    try:
        model.backbone.load_state_dict(mapped, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"official checkpoint does not fit the inferred model: {str(exc).splitlines()[-1][:200]}") from None
    meta = {"converted_from": path.name, "source": "official DAO checkpoint (GLAD-RUC/DAO)",
            "epoch": ckpt.get("epoch") if isinstance(ckpt.get("epoch"), int) else None,
            "global_step": ckpt.get("global_step") if isinstance(ckpt.get("global_step"), int) else None}
    save_model(out, model, meta)
    summary = {"kind": kind, "out": str(out), "config": model.config.to_dict(), "tensors": len(mapped),
               "ignored": sum(1 for k in state if k.startswith(IGNORED + IGNORED_BY_KIND[kind]))}
    if log is not None:
        b = backbone
        log(f"converted {path.name} → {out}: {kind}, hidden {b.hidden}, {b.layers} layers, {b.heads} heads, "
            f"K = {b.num_freqs}, time_dim {b.time_dim}; {summary['tensors']} tensors, {summary['ignored']} ignored")
    return summary
