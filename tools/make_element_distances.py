"""Write ``src/dao/resources/element_distances.npz``: the element distance matrices that are slow to build
(``dao.templates.elements.CACHED``), so that ranking template candidates does not rebuild them per process.

    python tools/make_element_distances.py [--out src/dao/resources/element_distances.npz]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from dao.structure_io import atomic_write
from dao.templates.elements import CACHED, compute_distance_matrix


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src/dao/resources/element_distances.npz"))
    a = p.parse_args()
    arrays = {name: compute_distance_matrix(name) for name in CACHED}
    atomic_write(a.out, lambda fh: np.savez_compressed(fh, **arrays))
    print(f"wrote {a.out}: {', '.join(arrays)}")


if __name__ == "__main__":
    main()
