"""Regression tests of issue 18's examples at the input boundaries: unphysical structures, undecodable text
files, training rows, configs, checkpoints, empty predictions; and outputs when a run fails after writing."""
from __future__ import annotations

import csv
import functools
import gzip
import json

import pytest
import torch

from dao.errors import CheckpointError, ConfigError
from tests.conftest import small_structures as _small_structures
from tests.conftest import write_csv

small_structures = functools.cache(_small_structures)  # building them (space groups) takes seconds


def dao(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``dao ARGS`` in-process: (exit code, stdout, stderr); any other exception fails the test."""
    from dao.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def cif_of(species, frac, lattice) -> str:
    from pymatgen.core import Lattice, Structure

    lat = Lattice(lattice) if not isinstance(lattice, (int, float)) else Lattice.cubic(lattice)
    return Structure(lat, species, frac).to(fmt="cif")


def unphysical_files(tmp_path) -> dict:
    """Files each of which must be refused, with a fragment of its error."""
    files = {
        "close.cif": (cif_of(["Na", "Cl"], [[0, 0, 0], [0.0001, 0, 0]], 4.0), "0.0004 Å apart"),
        "boundary.cif": (cif_of(["Na", "Cl"], [[0.99, 0, 0], [0.0025, 0, 0]], 4.0), "0.05 Å apart"),
        "thin.cif": (cif_of(["Na"], [[0, 0, 0]], [[0.05, 0, 0], [0, 20, 0], [0, 0, 20]]), "0.05 Å apart"),
        "neg.cif": (small_structures()["NaCl"].to(fmt="cif").replace("_cell_length_a   ", "_cell_length_a   -"),
                    "not positive"),
        "md.cif": (cif_of(["Md", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]], 4.0), "Md (Z = 101) is not supported"),
    }
    for name, (text, _) in files.items():
        (tmp_path / name).write_text(text)
    return {tmp_path / name: needle for name, (_, needle) in files.items()}


def good_cifs(tmp_path) -> list:
    paths = []
    for name in ("NaCl", "TiO2"):
        paths.append(tmp_path / f"{name}.cif")
        paths[-1].write_text(small_structures()[name].to(fmt="cif"))
    return paths


def test_unphysical_structures_are_refused_by_name_and_every_good_file_is_processed(tmp_path, capsys,
                                                                                    tiny_energy_checkpoint):
    """Atoms 0.0004 Å apart (and across the cell boundary, and an atom near its own image), a negative cell
    length and Md: `dao energy` and `dao relax` list each by name and process both good files (exit 1)."""
    bad = unphysical_files(tmp_path)
    good = good_cifs(tmp_path)
    files = [str(good[0]), *map(str, bad), str(good[1])]
    code, out, err = dao(capsys, "energy", *files, "--model", str(tiny_energy_checkpoint), "--device", "cpu")
    assert code == 1
    assert [json.loads(line)["name"] for line in out.splitlines() if line.strip()] == ["NaCl", "TiO2"]
    errors = [line for line in err.splitlines() if line.startswith("dao: error:")]
    assert len(errors) == len(bad)
    for path, needle in bad.items():
        assert any(path.name in line and needle in line for line in errors), (path.name, err)
    relaxed = tmp_path / "relaxed"
    code, _, err = dao(capsys, "relax", *files, "--model", str(tiny_energy_checkpoint), "--out", str(relaxed),
                       "--steps", "2", "--trajectory-every", "0")
    assert code == 1 and all(p.name in err for p in bad)
    assert sorted(p.name for p in relaxed.iterdir()) == ["NaCl.cif", "TiO2.cif", "summary.json"]


def test_atoms_above_the_limit_are_read():
    from pymatgen.core import Structure

    from dao.data.records import Record

    s = Structure.from_str(cif_of(["H", "H"], [[0, 0, 0], [0.03, 0, 0]], 4.0), fmt="cif")  # 0.12 Å
    assert Record("h2", s).to_crystal().min_distance() == pytest.approx(0.12, abs=1e-6)


def test_undecodable_and_corrupt_csv_files_are_errors_naming_the_file(tmp_path, capsys):
    from dao.data.readers import read_inputs
    from dao.evaluate.io import load_references

    good = write_csv(tmp_path / "good.csv", {"NaCl": small_structures()["NaCl"]})
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(good.read_bytes().replace(b"NaCl", b"NaCl\xe9"))
    truncated = tmp_path / "truncated.csv.gz"
    truncated.write_bytes(gzip.compress(good.read_bytes())[:200])
    not_gzip = tmp_path / "fake.csv.gz"
    not_gzip.write_bytes(b"\x1f\x8bnot gzip at all")
    items, errors = read_inputs([good, latin1, truncated, not_gzip])
    assert [name for name, _ in items] == ["test-0"]
    assert [msg.split(":")[0] for _, msg in errors] == [str(latin1), str(truncated) + " (near line 1)", str(not_gzip)]
    assert "not UTF-8" in errors[0][1] and all("gzip" in msg for _, msg in errors[1:])
    with pytest.raises(ValueError, match="truncated.csv.gz"):
        load_references(truncated)
    code, out, err = dao(capsys, "energy", str(latin1))
    assert code == 2 and out == "" and err.count("\n") == 1 and "latin1.csv: not UTF-8" in err


def test_training_rows_skipped_are_named_and_accepted_rows_train(tmp_path, capsys, tiny_generator):
    """A row repeating one site (unreadable) is named with its reason in the log and the data report; a row
    with the same element twice (Na⁺ and Na) is accepted and trains (a finite loss)."""
    from pymatgen.core import Element, Lattice, Species, Structure

    from dao.data.dataset import collate
    from dao.train import load_crystals

    twice = Structure(Lattice.cubic(4.2), [Species("Na", 1), Element("Na"), Species("Cl", -1), Element("Cl")],
                      [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    same_site = Structure(Lattice.cubic(4.0), ["Na", "Na", "Cl"], [[0, 0, 0], [0, 0, 0], [0.5, 0.5, 0.5]])
    path = tmp_path / "train.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["material_id", "cif"])
        w.writeheader()
        w.writerows([{"material_id": "ok", "cif": small_structures()["Si"].to(fmt="cif")},
                     {"material_id": "twice", "cif": twice.to(fmt="cif")},
                     {"material_id": "same-site", "cif": same_site.to(fmt="cif")}])
    crystals, report = load_crystals([path], progress=False)
    assert [c.meta["id"] for c in crystals] == ["ok", "twice"]
    examples = report["sources"][str(path)]["unreadable_examples"]
    assert len(examples) == 1 and examples[0].startswith("train.csv:2: ")
    assert "train.csv:2: " in capsys.readouterr().err
    loss = tiny_generator.train().loss(collate(crystals))["loss"]
    assert torch.isfinite(loss)


@pytest.mark.parametrize("text,needle", [
    ("train: {lr: -1}", "train.lr"), ("train: {lr: abc}", "lr"), ("train: {batch_size: 0}", "train.batch_size"),
    ("train: {max_epochs: -2}", "train.max_epochs"), ("train: {seed: -5}", "train.seed"),
    ("train: {seed: 4294967296}", "train.seed"), ("train: [1, 2]", "must be mappings"),
    ("train: 5", "must be mappings"), ("model: {hiden: 32}\n", "hiden"), ("nope: {}", "unknown config section"),
])
def test_broken_configs_are_config_errors(tmp_path, text, needle):
    from dao.models.generator import GeneratorConfig
    from dao.train_config import TrainConfig, load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError, match=needle):
        cfg = load_config(path)
        TrainConfig.from_dict(cfg.get("train"))
        GeneratorConfig.from_dict(cfg.get("model") and {"model": cfg["model"]})


def test_non_utf8_config_is_a_config_error(tmp_path):
    from dao.train_config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_bytes(b"train: {lr: 0.1}  # \xe9\xff\n")
    with pytest.raises(ConfigError, match="cfg.yaml"):
        load_config(path)


def test_bad_config_leaves_no_run_folder(tmp_path, capsys):
    tiny_csv = write_csv(tmp_path / "data.csv", {"Si": small_structures()["Si"]})
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("train: {lr: -1}\n")
    code, _, err = dao(capsys, "train", "generator", "--data", str(tiny_csv), "--config", str(cfg),
                       "--out", str(tmp_path / "run"), "--device", "cpu")
    assert code == 2 and "train.lr" in err and not (tmp_path / "run").exists()


def broken_copy(path, folder, field, value):
    """``path``'s checkpoint with ``field`` deleted (None), all-NaN weights ("nan") or set to ``value``."""
    ckpt = torch.load(path, weights_only=True)
    if value is None:
        del ckpt[field]
    elif value == "nan":
        ckpt[field] = {k: v * float("nan") if v.is_floating_point() else v for k, v in ckpt[field].items()}
    else:
        ckpt[field] = value
    bad = folder / f"broken_{path.stem}.pt"
    torch.save(ckpt, bad)
    return bad


@pytest.mark.parametrize("field,value", [("config", None), ("dao_format", "1"), ("kind", "transformer"),
                                         ("meta", [1]), ("state_dict", "nan")])
def test_broken_checkpoints_are_refused_by_predict_energy_and_info(tmp_path, capsys, tiny_checkpoint,
                                                                   tiny_energy_checkpoint, field, value):
    energy = broken_copy(tiny_energy_checkpoint, tmp_path, field, value)
    generator = broken_copy(tiny_checkpoint, tmp_path, field, value)
    cif = good_cifs(tmp_path)[0]
    out = tmp_path / "pred"
    for bad, args in ((energy, ["energy", str(cif)]), (energy, ["info"]), (generator, ["info"]),
                      (generator, ["predict", "NaCl", "--no-rank", "--out", str(out), "--steps", "2"])):
        code, stdout, err = dao(capsys, *args, "--model", str(bad))
        assert code == 2 and stdout == "" and bad.name in err and err.startswith("dao: error:"), (args, err)
    assert not out.exists()


def test_info_refuses_a_checkpoint_whose_config_or_weights_do_not_make_a_model(tmp_path, capsys, tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["config"]["hiden"] = 32
    torch.save(ckpt, tmp_path / "typo.pt")
    code, _, err = dao(capsys, "info", "--model", str(tmp_path / "typo.pt"))
    assert code == 2 and "typo.pt" in err and "hiden" in err
    with pytest.raises(CheckpointError):
        from dao.models.checkpoint import load_generator

        load_generator(tmp_path / "typo.pt")


def test_empty_predictions_are_an_error(tmp_path, capsys):
    ref = write_csv(tmp_path / "ref.csv", {"NaCl": small_structures()["NaCl"]})
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty.extxyz").write_text("")
    for pred in ("empty", "empty.extxyz"):
        code, _, err = dao(capsys, "evaluate", "--pred", str(tmp_path / pred), "--ref", str(ref),
                           "--out", str(tmp_path / f"out_{pred}"), "--no-progress")
        assert code != 0 and "no predictions found" in err and not (tmp_path / f"out_{pred}").exists()


def test_evaluate_scores_every_good_prediction_beside_bad_files(tmp_path, capsys):
    """Garbage, truncated and binary CIFs and an unphysical (atoms 0.0004 Å apart) prediction next to good ones:
    every good prediction is matched, every bad file is counted, none aborts the run."""
    structures = small_structures()
    ref = write_csv(tmp_path / "ref.csv", {"NaCl": structures["NaCl"], "TiO2": structures["TiO2"],
                                           "ZnO": structures["ZnO"]})
    pred = tmp_path / "pred"
    pred.mkdir()
    (pred / "0_0.cif").write_text("data_x\n_cell_length_a oops\n")
    (pred / "0_1.cif").write_text(structures["NaCl"].to(fmt="cif"))
    (pred / "1_0.cif").write_bytes(bytes(range(256)))
    (pred / "1_1.cif").write_text(structures["TiO2"].to(fmt="cif"))
    (pred / "2_0.cif").write_text(cif_of(["Zn", "O"], [[0, 0, 0], [0.0001, 0, 0]], 4.0))
    (pred / "2_1.cif").write_text(structures["ZnO"].to(fmt="cif")[:200])
    (pred / "2_2.cif").write_text(structures["ZnO"].to(fmt="cif"))
    code, out, err = dao(capsys, "evaluate", "--pred", str(pred), "--ref", str(ref), "--out", str(tmp_path / "ev"),
                         "--no-progress")
    assert code == 0, err
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert summary["match_rate_unfiltered"] == 1.0 and summary["match_rate"] == 1.0
    assert summary["input"]["n_unreadable"] == 3
