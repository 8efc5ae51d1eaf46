"""Energy guidance judged by an independent potential: stability rate of guided against unguided DAO-G
samples, same compositions and seeds.

    python bench/bench_guidance.py --generator default --energy-model default --limit 32 --scale 20

For the first --limit MP-20 val compositions (atom counts as in the reference cell) one sample each is drawn
unguided and guided (DAO-P, scale --scale) from the same seed. Every sample is relaxed with CHGNet (FIRE on
FrechetCellFilter, --relax-steps) and judged against the reference hull of the MP entries at hand
(:mod:`dao.stability`): stability rate = share of all samples with E_hull ≤ 0.08 eV/atom (unusable or
failed ones count as unstable). Also reported: match rate (DiffCSP protocol) before and after relaxation,
DAO-P's own verdict on the unrelaxed samples, and a calibration row — the same judge on the reference
structures themselves, whose MP label is known (how far CHGNet + this hull sit from DFT). Prints JSON.
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


def judge(structures, scorer):
    from dao.stability import stability_summary

    e = scorer.e_above_hull(structures)
    return e, stability_summary(e)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--generator", default="default")
    ap.add_argument("--energy-model", default="default")
    ap.add_argument("--split", default=str(data_dir() / "csp" / "mp_20" / "val.csv.gz"))
    ap.add_argument("--limit", type=int, default=32)
    ap.add_argument("--scale", type=float, default=20.0)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--relax-steps", type=int, default=300)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=None, help="Optional folder for the samples (CIF) and per-sample JSON.")
    args = ap.parse_args()

    from dao.formula import CellComposition
    from dao.crystal import Crystal
    from dao.data.records import iter_csv_rows
    from dao.evaluate import evaluate, load_references
    from dao.models.checkpoint import load_energy_model, load_generator
    from dao.models.energy import predict_energies
    from dao.potentials import CHGNetPotential
    from dao.prediction import generate, guidance_for
    from dao.runtime import resolve_device
    from dao.stability import HullStabilityScorer, ReferenceHull, STABILITY_THRESHOLD

    dev = resolve_device(args.device)
    gen = load_generator(args.generator, dev)
    energy_model = load_energy_model(args.energy_model, dev)
    refs, ids = load_references(args.split)
    refs, ids = refs[: args.limit], ids[: args.limit]
    cells = [CellComposition.of_structure(s) for s in refs]
    hull = ReferenceHull.default()
    scorer = HullStabilityScorer(CHGNetPotential(device=str(dev)), hull, steps=args.relax_steps)
    result = {"benchmark": "guidance_stability", "generator": gen.checkpoint_path, "method": gen.method,
              "energy_model": energy_model.checkpoint_path, "judge": scorer.potential.name,
              "relax_steps": args.relax_steps, "reference_hull_entries": hull.n_entries,
              "compositions": len(cells), "scale": args.scale, "seed": args.seed,
              "steps": gen.process.resolve_steps(args.steps)}

    # calibration: the judge on the reference structures, against their MP labels
    labels = [float(r["e_above_hull"]) for r, _ in zip(iter_csv_rows(args.split), range(len(refs)))]
    e_ref, s_ref = judge(refs, scorer)
    d = np.array([e - lab for e, lab in zip(e_ref, labels) if e is not None])
    result["calibration_on_references"] = {**s_ref, "label_stability_rate": float(np.mean(np.array(labels) <= STABILITY_THRESHOLD)),
                                           "mean_abs_error_vs_label": float(np.abs(d).mean()) if len(d) else None,
                                           "mean_error_vs_label": float(d.mean()) if len(d) else None}

    for name, scale in (("unguided", None), ("guided", args.scale)):
        guidance = guidance_for(gen, energy_model if scale else None, scale, dev)[0]
        t0 = time.time()
        samples = generate(gen, cells, 1, seed=args.seed, steps=args.steps, guidance=guidance)
        seconds = time.time() - t0
        ok = [s for s in samples if s.structure is not None]
        e_self = predict_energies(energy_model, [Crystal.from_structure(s.structure) for s in ok]) if ok else np.zeros(0)
        preds = {i: [s.structure] for i, s in enumerate(samples)}
        t1 = time.time()
        ev = evaluate(preds, refs, k=1, energy_scorer=scorer, progress=False, reference_ids=ids)
        judge_seconds = time.time() - t1
        after = evaluate(ev.relaxed_predictions, refs, k=1, progress=False, reference_ids=ids)
        st = ev.summary["stability"]
        result[name] = {
            "usable": len(ok), "seconds_per_structure": round(seconds / len(samples), 3),
            "stability_rate": st["stability_rate"], "n_stable": st["n_stable"], "n_scored": st["n_scored"],
            "mean_e_above_hull": st["mean_e_above_hull"],
            "median_e_above_hull": float(np.median([x["e_above_hull"] for x in ev.samples if x.get("e_above_hull") is not None]))
            if st["n_scored"] else None,
            "relax_status": {k: sum(r.get("status") == k for r in scorer.records) for k in
                             ("converged", "not_converged", "timeout", "aborted", "error")},
            "relax_errors": sorted({r["reason"][:90] for r in scorer.records if r.get("status") == "error"})[:5],
            "match_rate": ev.summary["match_rate"], "match_rate_after_relaxation": after.summary["match_rate"],
            "rmse": ev.summary["rmse"], "rmse_after_relaxation": after.summary["rmse"],
            "dao_p_self_judged_stability_rate": float((e_self <= STABILITY_THRESHOLD).sum() / len(samples)),
            "judge_seconds_per_structure": round(judge_seconds / max(len(ok), 1), 2),
        }
        if args.out:
            folder = Path(args.out) / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, s in enumerate(samples):
                if s.structure is not None:
                    s.structure.to(filename=str(folder / f"{ids[i]}_0.cif"))
            (folder / "samples.json").write_text(json.dumps(ev.samples, indent=1, default=str))
        print(json.dumps({name: result[name]}), file=sys.stderr)
    result.update(environment(dev))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
