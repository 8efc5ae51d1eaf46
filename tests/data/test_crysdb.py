"""CrysDB builder: stage accounting, deduplication inside the corpus, and the guarantee that no excluded
structure (or id) survives, whatever cell, orientation or small distortion it comes in."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.conftest import small_structures


def variant(structure, seed: int, supercell=None):
    """The same crystal in another guise: rotated Cartesian frame, shifted origin, optional supercell and a
    small distortion (well inside StructureMatcher's tolerances)."""
    from pymatgen.core import Lattice, Structure
    from scipy.spatial.transform import Rotation

    rng = np.random.default_rng(seed)
    s = structure.copy()
    if supercell is not None:
        s.make_supercell(supercell)
    rot = Rotation.random(random_state=seed).as_matrix()
    lattice = Lattice(s.lattice.matrix @ rot.T * (1 + 0.01 * rng.standard_normal()))
    frac = (s.frac_coords + rng.random(3)) % 1.0 + 0.002 * rng.standard_normal(s.frac_coords.shape)
    return Structure(lattice, s.species, frac)


def write_rows(path, rows):
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "e_above_hull", "formation_energy_per_atom", "cif"])
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


@pytest.fixture
def sources(tmp_path):
    from pymatgen.core import Lattice, Structure

    st = small_structures()
    zno, tio2, nacl, si, cscl = st["ZnO"], st["TiO2"], st["NaCl"], st["Si"], st["CsCl"]
    perov = Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                      [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    exclude = write_rows(tmp_path / "val.csv", [
        {"material_id": "mp-excl-1", "e_above_hull": 0.0, "cif": tio2.to(fmt="cif")},
        {"material_id": "mp-excl-2", "e_above_hull": 0.0, "cif": perov.to(fmt="cif")},
    ])
    a = write_rows(tmp_path / "a.csv", [
        {"material_id": "a-0", "e_above_hull": 0.0, "formation_energy_per_atom": -1.2, "cif": zno.to(fmt="cif")},
        {"material_id": "a-1", "e_above_hull": 0.2, "cif": variant(zno, 1).to(fmt="cif")},  # duplicate of a-0
        {"material_id": "a-2", "e_above_hull": 0.0, "cif": variant(tio2, 2, [[2, 0, 0], [0, 1, 0], [0, 0, 1]]).to(fmt="cif")},
        {"material_id": "mp-excl-2", "e_above_hull": 0.0, "cif": zno.to(fmt="cif")},  # excluded by id
        {"material_id": "a-4", "e_above_hull": 0.0, "cif": "data_broken\n_cell_length_a 4\nnonsense"},  # bad row
        {"material_id": "a-5", "e_above_hull": 0.0, "cif": nacl.to(fmt="cif")},  # 2 atoms: filtered
        {"material_id": "a-6", "e_above_hull": 1.5, "cif": variant(perov, 3).to(fmt="cif")},  # E_hull ≥ 1: filtered
        {"material_id": "a-7", "e_above_hull": 0.3, "cif": variant(cscl, 4, [[1, 1, 0], [0, 1, 1], [1, 0, 1]]).to(fmt="cif")},
    ])
    cif_dir = tmp_path / "cifs"
    cif_dir.mkdir()
    variant(perov, 5).to(filename=str(cif_dir / "perov_rotated.cif"))  # matches an excluded structure
    variant(si, 6, [[1, 1, 0], [0, 1, 1], [1, 0, 1]]).to(filename=str(cif_dir / "si_super.cif"))
    (cif_dir / "empty.cif").write_text("")
    from ase.io import write as ase_write
    from pymatgen.io.ase import AseAtomsAdaptor

    frames = [AseAtomsAdaptor.get_atoms(variant(zno, 7)), AseAtomsAdaptor.get_atoms(variant(tio2, 8))]
    frames[0].info["material_id"] = "x-0"
    frames[1].info["e_above_hull"] = 0.05
    ext = tmp_path / "frames.extxyz"
    ase_write(ext, frames, format="extxyz")
    return {"sources": [a, cif_dir, ext], "exclude": [exclude], "excluded": [tio2, perov]}


def test_build_counts_every_stage_and_no_excluded_structure_survives(tmp_path, sources):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from dao.data.crysdb import BuildConfig, build_crysdb, iter_crysdb
    from dao.data.readers import read_any

    out = tmp_path / "crysdb"
    report = build_crysdb(sources["sources"], out, sources["exclude"], BuildConfig(partitions=3))
    assert report.totals == {"read": 13, "parse_failed": 2, "filtered_atoms": 1, "filtered_e_hull": 1,
                             "excluded_id": 1, "matches_excluded": 3, "duplicate": 2, "kept": 3}
    src = report.sources
    assert (src["a"]["kept"], src["a"]["duplicate"], src["a"]["matches_excluded"]) == (2, 1, 1)
    assert (src["cifs"]["kept"], src["cifs"]["parse_failed"], src["cifs"]["matches_excluded"]) == (1, 1, 1)
    assert (src["frames"]["kept"], src["frames"]["duplicate"], src["frames"]["matches_excluded"]) == (0, 1, 1)
    assert report.excluded_sources["val"]["read"] == 2

    records = list(iter_crysdb(out))
    kept = read_any(out)[0]
    assert len(records) == len(kept) == 3
    matcher = StructureMatcher()
    for c in kept:  # the guarantee, checked by brute force
        for ex in sources["excluded"]:
            assert not matcher.fit(c.to_structure(), ex)
    assert "mp-excl-2" not in {r["id"] for r in records}
    zno = next(r for r in records if r["id"] == "a-0")  # the first occurrence is kept, the others recorded
    assert zno["duplicates"] == ["a:1", "frames:0"] and zno["source"] == "a" and zno["source_row"] == 0
    assert zno["formation_energy_per_atom"] == pytest.approx(-1.2) and zno["e_above_hull"] == 0.0
    assert {r["id"] for r in records} == {"a-0", "a-7", "si_super"}
    assert (out / "elements.png").stat().st_size > 1000
    skipped = list(csv.DictReader(open(out / "skipped.csv")))
    assert sorted((s["source"], s["stage"]) for s in skipped) == [
        ("a", "filtered_atoms"), ("a", "filtered_e_hull"), ("a", "parse_failed"), ("cifs", "parse_failed")]
    assert json.loads((out / "report.json").read_text())["stability"] == {"stable": 1, "unstable": 1, "unlabelled": 1}


@pytest.mark.slow
def test_parallel_build_equals_serial(tmp_path, sources):
    from dao.data.crysdb import BuildConfig, build_crysdb, iter_crysdb

    a = build_crysdb(sources["sources"], tmp_path / "serial", sources["exclude"], BuildConfig(partitions=2))
    b = build_crysdb(sources["sources"], tmp_path / "parallel", sources["exclude"],
                     BuildConfig(partitions=5, workers=2, chunk_size=2))
    assert a.totals == b.totals
    key = lambda r: r["key"]  # noqa: E731
    assert sorted(map(key, iter_crysdb(tmp_path / "serial"))) == sorted(map(key, iter_crysdb(tmp_path / "parallel")))


def test_missing_source_fails_cleanly(tmp_path):
    from dao.cli import main

    out = tmp_path / "db"
    with pytest.raises(SystemExit) as exc:
        main(["data", "build", "--source", str(tmp_path / "nope.csv"), "--out", str(out)])
    assert exc.value.code == 2 and not out.exists()


def test_dataset_relaxation_relabels_only_the_window_and_keeps_provenance(tmp_path, sources, tiny_energy_checkpoint):
    from dao.cli import main
    from dao.data.crysdb import BuildConfig, build_crysdb, iter_crysdb

    db = tmp_path / "db"
    build_crysdb(sources["sources"], db, sources["exclude"], BuildConfig(partitions=2))
    out = tmp_path / "relaxed"
    main(["data", "relax", "--model", str(tiny_energy_checkpoint), "--in", str(db), "--out", str(out),
          "--steps", "3", "--device", "cpu", "--no-progress"])
    before = {r["key"]: r for r in iter_crysdb(db)}
    after = {r["key"]: r for r in iter_crysdb(out)}
    assert before.keys() == after.keys()
    for key, r in after.items():
        old = before[key]
        if old["e_above_hull"] is not None and 0.08 < old["e_above_hull"] <= 0.5:  # the CsCl entry (0.3)
            assert r["relaxed_by"].startswith("dao-p:") and r["e_above_hull_original"] == old["e_above_hull"]
            assert r["e_above_hull"] != old["e_above_hull"] and r["atomic_numbers"] == old["atomic_numbers"]
        else:
            assert json.dumps(r, sort_keys=True) == json.dumps(old, sort_keys=True)  # NaN-safe equality
    report = json.loads((out / "report.json").read_text())["relaxation"]
    assert report["selected"] == 1 and report["relabelled"] == 1 and report["entries"] == 3


def test_tighter_tolerance_keeps_near_duplicates_but_never_weakens_exclusion(tmp_path):
    """Two polymorph-like ZnO cells whose RMS distance lies between a tight and the default stol: merged
    under pymatgen's default tolerances, kept apart with --stol 0.05. A distorted copy of an excluded structure is still removed under the tight
    setting, because matching against the excluded set never uses less than the defaults."""
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    from dao.data.crysdb import BuildConfig, build_crysdb

    zno, tio2 = small_structures()["ZnO"], small_structures()["TiO2"]
    rng = np.random.default_rng(0)

    def distorted(s, amount):
        return Structure(s.lattice, s.species, s.frac_coords + amount * rng.standard_normal(s.frac_coords.shape))

    near = distorted(zno, 0.03)
    rms = StructureMatcher().get_rms_dist(zno, near)[0]
    assert 0.05 < rms < 0.3, rms  # between the tight and the default site tolerance
    excluded_copy = distorted(tio2, 0.03)
    assert StructureMatcher(stol=0.05).get_rms_dist(tio2, excluded_copy) is None  # a tight matcher misses it
    assert StructureMatcher().fit(tio2, excluded_copy)
    exclude = write_rows(tmp_path / "val.csv", [{"material_id": "x", "e_above_hull": 0, "cif": tio2.to(fmt="cif")}])
    src = write_rows(tmp_path / "a.csv", [
        {"material_id": "z0", "e_above_hull": 0, "cif": zno.to(fmt="cif")},
        {"material_id": "z1", "e_above_hull": 0, "cif": near.to(fmt="cif")},
        {"material_id": "t", "e_above_hull": 0, "cif": excluded_copy.to(fmt="cif")},
    ])
    default = build_crysdb([src], tmp_path / "default", [exclude], BuildConfig(partitions=1))
    tight = build_crysdb([src], tmp_path / "tight", [exclude], BuildConfig(partitions=1, stol=0.05))
    assert default.totals["kept"] == 1 and default.totals["duplicate"] == 1
    assert tight.totals["kept"] == 2 and tight.totals["duplicate"] == 0
    assert default.totals["matches_excluded"] == tight.totals["matches_excluded"] == 1
