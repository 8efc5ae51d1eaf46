"""`dao energy` and `dao relax`: outputs, per-file errors, and bad input without tracebacks or partial output."""
from __future__ import annotations

import json
import math

from tests.conftest import small_structures
from tests.test_cli import assert_clean_failure, run_dao


def write_cifs(tmp_path, names=("NaCl", "TiO2")):
    paths = []
    for name in names:
        p = tmp_path / f"{name}.cif"
        p.write_text(small_structures()[name].to(fmt="cif"))
        paths.append(p)
    return paths


def test_energy_prints_one_json_line_per_structure_and_skips_bad_files(tmp_path, tiny_energy_checkpoint):
    good = write_cifs(tmp_path)
    bad = tmp_path / "broken.cif"
    bad.write_text("data_x\n_cell_length_a 3\nnonsense\n")
    out = tmp_path / "e.jsonl"
    proc = run_dao("energy", str(good[0]), str(bad), str(good[1]), "--model", str(tiny_energy_checkpoint),
                   "--out", str(out), "--device", "cpu")
    assert proc.returncode == 1, proc.stderr  # the good files are processed; the bad one makes the exit code 1
    err = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(err) == 2 and "broken.cif" in err[0] and err[0].startswith("dao: error:")
    assert "1 input(s) could not be used" in err[1]
    rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    assert [r["name"] for r in rows] == ["NaCl", "TiO2"] and [r["num_atoms"] for r in rows] == [2, 6]
    assert all(math.isfinite(r["e_above_hull_pred"]) for r in rows)
    assert [json.loads(ln) for ln in out.read_text().splitlines()] == rows
    # the Python calculator agrees with `dao energy`
    import torch

    import dao

    atoms = dao.Crystal.from_structure(small_structures()["TiO2"]).to_atoms()
    atoms.calc = dao.DAOCalculator(str(tiny_energy_checkpoint), dtype=torch.float32)
    assert abs(atoms.get_potential_energy() / 6 - rows[1]["e_above_hull_pred"]) < 1e-4


def test_energy_bad_input(tmp_path, tiny_energy_checkpoint, tiny_checkpoint):
    bad = tmp_path / "broken.cif"
    bad.write_text("garbage\n")
    out = tmp_path / "e.jsonl"
    assert_clean_failure(run_dao("energy", str(bad), "--model", str(tiny_energy_checkpoint), "--out", str(out)),
                         "broken.cif")
    assert not out.exists()
    good = write_cifs(tmp_path, ("NaCl",))[0]
    assert_clean_failure(run_dao("energy", str(good), "--model", str(tiny_checkpoint)),
                         "holds a 'generator' model, expected 'energy'")
    assert_clean_failure(run_dao("energy", str(tmp_path / "missing.cif"), "--model", str(tiny_energy_checkpoint)),
                         "missing.cif")


def test_relax_bad_input_leaves_nothing_behind(tmp_path, tiny_energy_checkpoint):
    good = write_cifs(tmp_path, ("NaCl",))[0]
    out = tmp_path / "relaxed"
    before = sorted(p.name for p in tmp_path.iterdir())
    assert_clean_failure(run_dao("relax", str(good), "--model", str(tmp_path / "nope.pt"), "--out", str(out)),
                         "checkpoint not found")
    bad = tmp_path / "broken.cif"
    bad.write_text("garbage\n")
    assert_clean_failure(run_dao("relax", str(bad), "--model", str(tiny_energy_checkpoint), "--out", str(out)),
                         "broken.cif")
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["broken.cif"])  # no temp folders


def test_relax_writes_cifs_and_summary(tmp_path, tiny_energy_checkpoint):
    from ase.io import read
    from pymatgen.core import Structure

    from dao.cli import main

    paths = write_cifs(tmp_path)
    out = tmp_path / "relaxed"
    main(["relax", *map(str, paths), "--model", str(tiny_energy_checkpoint), "--out", str(out), "--steps", "5",
          "--fmax", "0.01"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_inputs"] == 2 and summary["steps"] == 5 and "FIRE" in summary["optimizer"]
    for rec, name in zip(summary["structures"], ["NaCl", "TiO2"]):
        # the tiny DAO-P's forces on these symmetric cells are ~1e-3 eV/Å: both must converge (not abort)
        assert rec["name"] == name and rec["status"] == "converged", rec
        assert rec["steps"] <= 5 and rec["max_force"] < 0.01 and math.isfinite(rec["energy_final"])
        s = Structure.from_file(out / rec["cif"])
        assert s.composition.reduced_formula == name and len(s) == rec["num_atoms"]
        assert abs(s.volume - rec["volume_final"]) < 1e-3 * rec["volume_final"]
        frames = read(out / rec["trajectory"], index=":")
        assert len(frames) == rec["steps"] + 1 and abs(frames[-1].get_volume() - s.volume) < 1e-3 * s.volume
        assert frames[0].get_forces().shape == (rec["num_atoms"], 3)


def test_energy_table_and_jsonl_formatting(tmp_path):
    from dao.energy import energy_jsonl, energy_table, write_energy_jsonl

    rows = [{"name": "NaCl", "source": "a.cif", "formula": "NaCl", "num_atoms": 2, "e_above_hull_pred": 0.012345},
            {"name": "TiO2_rutile", "source": "b.cif", "formula": "TiO2", "num_atoms": 6, "e_above_hull_pred": -0.5}]
    assert energy_table(rows).splitlines() == [
        "name         formula      atoms  E_hull (eV/atom)",
        "NaCl         NaCl             2  0.0123",
        "TiO2_rutile  TiO2             6  -0.5000"]
    assert [json.loads(line) for line in energy_jsonl(rows).splitlines()] == rows
    write_energy_jsonl(rows, tmp_path / "sub" / "e.jsonl")
    assert (tmp_path / "sub" / "e.jsonl").read_text() == energy_jsonl(rows) + "\n"


def test_unsupported_species_and_non_finite_files_are_listed_and_the_good_ones_processed(tmp_path,
                                                                                        tiny_energy_checkpoint):
    """Og (Z > 100), an unknown symbol (a pymatgen dummy species) and NaN coordinates: each file is one
    clear error line; the good files of the same call are processed, by `dao energy` and by `dao relax`."""
    from pymatgen.core import Lattice, Structure

    good = write_cifs(tmp_path)
    og = tmp_path / "og.cif"
    Structure(Lattice.cubic(5.0), ["Og", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(filename=str(og))
    dummy = tmp_path / "dummy.cif"
    dummy.write_text(good[0].read_text().replace("Cl", "Xx"))
    nan = tmp_path / "nan.cif"
    nan.write_text(good[0].read_text().replace("0.50000000  0.50000000  0.50000000", "nan  0.5  0.5"))
    bad = [og, dummy, nan]
    files = [str(good[0]), *map(str, bad), str(good[1])]
    proc = run_dao("energy", *files, "--model", str(tiny_energy_checkpoint), "--device", "cpu")
    assert proc.returncode == 1, proc.stderr
    assert [json.loads(ln)["name"] for ln in proc.stdout.splitlines() if ln.strip()] == ["NaCl", "TiO2"]
    for needle in ("og.cif: element Og (Z = 118) is not supported", "dummy.cif: unsupported species", "nan.cif"):
        assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    out = tmp_path / "relaxed"
    proc = run_dao("relax", *files, "--model", str(tiny_energy_checkpoint), "--out", str(out), "--steps", "2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert json.loads((out / "summary.json").read_text())["num_inputs"] == 2
