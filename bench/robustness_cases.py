"""Hostile inputs for bench_robustness.py: malformed structure files, broken checkpoints and broken configs.

Every builder writes files into a folder and returns ``(kind, path)`` pairs; each file is one that DAO must
refuse with a one-line error naming it (nothing here is a valid input in disguise: a truncated CIF is cut
before its atom loop, a checkpoint without ``meta`` is not listed because ``meta`` is optional).
"""
from __future__ import annotations

import csv
import gzip
import io
import random
from pathlib import Path
from typing import Any, Callable

GOOD_CELLS = [  # (species, fractional coordinates, cubic a in Å): small valid crystals to corrupt
    (["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 3.99),
    (["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 4.12),
    (["Sr", "Ti", "O", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]], 3.9),
    (["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]], 3.84),
]


def good_structure(rng: random.Random, with_cl: bool = False) -> Any:
    """A small valid crystal (one with a Cl site when ``with_cl``: the species some corruptions replace)."""
    from pymatgen.core import Lattice, Structure

    species, frac, a = rng.choice(GOOD_CELLS[:2] if with_cl else GOOD_CELLS)
    return Structure(Lattice.cubic(a * rng.uniform(0.97, 1.03)), species, frac)


def _cif(structure: Any) -> str:
    return structure.to(fmt="cif")


def _set_cif(text: str, key: str, value: str) -> str:
    lines = [f"{key}   {value}" if ln.split()[:1] == [key] else ln for ln in text.splitlines()]
    return "\n".join(lines) + "\n"


def _csv_text(cifs: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["material_id", "e_above_hull", "cif"])
    w.writeheader()
    w.writerows({"material_id": f"x-{i}", "e_above_hull": 0, "cif": c} for i, c in enumerate(cifs))
    return buf.getvalue()


def _extxyz(structure: Any, pbc: str = "T T T", positions: Callable[[Any], Any] | None = None) -> str:
    from ase.io import write

    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    if positions is not None:
        atoms.positions = positions(atoms.positions)
    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    return buf.getvalue().replace('pbc="T T T"', f'pbc="{pbc}"')


def _close_pair(rng: random.Random) -> Any:
    from pymatgen.core import Lattice, Structure

    a, d = rng.uniform(3, 6), rng.uniform(0.0, 0.095)
    x = rng.choice([0.3, 0.999999])  # the second case is a pair across the periodic boundary
    return Structure(Lattice.cubic(a), ["Na", "Cl", "Cl"], [[x, 0.2, 0.2], [(x + d / a) % 1, 0.2, 0.2], [0.7, 0.7, 0.7]])


def _thin_cell(rng: random.Random) -> Any:
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice.orthorhombic(rng.uniform(0.01, 0.09), 20, 20), ["Na"], [[0, 0, 0]])


STRUCTURE_KINDS: dict[str, Callable[[random.Random], tuple[str, str | bytes]]] = {
    "close_atoms": lambda r: (".cif", _cif(_close_pair(r))),
    "self_image_closer_than_limit": lambda r: (".cif", _cif(_thin_cell(r))),
    "negative_length": lambda r: (".cif", _set_cif(_cif(good_structure(r)), "_cell_length_a", f"-{r.uniform(3, 6):.4f}")),
    "zero_length": lambda r: (".cif", _set_cif(_cif(good_structure(r)), "_cell_length_b", "0")),
    "huge_cell": lambda r: (".cif", _set_cif(_cif(good_structure(r)), "_cell_length_c", f"{r.choice([1e6, 5e4, 2e3]):.1f}")),
    "flat_angle": lambda r: (".cif", _set_cif(_cif(good_structure(r)), "_cell_angle_beta", r.choice(["0", "180", "0.001"]))),
    "text_length": lambda r: (".cif", _set_cif(_cif(good_structure(r)), "_cell_length_a", r.choice(["abc", "?", "."]))),
    "nan_length": lambda r: (".cif", _set_cif(_cif(good_structure(r)), "_cell_length_a", r.choice(["nan", "inf"]))),
    "nan_coordinate": lambda r: (".cif", _cif(good_structure(r)).replace("  0.00000000  0.00000000  0.00000000",
                                                                          "  nan  0.0  0.0", 1)),
    "superheavy_element": lambda r: (".cif", _cif(good_structure(r, True)).replace("Cl", r.choice(["Md", "Og", "Lr"]))),
    "dummy_species": lambda r: (".cif", _cif(good_structure(r, True)).replace("Cl", r.choice(["Xx", "Qq", "X0+"]))),
    "partial_occupancy": lambda r: (".cif", _cif(good_structure(r)).replace("  1\n", "  0.5\n")),
    "truncated_cif": lambda r: (".cif", (lambda t: t[: r.randint(10, t.index("loop_\n _atom_site"))])(_cif(good_structure(r)))),
    "no_atom_loop": lambda r: (".cif", _cif(good_structure(r)).split("loop_\n _atom_site")[0]),
    "garbage_bytes": lambda r: (".cif", bytes(r.randrange(256) for _ in range(r.randint(1, 400)))),
    "empty_file": lambda r: (r.choice([".cif", ".csv", ".extxyz"]), ""),
    "non_utf8_csv": lambda r: (".csv", _csv_text([_cif(good_structure(r))]).encode("utf-8").replace(b"x-0", b"x-\xe9\xff")),
    "corrupt_gzip": lambda r: (".csv.gz", (lambda b: b[: r.randint(10, len(b) - 10)])(gzip.compress(_csv_text([_cif(good_structure(r))]).encode()))),
    "not_gzip": lambda r: (".csv.gz", b"\x1f\x8b" + bytes(r.randrange(256) for _ in range(40))),
    "csv_without_cif_column": lambda r: (".csv", _csv_text([_cif(good_structure(r))]).replace("cif", "structure", 1)),
    "csv_bad_rows_only": lambda r: (".csv", _csv_text(["data_x\n_cell_length_a oops\n", "garbage"])),
    "extxyz_garbage": lambda r: (".extxyz", "3\nLattice=\"1 0 0 0 1 0\" nonsense\nNa 0 0\n"),
    "extxyz_not_periodic": lambda r: (".extxyz", _extxyz(good_structure(r), pbc="F F F")),
    "extxyz_close_atoms": lambda r: (".extxyz", _extxyz(_close_pair(r))),
    "extxyz_nan_positions": lambda r: (".extxyz", _extxyz(good_structure(r), positions=lambda p: p * float("nan"))),
    "unknown_suffix": lambda r: (r.choice([".txt", ".pdb", ".json"]), _cif(good_structure(r))),
}


def structure_cases(folder: Path, n: int, rng: random.Random) -> list[tuple[str, Path]]:
    """``n`` malformed structure files, the kinds of STRUCTURE_KINDS in turn, plus a missing path."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = sorted(STRUCTURE_KINDS)
    cases = []
    for i in range(n - 1):
        kind = kinds[i % len(kinds)]
        suffix, content = STRUCTURE_KINDS[kind](rng)
        path = folder / f"bad{i:04d}_{kind}{suffix}"
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        cases.append((kind, path))
    cases.append(("missing_path", folder / "does_not_exist.cif"))
    return cases


def _junk(rng: random.Random) -> Any:
    return rng.choice([None, -1, 3.5, "x", [1, 2], {"a": 1}, True])


def checkpoint_variants(ckpt: dict, rng: random.Random) -> list[tuple[str, Callable[[], Any]]]:
    """(kind, a function returning a broken copy of ``ckpt`` or raw bytes) for one saved model."""
    import torch

    def edit(fn: Callable[[dict], None]) -> Callable[[], dict]:
        def make() -> dict:
            c = {k: (dict(v) if isinstance(v, dict) else v) for k, v in ckpt.items()}
            fn(c)
            return c
        return make

    def first_float(c: dict) -> str:
        return next(k for k, v in c["state_dict"].items() if v.is_floating_point())

    out: list[tuple[str, Callable[[], Any]]] = []
    for key in ("config", "dao_format", "kind", "state_dict"):
        out.append((f"missing_{key}", edit(lambda c, k=key: c.pop(k))))
    for key in ("config", "dao_format", "kind", "meta", "state_dict"):
        for _ in range(2):
            value = _junk(rng)
            if key == "meta" and isinstance(value, dict):
                value = "x"
            if key == "dao_format" and value in (True,):
                value = "1"
            out.append((f"wrong_type_{key}", edit(lambda c, k=key, v=value: c.__setitem__(k, v))))
    out += [
        ("unknown_kind", edit(lambda c: c.__setitem__("kind", "transformer"))),
        ("newer_format", edit(lambda c: c.__setitem__("dao_format", 999))),
        ("nan_weights", edit(lambda c: c["state_dict"].__setitem__(first_float(c), c["state_dict"][first_float(c)] * float("nan")))),
        ("wrong_shape", edit(lambda c: c["state_dict"].__setitem__(first_float(c), torch.zeros(7, 3)))),
        ("missing_weight", edit(lambda c: c["state_dict"].pop(first_float(c)))),
        ("non_tensor_weight", edit(lambda c: c["state_dict"].__setitem__(first_float(c), [1.0, 2.0]))),
        ("config_typo", edit(lambda c: c["config"].__setitem__("hiden_size_typo", 32))),
        ("config_bad_value", edit(lambda c: c["config"].__setitem__("max_atoms", -3))),
        ("not_a_dict", lambda: [1, 2, 3]),
        ("lightning_checkpoint", lambda: {"state_dict": ckpt["state_dict"], "epoch": 3}),
        ("pickled_object", lambda: {"dao_format": 1, "obj": Path("/tmp")}),  # not allowed by weights_only
    ]
    return out


def checkpoint_cases(folder: Path, ckpt_path: Path, rng: random.Random, tag: str) -> list[tuple[str, Path]]:
    """Broken copies of the checkpoint at ``ckpt_path``: fields missing or of the wrong type, bad weights,
    truncated, garbage and empty files."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    ckpt = torch.load(ckpt_path, weights_only=True)
    raw = ckpt_path.read_bytes()
    cases = []
    for i, (kind, make) in enumerate(checkpoint_variants(ckpt, rng)):
        path = folder / f"{tag}_{i:03d}_{kind}.pt"
        torch.save(make(), path)
        cases.append((kind, path))
    for i in range(4):
        cut = rng.randint(0, len(raw) - 1)
        (folder / f"{tag}_truncated{i}.pt").write_bytes(raw[:cut])
        cases.append(("truncated", folder / f"{tag}_truncated{i}.pt"))
    (folder / f"{tag}_garbage.pt").write_bytes(bytes(rng.randrange(256) for _ in range(2000)))
    (folder / f"{tag}_empty.pt").write_bytes(b"")
    (folder / f"{tag}_dir.pt").mkdir(exist_ok=True)
    cases += [("garbage", folder / f"{tag}_garbage.pt"), ("empty", folder / f"{tag}_empty.pt"),
              ("directory", folder / f"{tag}_dir.pt"), ("missing", folder / f"{tag}_nothing.pt")]
    return cases


#: training configs that must be refused before anything is written (YAML text)
BROKEN_CONFIGS = {
    "lr_negative": "train: {lr: -1}", "lr_text": "train: {lr: abc}", "lr_nan": "train: {lr: .nan}",
    "lr_inf": "train: {lr: .inf}", "batch_size_zero": "train: {batch_size: 0}",
    "batch_size_float": "train: {batch_size: 1.5}", "batch_size_text": "train: {batch_size: many}",
    "max_epochs_negative": "train: {max_epochs: -2}", "warmup_negative": "train: {warmup_steps: -1}",
    "ema_decay_above_one": "train: {ema_decay: 2.0}", "max_atoms_zero": "train: {max_atoms: 0}",
    "seed_negative": "train: {seed: -5}", "unknown_train_key": "train: {learning_rate: 0.001}",
    "model_typo": "model: {hiden: 32}", "model_layers_zero": "model: {layers: 0}",
    "model_heads_text": "model: {heads: four}", "unknown_section": "optimizer: {lr: 0.1}",
    "section_not_a_mapping": "train: [1, 2]", "top_level_list": "- train\n- model\n",
    "yaml_syntax": "train: {lr: 0.1\nmodel: [", "unknown_method": "method: teleport",
    "tab_indent": "train:\n\tlr: 0.1\n", "binary": "\x00\x01\x02", "not_utf8": "train: {lr: 0.1}  # \xe9\xff",
    "train_scalar": "train: 5", "seed_above_numpy_range": "train: {seed: 99999999999}",
}


def config_cases(folder: Path) -> list[tuple[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for kind, text in sorted(BROKEN_CONFIGS.items()):
        path = folder / f"{kind}.yaml"
        path.write_bytes(text.encode("latin-1") + b"\n")
        cases.append((kind, path))
    cases.append(("missing_file", folder / "no_such_config.yaml"))
    return cases
