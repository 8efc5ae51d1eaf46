"""Tc augmentation with generated structures and `dao tc`: whole-atom cells from fractional formulas,
no evaluation formula leaks into the augmentation, the fold ensemble predicts Tc."""
from __future__ import annotations

import json
import math

import pytest


def test_integer_cell_from_fractional_formulas():
    from dao.superconductors import integer_cell

    assert integer_cell("YBa2Cu3O7", 20).formula == "YBa2Cu3O7"
    assert integer_cell("La1.85Sr0.15CuO4", 20) is None  # needs 140 atoms
    big = integer_cell("La1.85Sr0.15CuO4", 200)
    assert dict(big.counts) == {"La": 37, "Sr": 3, "Cu": 20, "O": 80}
    assert integer_cell("MgB2", 20).num_atoms == 3 and integer_cell("Xx2O", 20) is None


def test_augmentation_skips_pool_formulas_and_labels_ln_tc(tiny_generator):
    from dao.superconductors import generate_augmentation

    rows = [{"Formula": "MgB2", "Tc": "39"}, {"Formula": "NbSe2", "Tc": "7.2"}, {"Formula": "Nb3Sn", "Tc": "18"},
            {"Formula": "Nb3Sn", "Tc": "18.3"}, {"Formula": "La1.85Sr0.15CuO4", "Tc": "38"},
            {"Formula": "Pb", "Tc": ""}]
    crystals, counts = generate_augmentation(rows, tiny_generator, exclude={"NbSe2"}, seed=0, steps=3)
    assert counts == {"rows": 6, "no_tc": 1, "not_whole_atoms_within_limit": 1, "in_evaluation_pool": 1,
                      "duplicate_formula": 1, "generated": 2}
    assert sorted(c.meta["formula"] for c in crystals) == ["MgB2", "Nb3Sn"]
    mgb2 = next(c for c in crystals if c.meta["formula"] == "MgB2")
    assert mgb2.meta["target"] == pytest.approx(math.log(39)) and mgb2.num_atoms == 3


@pytest.mark.slow
def test_tc_command_with_a_fold_ensemble(tmp_path, tiny_checkpoint, capsys):
    from dao.cli import main
    from tests.test_property import TINY, write_task

    data = write_task(tmp_path / "task.csv")
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("max_epochs: 3", "max_epochs: 1"))
    out = tmp_path / "tcmodel"
    main(["train", "property", "--data", str(data), "--target", "vpa", "--folds", "2", "--config", str(cfg),
          "--out", str(out), "--device", "cpu", "--no-baseline"])
    capsys.readouterr()
    main(["tc", "NaCl", "--model", str(out), "--generator", str(tiny_checkpoint), "-n", "2", "--steps", "3",
          "--device", "cpu"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["models"] == 2 and res["structures"] == 2 and math.isfinite(res["tc_kelvin"])
    assert res["tc_kelvin"] == pytest.approx(math.exp(res["ln_tc_mean"]))
