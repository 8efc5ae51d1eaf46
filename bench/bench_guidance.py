"""Energy guidance: stability rate of guided against unguided DAO-G samples, same compositions and seeds.

    python bench/bench_guidance.py --generator default --energy-model default --limit 32 --scale 20

For the first --limit MP-20 val compositions (atom counts as in the reference cell) one sample each is drawn
unguided and guided from the same seed. Each sample is scored by DAO-P at t = 0 (E_hull, eV/atom);
stability rate = share of samples with E_hull ≤ 0.08 eV/atom (DESIGN §6). Unusable samples (degenerate
cells) count as unstable. Note the judge is the guiding model itself: an independent judge (CHGNet) is
a separate task. Prints JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir, environment  # noqa: E402

STABLE = 0.08


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", default="default")
    ap.add_argument("--energy-model", default="default")
    ap.add_argument("--split", default=str(data_dir() / "csp" / "mp_20" / "val.csv.gz"))
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    from dao.benchmark import cell_of
    from dao.crystal import Crystal
    from dao.evaluate import load_references
    from dao.models.checkpoint import load_energy_model, load_generator
    from dao.models.energy import predict_energies
    from dao.prediction import generate, guidance_for
    from dao.runtime import resolve_device

    dev = resolve_device(args.device)
    gen = load_generator(args.generator, dev)
    energy_model = load_energy_model(args.energy_model, dev)
    refs, _ = load_references(args.split)
    cells = [cell_of(s) for s in refs[: args.limit]]
    result = {"benchmark": "guidance", "generator": gen.checkpoint_path, "energy_model": energy_model.checkpoint_path,
              "compositions": len(cells), "scale": args.scale, "seed": args.seed, "steps": args.steps or gen.default_steps}
    for name, scale in (("unguided", None), ("guided", args.scale)):
        guidance = guidance_for(gen, energy_model if scale else None, scale, dev)[0]
        t0 = time.time()
        samples = generate(gen, cells, 1, seed=args.seed, steps=args.steps, guidance=guidance)
        seconds = time.time() - t0
        ok = [s for s in samples if s.structure is not None]
        e = predict_energies(energy_model, [Crystal.from_structure(s.structure) for s in ok]) if ok else np.zeros(0)
        result[name] = {"usable": len(ok), "stability_rate": float((e <= STABLE).sum() / len(samples)),
                        "mean_e_hull": float(e.mean()) if len(e) else None,
                        "median_e_hull": float(np.median(e)) if len(e) else None,
                        "seconds_per_structure": round(seconds / len(samples), 3)}
    result.update(environment(dev))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
