"""Is the A/B site of a perov-5 cation predictable from its chemistry? (docs/templates.md, 'perov-5').

perov-5 (Castelli et al.) enumerates ordered cation pairs: for most compositions ABX3 both A-on-A and B-on-A
cells are entries, so a composition alone does not say which of two structures a row holds. This script reads
the perov-5 splits, finds each row's A site (the cation whose six nearest anions are farther away) and prints
JSON: how often the A cation is the larger (atomic radius) or the less electronegative one, and how often a
val composition occurs more than once across the splits at hand.

    DAO_DATA_DIR=/work/shared/data python bench/bench_perov_sites.py [--rows 1000]
"""
from __future__ import annotations

import argparse
import json
from collections import Counter

import numpy as np

from _common import data_dir
from dao.data.readers import read_csv

ANIONS = {"O", "N", "F", "S", "Cl", "Br", "I"}


def a_site(structure) -> tuple[str, str] | None:
    """(A cation, B cation) of a 5-site perovskite cell, or None when it has not two cations."""
    cations = [i for i, s in enumerate(structure) if s.specie.symbol not in ANIONS]
    if len(cations) != 2:
        return None
    reach = {}
    for i in cations:
        d = sorted(n.nn_distance for n in structure.get_neighbors(structure[i], 5.0)
                   if n.specie.symbol in ANIONS)
        reach[i] = float(np.mean(d[:6])) if len(d) >= 6 else float("inf")
    a, b = sorted(cations, key=lambda i: -reach[i])
    return structure[a].specie.symbol, structure[b].specie.symbol


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1000)
    args = p.parse_args()
    from pymatgen.core import Element

    val, _ = read_csv(data_dir() / "csp/perov_5/val.csv.gz")
    train, _ = read_csv(data_dir() / "csp/perov_5/train.csv.gz")
    formulas = Counter(c.to_structure().composition.reduced_formula for c in train + val)
    larger = lower_x = rows = same = 0
    for c in val[: args.rows]:
        ab = a_site(c.to_structure())
        if ab is None:
            continue
        a, b = Element(ab[0]), Element(ab[1])
        if a == b:
            same += 1
            continue
        rows += 1
        larger += (a.atomic_radius or 0) > (b.atomic_radius or 0)
        lower_x += a.X < b.X
    twice = np.mean([formulas[c.to_structure().composition.reduced_formula] > 1 for c in val[: args.rows]])
    print(json.dumps({"val_rows_read": min(args.rows, len(val)), "rows_with_two_distinct_cations": rows,
                      "rows_with_one_cation_on_both_sites": same,
                      "a_site_is_larger_atom": round(larger / max(rows, 1), 3),
                      "a_site_is_less_electronegative": round(lower_x / max(rows, 1), 3),
                      "val_composition_seen_twice_in_train_plus_val": round(float(twice), 3),
                      "train_rows": len(train), "val_rows": len(val)}, indent=1))


if __name__ == "__main__":
    main()
