"""Pre-parse the accelerator training set into tensors (runs HERE, with pymatgen; recipes/accelerator/README.md).

Reads every training source under ``$DAO_DATA_DIR`` (``csp/<dataset>/{train,val}.csv*`` and ``pretrain/*.csv*``)
except the held-out val splits we report on (``csp/mp_20/val``, ``csp/mpts_52/val``, ``csp/perov_5/val``),
keeps cells of at most ``--max-atoms`` sites, drops every entry whose id or structure matches a held-out
entry (the ``dao train --exclude`` rule: :func:`dao.data.dedupe.remove_overlap`, pymatgen StructureMatcher
within a reduced formula) and repeated entries (same id, reduced formula and size), and writes

* ``OUT`` (default ``.accel/train_set.npz``): ``numbers`` int8 (Nt,), ``frac`` float32 (Nt, 3), ``lattices``
  float32 (B, 3, 3), ``offsets`` int64 (B + 1,), ``source`` int8 (B,) and ``sources`` (names) — the
  Niggli-reduced crystals exactly as ``dao train`` would batch them, so the device needs no pymatgen;
* ``OUT`` with ``.json``: the sources and excluded splits with sha256 and counts, the file's own sha256, the
  command and the time taken.

    DAO_DATA_DIR=/work/shared/data .venv/bin/python recipes/accelerator/prepare_data.py
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from dao.crystal import Crystal
from dao.data.dedupe import remove_overlap
from dao.data.download import _sha256
from dao.data.readers import read_any
from dao.errors import DAOError
from dao.formula import reduced_formula_of
from dao.structure_io import atomic_write, atomic_write_text

#: the val splits we report on: never trained on (by id and by structure)
HELD_OUT = ("csp/mp_20/val", "csp/mpts_52/val", "csp/perov_5/val")
#: the patterns of training sources under the data folder (missing ones are simply not there)
SOURCE_GLOBS = ("csp/*/train.csv*", "csp/*/val.csv*", "pretrain/*.csv*")
DEFAULT_OUT = Path(".accel/train_set.npz")


def _split_name(path: Path, root: Path) -> str:
    """``csp/mp_20/val`` for ``<root>/csp/mp_20/val.csv.gz``."""
    rel = path.relative_to(root).as_posix()
    return rel.split(".csv")[0]


def default_sources(root: Path) -> tuple[list[Path], list[Path]]:
    """(training sources, held-out splits) found under the data folder ``root``."""
    found = sorted({p for pattern in SOURCE_GLOBS for p in root.glob(pattern) if p.is_file()})
    held = [p for p in found if _split_name(p, root) in HELD_OUT]
    train = [p for p in found if p not in held]
    if not train:
        raise DAOError(f"no training sources under {root} (expected {', '.join(SOURCE_GLOBS)})")
    if not held:
        raise DAOError(f"none of the held-out splits {', '.join(HELD_OUT)} is under {root}: refusing to build a "
                       "training set that cannot be checked against them")
    return train, held


def _display(path: Path, root: Path) -> str:
    """A source's name in the card: relative to the data folder when inside it."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)


def drop_repeats(crystals: Sequence[Crystal]) -> tuple[list[Crystal], int]:
    """Keep the first of entries sharing id, reduced formula and size (the sources overlap); entries
    without an id are all kept."""
    seen: set[tuple[str, str, int]] = set()
    kept = []
    for c in crystals:
        cid = c.meta.get("id")
        key = (str(cid), reduced_formula_of(c.atomic_numbers), c.num_atoms)
        if cid and key in seen:
            continue
        seen.add(key)
        kept.append(c)
    return kept, len(crystals) - len(kept)


def pack(crystals: Sequence[Crystal], source_of: Sequence[int], sources: Sequence[str]) -> dict[str, np.ndarray]:
    """The tensor arrays of the module docstring (``train_on_device.load_tensor_file`` reads them)."""
    sizes = np.array([c.num_atoms for c in crystals], dtype=np.int64)
    if len(crystals) == 0:
        raise DAOError("no training crystals left after filtering")
    if int(max(c.atomic_numbers.max() for c in crystals)) > 127:
        raise DAOError("an atomic number above 127 does not fit int8")
    return {"numbers": np.concatenate([c.atomic_numbers for c in crystals]).astype(np.int8),
            "frac": np.concatenate([c.frac_coords for c in crystals]).astype(np.float32),
            "lattices": np.stack([c.lattice for c in crystals]).astype(np.float32),
            "offsets": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
            "source": np.asarray(source_of, dtype=np.int8),
            "sources": np.asarray(list(sources), dtype=str)}


