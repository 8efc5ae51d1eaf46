"""Train DAO-G on the accelerator machine from the pre-parsed tensor file (runs THERE: torch + numpy only).

Steps (recipes/accelerator/README.md): load ``.accel/train_set.npz`` onto the device, hold out a small
validation slice, probe the step time of every model size × batch size for ``--probe-seconds``, pick the
largest size that still sees ``--min-epochs`` epochs in the time left (diffusion; flow too when the probe
says both fit the time and the 64 MiB that can come back), train it with EMA and a warm-up + cosine
schedule until the ``--budget-seconds`` deadline, log the validation loss, measure sampling speed, and
write each model in the DAO checkpoint layout (:mod:`dao.models.checkpoint`) as fp16 chunks of at most
15 MiB under ``$OUT`` with one JSON log that holds the manifest (sha256 of every chunk and of the whole).
``reassemble.py`` joins them back here. bf16 autocast + TF32 on CUDA (bf16 only when a check on a real
batch agrees with fp32), fp32 on CPU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # the device has no installed dao
sys.path.insert(0, str(Path(__file__).resolve().parent))  # device_io, also when imported from elsewhere

from dao.crystal import CrystalBatch  # noqa: E402
from dao.data.dataset import BucketBatchSampler  # noqa: E402
from dao.errors import DAOError  # noqa: E402
from dao.models.generator import DAOGenerator, GeneratorConfig  # noqa: E402
from dao.nn.crysformer import CrysformerConfig  # noqa: E402
from device_io import LogFile, export_chunks, sample_speed  # noqa: E402

#: the probed model sizes: name → Crysformer settings (L is the published size, 25.2 M parameters)
SIZES = {"S": {"hidden": 256, "layers": 6, "heads": 8}, "M": {"hidden": 384, "layers": 6, "heads": 8},
         "L": {"hidden": 384, "layers": 12, "heads": 8}, "tiny": {"hidden": 32, "layers": 2, "heads": 4,
                                                                  "num_freqs": 8, "time_dim": 16}}
#: what can come back: 8 files of ≤ 16 MiB, 64 MiB together; one file is the JSON log
RETURN_BYTES = 62 * 2**20


class DeviceData:
    """The training set on the device; ``batch(idx)`` builds a :class:`CrystalBatch` by gathering."""

    def __init__(self, arrays: dict[str, np.ndarray], device: torch.device) -> None:
        self.offsets = arrays["offsets"].astype(np.int64)
        self.sizes = np.diff(self.offsets)
        self.device = device
        self.numbers = torch.from_numpy(arrays["numbers"].astype(np.int64)).to(device)
        self.frac = torch.from_numpy(arrays["frac"].astype(np.float32)).to(device)
        self.lattices = torch.from_numpy(arrays["lattices"].astype(np.float32)).to(device)

    def __len__(self) -> int:
        return len(self.sizes)

    def batch(self, idx: Sequence[int]) -> CrystalBatch:
        idx = np.asarray(idx, dtype=np.int64)
        counts = self.sizes[idx]
        starts = np.repeat(self.offsets[idx] - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        atoms = torch.from_numpy(starts + np.arange(int(counts.sum()))).to(self.device, non_blocking=True)
        num_atoms = torch.from_numpy(counts).to(self.device)
        crystal = torch.from_numpy(np.repeat(np.arange(len(idx)), counts)).to(self.device)
        return CrystalBatch(atom_types=self.numbers[atoms], frac=self.frac[atoms],
                            lattice=self.lattices[torch.from_numpy(idx).to(self.device)], num_atoms=num_atoms,
                            batch=crystal)


def load_tensor_file(path: Path) -> dict[str, np.ndarray]:
    """The arrays ``prepare_data.py`` wrote, checked for consistency (DAOError naming the problem)."""
    if not path.is_file():
        raise DAOError(f"no tensor file {path} (run recipes/accelerator/prepare_data.py first)")
    with np.load(path, allow_pickle=False) as z:
        missing = {"numbers", "frac", "lattices", "offsets"} - set(z.files)
        if missing:
            raise DAOError(f"{path}: missing array(s) {', '.join(sorted(missing))}")
        arrays = {k: z[k] for k in z.files}
    off = arrays["offsets"]
    if (off[0] != 0 or off[-1] != len(arrays["numbers"]) or len(off) != len(arrays["lattices"]) + 1
            or len(arrays["frac"]) != len(arrays["numbers"]) or np.any(np.diff(off) < 1)):
        raise DAOError(f"{path}: offsets, numbers, frac and lattices do not agree")
    if not (np.isfinite(arrays["frac"]).all() and np.isfinite(arrays["lattices"]).all()):
        raise DAOError(f"{path}: non-finite coordinates or lattices")
    return arrays


def make_model(size: str, method: str, max_atoms: int, device: torch.device, seed: int = 0) -> DAOGenerator:
    torch.manual_seed(seed)
    cfg = GeneratorConfig(model=CrysformerConfig(**SIZES[size]), method=method, max_atoms=max_atoms)
    return DAOGenerator(cfg).to(device).train()


def autocast(device: torch.device, bf16: bool) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def endless(sampler: BucketBatchSampler) -> Iterator[list[int]]:
    """The sampler's batches, epoch after epoch."""
    while True:
        yield from sampler


