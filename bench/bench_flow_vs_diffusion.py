"""Flow matching against diffusion: match rate, RMSE and seconds per structure at several step counts.

Train both generators on the same data for the same wall-clock (run the two commands side by side, one
torch thread each, so they share the machine equally), e.g.:

    OMP_NUM_THREADS=1 dao train generator --method diffusion --max-time 00:00:25:00 --out runs/cmp_diff ...
    OMP_NUM_THREADS=1 dao train generator --method flow      --max-time 00:00:25:00 --out runs/cmp_flow ...

then score them on the same MP-20 val rows with the same seed:

    python bench/bench_flow_vs_diffusion.py --diffusion runs/cmp_diff/model.pt --flow runs/cmp_flow/model.pt \\
        --limit 100 --diffusion-steps 1000 --flow-steps 10 20 50 100

Prints JSON; the issue's target is a flow setting that reaches the diffusion match rate at ≥ 20× less
sampling time per structure.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import data_dir  # noqa: E402


def score(model: str, steps: int, split: Path, limit: int, seed: int, out: Path, batch_size: int) -> dict:
    from dao.benchmark import run_benchmark

    s = run_benchmark(split, model, 1, out, limit=limit, seed=seed, steps=steps, batch_size=batch_size, progress=False)
    g = s["generation"]
    return {"steps": steps, "method": g["method"], "match_rate": s["match_rate"], "rmse": s["rmse"],
            "match_rate_unfiltered": s["match_rate_unfiltered"], "rmse_unfiltered": s["rmse_unfiltered"],
            "seconds_per_structure": g["seconds_per_structure_this_run"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--diffusion", default=None)
    ap.add_argument("--diffusion-from", default=None,
                    help="summary.json of an earlier `dao benchmark` of the diffusion model on the same rows and seed "
                         "(reused instead of sampling 1000 PC steps again)")
    ap.add_argument("--flow", required=True)
    ap.add_argument("--split", default=str(data_dir() / "csp" / "mp_20" / "val.csv.gz"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--diffusion-steps", type=int, nargs="+", default=[1000])
    ap.add_argument("--flow-steps", type=int, nargs="+", default=[10, 20, 50, 100])
    ap.add_argument("--out", default=None, help="keep predictions here (default: a temporary folder)")
    args = ap.parse_args()

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="dao_flow_vs_diff_"))
    rows = []
    if args.diffusion_from:
        prev = json.loads(Path(args.diffusion_from).read_text())
        g = prev["generation"]
        if g["num_compositions"] != args.limit or g["seed"] != args.seed or g["k"] != 1:
            raise SystemExit("--diffusion-from was run on other rows, seed or k")
        rows.append({"model": g["model"], "steps": g["steps"], "method": g["method"], "match_rate": prev["match_rate"],
                     "rmse": prev["rmse"], "match_rate_unfiltered": prev["match_rate_unfiltered"],
                     "rmse_unfiltered": prev["rmse_unfiltered"],
                     "seconds_per_structure": g["seconds_per_structure_this_run"], "from": args.diffusion_from})
    elif args.diffusion is None:
        raise SystemExit("give --diffusion or --diffusion-from")
    jobs = [("flow", args.flow, args.flow_steps)]
    if args.diffusion:
        jobs.insert(0, ("diffusion", args.diffusion, args.diffusion_steps))
    for name, model, steps_list in jobs:
        for steps in steps_list:
            rows.append({"model": model, **score(model, steps, Path(args.split), args.limit, args.seed,
                                                 root / f"{name}_{steps}", args.batch_size)})
    diff = max((r for r in rows if r["method"] == "diffusion"), key=lambda r: r["steps"])
    winners = [r for r in rows if r["method"] == "flow" and (r["match_rate"] or 0) >= (diff["match_rate"] or 0)
               and r["seconds_per_structure"] * 20 <= diff["seconds_per_structure"]]
    print(json.dumps({"benchmark": "flow_vs_diffusion", "split": args.split, "limit": args.limit, "seed": args.seed,
                      "results": rows, "target_met": bool(winners),
                      "fastest_flow_meeting_target": min(winners, key=lambda r: r["steps"]) if winners else None},
                     indent=2))


if __name__ == "__main__":
    main()
