"""Property tasks with DAO-P: from scratch vs finetuned from the bundled DAO-P vs a composition baseline,
and SuperCon3D ln Tc with and without generated-structure augmentation (same folds, same seed).

    python bench/bench_property.py --no-tc --steps 400 --out runs/property_s400 [--tasks aflow_bulk_modulus ...]
    python bench/bench_property.py --tc-only --tc-epochs 20 --augment aug.csv --out runs/property_tc_e20
    python bench/bench_property.py --tc-only --tc-epochs 69 --tc-variants finetuned --out runs/property_tc_e69
    python bench/bench_property.py --budget 00:00:01:30 ...        # wall-clock budgets instead (constant lr)

Every neural run uses the bundled DAO-P's Crysformer size and the same training budget (optimiser steps,
epochs or wall-clock; run with one torch thread); "finetuned" starts the backbone from the bundled DAO-P,
"scratch" from random weights.
Tasks with official splits report the test MAE (perov-5 and MP-20: val, their test splits are held back);
SuperCon3D pools its three files and runs 5-fold CV. Writes <out>/results.json and results.md; prints JSON.
Runs resume: a finished task folder is reused.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir  # noqa: E402

D = data_dir()
TASKS = {  # name: (data, target, val, test, unit)
    **{f"aflow_{p}": (D / f"property/aflow/{p}/train.csv.gz", p, D / f"property/aflow/{p}/val.csv.gz",
                      D / f"property/aflow/{p}/test.csv.gz", "") for p in
       ("bulk_modulus", "shear_modulus", "debye_temperature", "thermal_conductivity", "thermal_expansion")},
    "perov5_heat_ref": (D / "csp/perov_5/train.csv.gz", "heat_ref", D / "csp/perov_5/val.csv.gz", None, "eV/atom"),
    "mp20_formation_energy": (D / "csp/mp_20/train.csv.gz", "formation_energy_per_atom", D / "csp/mp_20/val.csv.gz",
                              None, "eV/atom"),
    "mp20_band_gap": (D / "csp/mp_20/train.csv.gz", "band_gap", D / "csp/mp_20/val.csv.gz", None, "eV"),
    "jarvis_epc_tc": (D / "supercon/jarvis_epc/train.csv", "prop", D / "supercon/jarvis_epc/val.csv",
                      D / "supercon/jarvis_epc/test.csv", "K (prop = −Tc)"),
}


def config(budget: str | None = None, steps: int | None = None, epochs: int | None = None, seed: int = 0) -> dict:
    """One training config for every run. The budget is wall-clock (``budget``), optimiser steps or epochs;
    with steps or epochs the cosine schedule decays to ``lr_min`` over the run and the result does not
    depend on how busy the machine is."""
    from dao.models.checkpoint import load_checkpoint

    model = load_checkpoint("default", "energy")["config"]["model"]
    train = {"batch_size": 64, "lr": 3e-4, "lr_min": 1e-5, "warmup_steps": 100, "max_epochs": epochs or 100000,
             "max_steps": steps or -1, "max_time": None if (steps or epochs) else budget, "grad_clip": 0.5,
             "ema_decay": 0.99, "max_atoms": 500, "seed": seed, "ckpt_every_n_steps": 200}
    return {"model": model, "property": {"loss": "l1"}, "train": train}


def run(out: Path, name: str, data, target, val, test, cfg, init, folds=5, augment=None) -> dict:
    from dao.property import run_property

    folder = out / name
    if (folder / "summary.json").is_file():
        return json.loads((folder / "summary.json").read_text())
    return run_property(data, target, folder, cfg, folds=folds, init=init, val=val, test=test, device="cpu",
                        augment=augment)


def _trained_steps(folder: Path) -> int | None:
    """Optimiser steps a finished run took (from the exported model's metadata)."""
    import torch

    try:
        return int(torch.load(folder / "model.pt", map_location="cpu", weights_only=True)["meta"]["global_step"])
    except (OSError, KeyError, RuntimeError):
        return None


def pooled_supercon(out: Path) -> Path:
    pool = out / "supercon3d_pool.csv"  # ICSD-derived: stays under runs/, never committed
    if not pool.is_file():
        rows = []
        for split in ("train", "val", "test"):
            with open(D / f"supercon/supercon3d/{split}.csv", newline="") as fh:
                rows += [{"material_id": r["material_id"] or r["name"], "cif": r["cif"], "logtc": r["logtc"]}
                         for r in csv.DictReader(fh)]
        with open(pool, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=["material_id", "cif", "logtc"])
            w.writeheader()
            w.writerows(rows)
    return pool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/property")
    ap.add_argument("--budget", default="00:00:02:00", help="training wall-clock per split task and variant")
    ap.add_argument("--tc-budget", default="00:00:01:30", help="training wall-clock per SuperCon3D fold")
    ap.add_argument("--steps", type=int, default=None, help="optimiser steps per split task (replaces --budget)")
    ap.add_argument("--tc-epochs", type=int, default=None,
                    help="epochs per SuperCon3D fold (replaces --tc-budget); the augmented variant runs as many "
                         "epochs over real + generated rows, i.e. as many passes over the real ones")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--seed", type=int, default=0, help="training seed (splits and folds stay fixed)")
    ap.add_argument("--tc-only", action="store_true")
    ap.add_argument("--no-tc", action="store_true")
    ap.add_argument("--tc-variants", nargs="*", default=None,
                    help="subset of scratch, finetuned, finetuned_augmented (default: all that apply)")
    ap.add_argument("--augment", default=None, help="CSV from `dao data tc-augment` for the Tc comparison")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from dao.models.checkpoint import resolve_model_path

    init = str(resolve_model_path("default", "energy"))
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if not args.tc_only:
        for name in args.tasks:
            data, target, val, test, unit = TASKS[name]
            res = {}
            for variant, ini in (("scratch", None), ("finetuned", init)):
                cfg = config(args.budget, steps=args.steps, seed=args.seed)
                s = run(out, f"{name}_{variant}", data, target, val, test, cfg, ini)
                split = "test" if "test" in s["scores"] else "val"
                res[variant] = s["scores"][split]["mae"]
                res["composition_baseline"] = s["scores"][split]["mae_composition_baseline"]
                res["mean_predictor"] = s["scores"][split]["mae_mean_predictor"]
                res["split"], res["n"], res["unit"] = split, s["scores"][split]["n"], unit
                res["skipped"] = s["skipped"]["data"]["count"]
                res[f"{variant}_steps"] = _trained_steps(out / f"{name}_{variant}" / "model")
            results[name] = res
            (out / "results.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({name: res}), file=sys.stderr)
    if not args.no_tc:
        pool = pooled_supercon(out)
        res = {}
        variants = [("scratch", None, None), ("finetuned", init, None)]
        if args.augment:
            variants.append(("finetuned_augmented", init, args.augment))
        if args.tc_variants:
            variants = [v for v in variants if v[0] in args.tc_variants]
        for variant, ini, aug in variants:
            s = run(out, f"supercon3d_logtc_{variant}", pool, "logtc", None, None,
                    config(args.tc_budget, epochs=args.tc_epochs, seed=args.seed), ini, folds=5, augment=aug)
            res[variant] = s["scores"]["mae"]
            res[f"{variant}_per_fold"] = s["scores"]["mae_per_fold"]
            res[f"{variant}_steps_per_fold"] = [_trained_steps(out / f"supercon3d_logtc_{variant}" / f"fold{k}")
                                                for k in range(5)]
            res["composition_baseline"] = s["scores"]["mae_composition_baseline"]
            res["mean_predictor"] = s["scores"]["mae_mean_predictor"]
            if aug:
                res["augmented_structures"] = s["augment"]["n_used"]
        res.update(split="5-fold", n=s["n_used"], unit="ln K")
        results["supercon3d_logtc"] = res
        (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = ["| task | split | n | scratch | finetuned from DAO-P | composition baseline | mean predictor |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        f = lambda v: "—" if v is None else f"{v:.4g}"  # noqa: E731
        lines.append(f"| {name} | {r['split']} | {r['n']} | {f(r.get('scratch'))} | {f(r.get('finetuned'))} | "
                     f"{f(r.get('composition_baseline'))} | {f(r.get('mean_predictor'))} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