def probe_one(data: DeviceData, train_idx: np.ndarray, size: str, batch_size: int, seconds: float,
              bf16: bool) -> dict:
    """Median seconds per optimiser step of one (size, batch size) over real batches for about ``seconds``
    (at least one timed step, after 2 warm-up steps on CUDA, 1 on CPU)."""
    warmup = 2 if data.device.type == "cuda" else 1
    model = make_model(size, "diffusion", int(data.sizes.max()), data.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    params = sum(p.numel() for p in model.parameters())
    sampler = BucketBatchSampler(data.sizes[train_idx], batch_size, seed=1)
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    try:
        for i, b in enumerate(endless(sampler)):
            t0 = time.perf_counter()
            with autocast(data.device, bf16):
                loss = model.loss(data.batch(train_idx[b]))["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(data.device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
            if time.perf_counter() > t_end and times:
                break
    except torch.cuda.OutOfMemoryError:
        return {"size": size, "batch_size": batch_size, "oom": True}
    except RuntimeError as exc:  # recorded; the plan uses the combinations that ran
        return {"size": size, "batch_size": batch_size, "error": str(exc).splitlines()[0][:300]}
    finally:
        del model, opt
        if data.device.type == "cuda":
            torch.cuda.empty_cache()
    step = float(np.median(times)) if times else math.inf
    return {"size": size, "batch_size": batch_size, "params": params, "steps_timed": len(times),
            "seconds_per_step": step, "crystals_per_second": batch_size / step}


def choose_plan(probes: list[dict], n_train: int, train_seconds: float, min_epochs: float) -> dict:
    """The largest size reaching ``min_epochs`` in ``train_seconds`` at its fastest batch size (the smallest
    size when none does); flow beside diffusion when half the time still reaches ``min_epochs`` and both
    models fit what can come back."""
    best: dict[str, dict] = {}
    for p in probes:
        if "seconds_per_step" in p and math.isfinite(p["seconds_per_step"]):
            if p["size"] not in best or p["crystals_per_second"] > best[p["size"]]["crystals_per_second"]:
                best[p["size"]] = p
    if not best:
        raise DAOError("every probed size ran out of memory, failed or timed no step (see the log's probe)")
    ordered = sorted(best.values(), key=lambda p: p["params"])
    train_seconds = max(train_seconds, 0.0)
    epochs = {p["size"]: p["crystals_per_second"] * train_seconds / n_train for p in ordered}
    fitting = [p for p in ordered if epochs[p["size"]] >= min_epochs and 2 * p["params"] <= RETURN_BYTES]
    pick = fitting[-1] if fitting else ordered[0]
    both = (epochs[pick["size"]] / 2 >= min_epochs and 2 * 2 * pick["params"] <= RETURN_BYTES)
    return {"size": pick["size"], "batch_size": pick["batch_size"], "params": pick["params"],
            "methods": ["diffusion", "flow"] if both else ["diffusion"],
            "projected_epochs_full_budget": round(epochs[pick["size"]], 2)}


def check_bf16(data: DeviceData, idx: np.ndarray, size: str, tolerance: float = 0.02) -> dict:
    """bf16 autocast is used only if the loss of a ``size`` model on a real batch (same noise) is within
    ``tolerance`` of fp32's."""
    if data.device.type != "cuda":
        return {"bf16": False, "why": "not CUDA"}
    model = make_model(size, "diffusion", int(data.sizes.max()), data.device)
    batch = data.batch(idx[:64])
    losses = []
    for bf16 in (False, True):
        with torch.no_grad(), torch.random.fork_rng(devices=[data.device]), autocast(data.device, bf16):
            torch.manual_seed(0)
            losses.append(float(model.loss(batch)["loss"]))
    rel = abs(losses[1] - losses[0]) / max(abs(losses[0]), 1e-12)
    return {"bf16": bool(rel <= tolerance), "loss_fp32": losses[0], "loss_bf16": losses[1], "rel_diff": rel}


def val_loss(model: torch.nn.Module, data: DeviceData, val_idx: np.ndarray, batch_size: int, bf16: bool) -> float:
    """Mean loss over the validation slice, the same noise every time (comparable across the run)."""
    total, n = 0.0, 0
    devices = [data.device] if data.device.type == "cuda" else []
    with torch.no_grad(), torch.random.fork_rng(devices=devices):
        for i, b in enumerate(BucketBatchSampler(data.sizes[val_idx], batch_size, shuffle=False)):
            torch.manual_seed(1000 + i)
            with autocast(data.device, bf16):
                total += float(model.loss(data.batch(val_idx[b]))["loss"]) * len(b)
            n += len(b)
    return total / max(n, 1)


def schedule(opt: torch.optim.Optimizer, warmup: int, total: int, lr_min: float) -> Any:
    """dao.train's step schedule with torch's own schedulers (importing dao.train would import Lightning):
    linear warm-up over ``warmup`` steps, then a cosine from lr to ``lr_min`` ending at step ``total``."""
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1.0 / max(warmup, 1), total_iters=max(warmup, 1))
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total - warmup, 1), eta_min=lr_min)
    sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[max(warmup, 1)])
    sched.total_steps = total
    return sched


