"""Build the 92-dim elemental descriptor table used by Crysformer's node embedding.

Categories follow the CGCNN atom features (Xie & Grossman 2018): one-hot group (18), period (7),
binned Pauling electronegativity (10), covalent radius (10), valence electrons (12), first ionisation
energy (10, log scale), electron affinity (10), block (4), molar volume (10, log scale), plus one flag
for f-block elements (lanthanides/actinides) = 92. Values come from pymatgen's element data
(ASE for covalent radii). A category whose value is unknown for an element is left all-zero.

The table is written to src/dao/resources/atom_features.json and committed: model weights depend on
it, so it must not change when pymatgen's data tables change.  Run: python tools/make_atom_features.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ase.data import covalent_radii
from pymatgen.core import Element

MAX_Z = 100


def one_hot(index: int | None, size: int) -> list[int]:
    v = [0] * size
    if index is not None and 0 <= index < size:
        v[index] = 1
    return v


def binned(value: float | None, lo: float, hi: float, bins: int) -> list[int]:
    if value is None or not math.isfinite(value):
        return [0] * bins
    idx = int((value - lo) / (hi - lo) * bins)
    return one_hot(min(max(idx, 0), bins - 1), bins)


def safe(fn):
    try:
        v = fn()
        return None if v is None else float(v)
    except Exception:  # pymatgen raises or warns for unknown data
        return None


def valence_electrons(el: Element) -> int | None:
    try:
        shells = el.full_electronic_structure
    except Exception:
        return None
    n_max = max(n for n, _, _ in shells)
    count = sum(occ for n, orb, occ in shells if n == n_max)
    # d and f electrons of the shell below the outermost count as valence for transition metals
    count += sum(occ for n, orb, occ in shells if (orb == "d" and n == n_max - 1) or (orb == "f" and n == n_max - 2))
    return int(count)


def features(z: int) -> list[int]:
    el = Element.from_Z(z)
    group = el.group  # lanthanides/actinides -> 3
    row = el.row
    if el.is_lanthanoid:
        row = 6
    if el.is_actinoid:
        row = 7
    ve = valence_electrons(el)
    ie = safe(lambda: el.ionization_energies[0])
    vol = safe(lambda: el.molar_volume)
    vec = (
        one_hot(group - 1, 18)
        + one_hot(row - 1, 7)
        + binned(safe(lambda: el.X), 0.5, 4.0, 10)
        + binned(float(covalent_radii[z]) * 100.0, 25.0, 250.0, 10)
        + one_hot(None if ve is None else min(ve, 12) - 1, 12)
        + binned(None if ie is None or ie <= 0 else math.log(ie), 1.3, 3.3, 10)
        + binned(safe(lambda: el.electron_affinity), -3.0, 3.7, 10)
        + one_hot({"s": 0, "p": 1, "d": 2, "f": 3}.get(el.block), 4)
        + binned(None if vol is None or vol <= 0 else math.log(vol), 1.5, 4.3, 10)
        + [int(el.block == "f")]
    )
    assert len(vec) == 92, len(vec)
    return vec


def main() -> None:
    table = {str(z): features(z) for z in range(1, MAX_Z + 1)}
    out = Path(__file__).resolve().parents[1] / "src" / "dao" / "resources" / "atom_features.json"
    out.write_text(json.dumps({"max_z": MAX_Z, "dim": 92, "features": table}, separators=(",", ":")))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
