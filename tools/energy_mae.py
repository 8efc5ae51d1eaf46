"""E_hull MAE of a DAO-P checkpoint on a labelled split (DiffCSP-format CSV); prints one JSON object.

    python tools/energy_mae.py --model runs/dao_p_cpu/model.pt --split ../shared/data/csp/mp_20/val.csv.gz

Predictions are DAO-P's t = 0 energy head (eV/atom). Reported beside the MAE: the MAE of always predicting
the training mean stored in the checkpoint (a floor any useful model must beat), the median absolute error,
and the MAE on the stable subset (true E_hull ≤ 0.08 eV/atom).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="DAO-P checkpoint (model.pt) or 'default'")
    ap.add_argument("--split", required=True, help="CSV(.gz) with a cif column and e_above_hull labels")
    ap.add_argument("--limit", type=int, default=None, help="only the first N labelled structures")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--max-atoms", type=int, default=None, help="skip larger cells (default: the model's max_atoms)")
    args = ap.parse_args(argv)

    import numpy as np

    from dao.data.readers import read_csv
    from dao.errors import DAOError
    from dao.models.checkpoint import load_energy_model
    from dao.models.energy import LABEL_KEY, predict_energies

    try:
        model = load_energy_model(args.model, args.device)
        crystals, skipped = read_csv(args.split)
    except DAOError as exc:
        print(f"energy_mae: error: {exc}", file=sys.stderr)
        return 2
    max_atoms = args.max_atoms or model.config.max_atoms
    labelled = [c for c in crystals if math.isfinite(float(c.meta.get(LABEL_KEY, math.nan)))]
    sized = [c for c in labelled if c.num_atoms <= max_atoms]
    if args.limit:
        sized = sized[: args.limit]
    if not sized:
        print("energy_mae: error: no labelled structures in the split", file=sys.stderr)
        return 2
    t0 = time.time()
    pred = predict_energies(model, sized, batch_size=args.batch_size)
    true = np.array([float(c.meta[LABEL_KEY]) for c in sized])
    err = np.abs(pred - true)
    stable = true <= 0.08
    mean = model.config.energy.mean
    print(json.dumps({
        "model": model.checkpoint_path, "split": args.split, "n": int(len(sized)),
        "n_unreadable": len(skipped), "n_unlabelled": len(crystals) - len(labelled),
        "n_too_large": len(labelled) - len([c for c in labelled if c.num_atoms <= max_atoms]),
        "mae_ev_per_atom": float(err.mean()), "median_ae_ev_per_atom": float(np.median(err)),
        "mae_stable_ev_per_atom": float(err[stable].mean()) if stable.any() else None, "n_stable": int(stable.sum()),
        "mae_predict_train_mean": float(np.abs(true - mean).mean()), "train_mean": mean,
        "seconds": round(time.time() - t0, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