def _step(model: DAOGenerator, ema: DAOGenerator, opt: torch.optim.Optimizer, sched: Any, batch: CrystalBatch,
          bf16: bool, args: argparse.Namespace, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step (clipped), the schedule, and the EMA update; returns the detached loss and whether
    the gradient was non-finite. Such a step gets a zero gradient (decided on the device, no host sync), so
    one bad batch cannot spoil the weights of the run."""
    with autocast(batch.frac.device, bf16):
        loss = model.loss(batch)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
    finite = torch.isfinite(norm)
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.grad.nan_to_num_(0.0, 0.0, 0.0).mul_(finite)
    opt.step()
    if step + 1 < sched.total_steps:  # past the estimate the rate stays at lr_min
        sched.step()
    d = min(args.ema_decay, (1 + step) / (10 + step))  # the EMA warm-up of dao.train
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - d)
    return loss.detach(), ~finite


def train(data: DeviceData, train_idx: np.ndarray, val_idx: np.ndarray, plan: dict, method: str,
          seconds: float, args: argparse.Namespace, log: LogFile) -> tuple[DAOGenerator, dict]:
    """Train one generator for ``seconds``; returns its EMA copy and the run record."""
    model = make_model(plan["size"], method, int(data.sizes.max()), data.device, args.seed)
    ema = make_model(plan["size"], method, int(data.sizes.max()), data.device, args.seed).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    est_steps = max(int(seconds / plan["seconds_per_step"]), 2)
    sched = schedule(opt, min(args.warmup, est_steps // 10), est_steps, args.lr_min)
    sampler = BucketBatchSampler(data.sizes[train_idx], plan["batch_size"], seed=args.seed)
    rec = {"method": method, "estimated_steps": est_steps, "train_loss": [], "val_loss": []}
    t0 = time.perf_counter()
    step, seen, next_val, running = 0, 0, t0 + args.val_every, []
    nonfinite = torch.zeros((), dtype=torch.long, device=data.device)
    for b in endless(sampler):
        loss, bad = _step(model, ema, opt, sched, data.batch(train_idx[b]), plan["bf16"], args, step)
        step, seen, nonfinite = step + 1, seen + len(b), nonfinite + bad
        running.append(loss)
        if step % 50 == 0:
            rec["train_loss"].append([step, round(float(torch.stack(running).mean()), 5)])
            running = []
        now = time.perf_counter()
        if now >= next_val or now - t0 >= seconds:
            rec["val_loss"].append([step, round(now - t0, 1),
                                    round(val_loss(ema, data, val_idx, plan["batch_size"], plan["bf16"]), 5)])
            next_val = now + args.val_every
            log.update({f"progress_{method}": {"step": step, "val_loss": rec["val_loss"][-1]}})
        if now - t0 >= seconds:
            break
    if not rec["val_loss"] or rec["val_loss"][-1][0] != step:
        rec["val_loss"].append([step, round(time.perf_counter() - t0, 1),
                                round(val_loss(ema, data, val_idx, plan["batch_size"], plan["bf16"]), 5)])
    rec.update({"steps": step, "nonfinite_steps": int(nonfinite), "epochs": round(seen / len(train_idx), 2),
                "train_seconds": round(time.perf_counter() - t0, 1)})
    return ema.eval(), rec


def hardware(device: torch.device) -> dict:
    info = {"device": device.type, "torch": str(torch.__version__), "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update({"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda})
    return info


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=Path(".accel/train_set.npz"))
    ap.add_argument("--out", type=Path, default=None, help="default: $OUT")
    ap.add_argument("--budget-seconds", type=float, default=540.0, help="everything, from start to the last file")
    ap.add_argument("--probe-seconds", type=float, default=60.0)
    ap.add_argument("--reserve-seconds", type=float, default=60.0, help="kept for sampling and export, per model")
    ap.add_argument("--sizes", default="S,M,L")
    ap.add_argument("--batch-sizes", default="128,256,512")
    ap.add_argument("--min-epochs", type=float, default=20.0)
    ap.add_argument("--methods", default="auto", help="auto (the probe decides), diffusion, or diffusion,flow")
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--val-every", type=float, default=60.0, help="seconds between validation losses")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--lr-min", type=float, default=2e-5)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--grad-clip", type=float, default=0.5)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--sample-count", type=int, default=128)
    ap.add_argument("--sample-steps", type=int, default=None, help="default: each model's default steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    unknown = [s for s in args.sizes.split(",") if s not in SIZES]
    if unknown:
        raise DAOError(f"--sizes: unknown size(s) {', '.join(unknown)} (known: {', '.join(SIZES)})")
    if args.methods not in ("auto", "diffusion", "diffusion,flow", "flow"):
        raise DAOError(f"--methods: expected auto, diffusion, flow or diffusion,flow, got {args.methods!r}")
    out = args.out or (Path(os.environ["OUT"]) if os.environ.get("OUT") else None)
    if out is None:
        raise DAOError("no output folder: set OUT or pass --out")
    args.out = out
    return args


def run(args: argparse.Namespace) -> dict:
    t_start = time.perf_counter()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    log = LogFile(args.out / "run_log.json", {"command": " ".join(sys.argv), "hardware": hardware(device),
                                              "budget_seconds": args.budget_seconds})
    arrays = load_tensor_file(args.data)
    card_path = args.data.with_suffix(".json")
    data_card = json.loads(card_path.read_text()) if card_path.is_file() else {"file": str(args.data)}
    data = DeviceData(arrays, device)
    perm = np.random.default_rng(args.seed).permutation(len(data))
    n_val = max(1, min(1000, int(len(data) * args.val_fraction)))
    val_idx, train_idx = np.sort(perm[:n_val]), perm[n_val:]
    try:
        precision = check_bf16(data, train_idx, args.sizes.split(",")[-1])
    except RuntimeError as exc:  # an op without bf16 support: train in TF32 rather than not at all
        precision = {"bf16": False, "error": str(exc).splitlines()[0][:300]}
    log.update({"data": {**{k: data_card.get(k) for k in ("file", "sha256", "crystals", "atoms")},
                         "train": len(train_idx), "val": n_val}, "precision": precision,
                "load_seconds": round(time.perf_counter() - t_start, 1)})
    grid = [(s, int(b)) for s in args.sizes.split(",") for b in args.batch_sizes.split(",")]
    probes = [probe_one(data, train_idx, s, b, args.probe_seconds / len(grid), precision["bf16"]) for s, b in grid]
    left = args.budget_seconds - (time.perf_counter() - t_start)
    plan = choose_plan(probes, len(train_idx), left - args.reserve_seconds, args.min_epochs)
    if args.methods != "auto":
        plan["methods"] = args.methods.split(",")
    plan.update(bf16=precision["bf16"], seconds_per_step=next(
        p["seconds_per_step"] for p in probes if p["size"] == plan["size"] and p.get("batch_size") == plan["batch_size"]))
    log.update({"probe": probes, "plan": plan, "probe_done_at": round(time.perf_counter() - t_start, 1)})
    models = {}
    for i, method in enumerate(plan["methods"]):
        left = args.budget_seconds - (time.perf_counter() - t_start) - args.reserve_seconds * (len(plan["methods"]) - i)
        ema, rec = train(data, train_idx, val_idx, plan, method, left / (len(plan["methods"]) - i), args, log)
        try:  # the weights matter more than the speed figure: export whatever happens here
            rec["sampling"] = sample_speed(ema, data, val_idx, args.sample_count, args.sample_steps)
        except Exception as exc:  # noqa: BLE001 (recorded in the log)
            rec["sampling"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        meta = {"command": " ".join(sys.argv), "recipe": "recipes/accelerator (issue 15)", "data": data_card,
                "hardware": hardware(device), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "precision": "bf16-autocast+tf32" if plan["bf16"] else
                ("tf32" if device.type == "cuda" else "fp32"), "size": plan["size"],
                "batch_size": plan["batch_size"], "val_slice": n_val,
                **{k: rec[k] for k in ("steps", "epochs", "train_seconds", "val_loss", "sampling")}}
        models[f"dao_g_{method}"] = export_chunks(ema, meta, args.out, f"dao_g_{method}")
        log.update({f"train_{method}": rec, "models": models})
    log.update({"total_seconds": round(time.perf_counter() - t_start, 1)})
    return log.data


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        record = run(args)
    except DAOError as exc:
        print(f"dao: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"plan": record["plan"], "models": {m: {"chunks": len(v["chunks"]), "bytes": v["bytes"]}
                                                        for m, v in record["models"].items()},
                      "total_seconds": record["total_seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
