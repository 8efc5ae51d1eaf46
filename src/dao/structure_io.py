"""Writing predictions: CIF (P1 and symmetrized), extxyz and a JSON summary, all-or-nothing."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextmanager
def staged_output_dir(out: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success its files are moved into ``out``, on error it
    is deleted, so a failed run never leaves half-written files."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        yield tmp
        out.mkdir(parents=True, exist_ok=True)
        for f in sorted(tmp.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def symmetry_info(structure: Any, symprec: float = 0.1) -> dict:
    """Space group found by spglib (via pymatgen) at ``symprec`` Å; P1 when none."""
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sga = SpacegroupAnalyzer(structure, symprec=symprec)
            return {"number": int(sga.get_space_group_number()), "symbol": sga.get_space_group_symbol(), "symprec": symprec}
    except Exception:
        return {"number": 1, "symbol": "P1", "symprec": symprec}


def write_cif(structure: Any, path: Path, symprec: float | None = None) -> None:
    from pymatgen.io.cif import CifWriter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        CifWriter(structure, symprec=symprec).write_file(str(path))


def write_extxyz(structures: Iterable[Any], infos: list[dict], path: Path) -> None:
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = []
    for s, info in zip(structures, infos):
        atoms = AseAtomsAdaptor.get_atoms(s)
        atoms.info.update({k: v for k, v in info.items() if isinstance(v, (int, float, str, bool))})
        frames.append(atoms)
    write(str(path), frames, format="extxyz")


def write_json(obj: Any, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, default=str) + "\n")