def _read_sources(train: Sequence[Path], max_atoms: int, progress: bool) -> tuple[list[Crystal], dict]:
    """Crystals of every source within the size limit, each tagged with its source index (``meta["_source"]``)."""
    crystals: list[Crystal] = []
    counts: dict = {}
    for i, path in enumerate(train):  # read_any, not dao.train.load_crystals: that module imports Lightning
        cs, skipped = read_any(path, progress=progress)
        sized = [c for c in cs if c.num_atoms <= max_atoms]
        counts[str(path)] = {"read": len(cs), "unreadable": len(skipped), "too_large": len(cs) - len(sized),
                             "unreadable_examples": [f"{name}: {why}" for name, why in skipped[:5]]}
        for c in sized:
            c.meta["_source"] = i
        crystals += sized
    return crystals, counts


def prepare(root: Path, out: Path, max_atoms: int = 52, train: Sequence[Path] | None = None,
            held_out: Sequence[Path] | None = None, progress: bool = False) -> dict:
    """Build the tensor file ``out`` and its card ``out.with_suffix('.json')``; returns the card."""
    t0 = time.perf_counter()
    if train is None or held_out is None:
        found_train, found_held = default_sources(root)
        train = train if train is not None else found_train
        held_out = held_out if held_out is not None else found_held
    train, held_out = [Path(p).resolve() for p in train], [Path(p).resolve() for p in held_out]
    crystals, counts = _read_sources(train, max_atoms, progress)
    excluded = [c for p in held_out for c in read_any(p, progress=progress)[0]]
    crystals, n_excluded = remove_overlap(crystals, excluded)
    crystals, n_repeats = drop_repeats(crystals)
    names = [_display(p, root) for p in train]
    arrays = pack(crystals, [c.meta["_source"] for c in crystals], names)
    for i, name in enumerate(names):
        counts[str(train[i])]["kept"] = int((arrays["source"] == i).sum())
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(out, lambda fh: fh.write(buf.getvalue()))
    card = {"file": str(out), "bytes": out.stat().st_size, "sha256": _sha256(out),
            "crystals": int(len(crystals)), "atoms": int(arrays["offsets"][-1]), "max_atoms": max_atoms,
            "largest_cell": int(np.diff(arrays["offsets"]).max()),
            "removed_matching_held_out": n_excluded, "removed_repeats": n_repeats,
            "sources": [{"path": name, "sha256": _sha256(p), **counts[str(p)]} for name, p in zip(names, train)],
            "held_out": [{"path": _display(p, root), "sha256": _sha256(p)} for p in held_out],
            "held_out_entries": len(excluded),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "seconds": round(time.perf_counter() - t0, 1)}
    atomic_write_text(out.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    return card


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="default: $DAO_DATA_DIR")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--max-atoms", type=int, default=52)
    ap.add_argument("--source", type=Path, action="append", default=None,
                    help="a training source (repeatable; default: every source found under the data folder)")
    ap.add_argument("--held-out", type=Path, action="append", default=None,
                    help="a held-out split (repeatable; default: " + ", ".join(HELD_OUT) + ")")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        root = args.data_dir or (Path(os.environ["DAO_DATA_DIR"]) if os.environ.get("DAO_DATA_DIR") else None)
        if root is None or not root.is_dir():
            raise DAOError("no data folder: set DAO_DATA_DIR or pass --data-dir")
        if args.max_atoms < 1:
            raise DAOError(f"--max-atoms must be at least 1, got {args.max_atoms}")
        card = prepare(root.resolve(), args.out, args.max_atoms, args.source, args.held_out, args.progress)
    except DAOError as exc:
        print(f"dao: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: card[k] for k in ("file", "bytes", "crystals", "atoms", "removed_matching_held_out",
                                           "removed_repeats", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
