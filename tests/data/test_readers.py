"""Readers: CSV (plain and gzipped, cached), CIF files and folders, extxyz; pymatgen/ASE round trips."""
from __future__ import annotations

import numpy as np
import pytest
from pymatgen.analysis.structure_matcher import StructureMatcher

from dao.crystal import Crystal, CrystalBatch
from dao.data.readers import read_any, read_cif, read_csv
from dao.errors import StructureReadError
from tests.conftest import write_csv


def test_crystal_round_trips_pymatgen_and_ase(structures):
    m = StructureMatcher()
    for s in structures.values():
        c = Crystal.from_structure(s)
        assert np.all(c.frac_coords >= 0) and np.all(c.frac_coords < 1)
        assert m.fit(c.to_structure(), s)
        c2 = Crystal.from_atoms(c.to_atoms())
        assert m.fit(c2.to_structure(), s)
        assert abs(c.volume - s.volume) < 1e-6


def test_niggli_reduction_of_a_skewed_cell(structures):
    s = structures["CsCl"]
    skewed = s.copy()
    skewed.make_supercell([[1, 0, 0], [3, 1, 0], [0, 2, 1]])  # same cell volume, sheared basis
    c = Crystal.from_structure(skewed)
    assert sorted(np.round(np.linalg.norm(c.lattice, axis=1), 6)) == pytest.approx([4.12] * 3)


def test_batch_round_trip(structures):
    cs = [Crystal.from_structure(s) for s in structures.values()]
    batch = CrystalBatch.from_crystals(cs)
    assert batch.num_crystals == len(cs) and int(batch.num_atoms.sum()) == batch.frac.shape[0]
    for a, b in zip(cs, batch.crystals()):
        assert np.array_equal(a.atomic_numbers, b.atomic_numbers)
        np.testing.assert_allclose(a.frac_coords, b.frac_coords, atol=1e-6)


def test_read_csv_plain_gz_and_cache(tmp_path, structures):
    for name in ["a.csv", "b.csv.gz"]:
        path = write_csv(tmp_path / name, structures, ehull=0.05)
        cs, skipped = read_csv(path)
        assert len(cs) == len(structures) and skipped == []
        assert cs[0].meta["id"] == "test-0" and cs[0].meta["e_above_hull"] == pytest.approx(0.05)
        cs2, _ = read_csv(path)  # from the cache
        for a, b in zip(cs, cs2):
            np.testing.assert_array_equal(a.frac_coords, b.frac_coords)
            assert a.meta == b.meta


def test_bad_rows_are_skipped_with_reasons(tmp_path, structures):
    import csv

    path = tmp_path / "bad.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
        w.writeheader()
        w.writerow({"material_id": "ok", "cif": structures["NaCl"].to(fmt="cif")})
        w.writerow({"material_id": "broken", "cif": "data_x\n_cell_length_a 3\nloop_\n_atom_site_label\n"})
    cs, skipped = read_csv(path, use_cache=False)
    assert len(cs) == 1 and len(skipped) == 1 and "CIF" in skipped[0][1]


def test_cif_folder_extxyz_and_malformed_cif(tmp_path, structures):
    from ase.io import write

    folder = tmp_path / "cifs"
    folder.mkdir()
    for name, s in structures.items():
        s.to(filename=str(folder / f"{name}.cif"))
    (folder / "zz_bad.cif").write_text("this is not a CIF\n")
    cs, skipped = read_any(folder)
    assert len(cs) == len(structures) and len(skipped) == 1
    with pytest.raises(StructureReadError, match="zz_bad.cif"):
        read_cif(folder / "zz_bad.cif")
    write(str(tmp_path / "all.extxyz"), [Crystal.from_structure(s).to_atoms() for s in structures.values()], format="extxyz")
    cs, skipped = read_any(tmp_path / "all.extxyz")
    assert len(cs) == len(structures)
    frames = [Crystal.from_structure(s).to_atoms() for s in structures.values()]
    for i, a in enumerate(frames):
        a.info.update({"group": i, "label": 0.5 * i, "tag": "x"})
    write(str(tmp_path / "info.extxyz"), frames, format="extxyz")
    cs, _ = read_any(tmp_path / "info.extxyz")  # ASE reads the numbers back as numpy scalars
    assert [(c.meta["group"], c.meta["label"], c.meta["tag"]) for c in cs] == [(i, 0.5 * i, "x") for i in range(len(cs))]
    assert all(type(c.meta["group"]) is int for c in cs)
    with pytest.raises(StructureReadError, match="no such file"):
        read_any(tmp_path / "missing.csv")
