"""`dao convert-checkpoint`: official DAO checkpoints → DAO models (docs/convert.md).

The fixture tests/models/data/official_small.pt was made by tools/make_official_fixture.py, which ran the
official module code (GLAD-RUC/DAO) on a small random network; the converted models must reproduce its
lattice, coordinate, energy and property outputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dao.cli import main
from dao.crystal import CrystalBatch
from dao.errors import CheckpointError
from dao.models.checkpoint import load_model
from dao.models.convert import Opaque, convert_checkpoint, infer_backbone, plain, read_scaler, safe_load

FIXTURE = Path(__file__).parent / "data" / "official_small.pt"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, map_location="cpu", weights_only=True)


def official_ckpt(path: Path, fixture: dict, kind: str, drop: tuple[str, ...] = (), **extra) -> Path:
    """A Lightning-style checkpoint of ``kind`` made of the fixture's official weights."""
    state = {k: v for k, v in fixture["state_dict"].items()
             if not k.startswith(drop) and (kind == "property" or not k.startswith("predictor."))}
    torch.save({"state_dict": state, "hyper_parameters": fixture["hyper_parameters"], "epoch": 7,
                "pytorch-lightning_version": "2.1.0", **extra}, path)
    return path


def fixture_batch(fixture: dict) -> CrystalBatch:
    x = fixture["inputs"]
    return CrystalBatch(atom_types=x["atom_types"], frac=x["frac"], lattice=x["lattice"], num_atoms=x["num_atoms"],
                        batch=torch.repeat_interleave(torch.arange(len(x["num_atoms"])), x["num_atoms"]))


@pytest.mark.parametrize("kind", ["generator", "energy", "property"])
def test_converted_model_reproduces_the_official_outputs(tmp_path, fixture, kind):
    src = official_ckpt(tmp_path / "official.ckpt", fixture, kind)
    summary = convert_checkpoint(src, kind, tmp_path / "model.pt")
    model = load_model(tmp_path / "model.pt", kind).double()
    cfg = model.config.model
    assert (cfg.hidden, cfg.layers, cfg.heads, cfg.num_freqs, cfg.time_dim) == (32, 2, 4, 16, 256)
    assert (cfg.atom_table, cfg.atom_offset, cfg.gate_bias, cfg.final_norm) == ("cgcnn", False, False, False)
    assert summary["tensors"] == len(model.state_dict())
    batch, expected = fixture_batch(fixture), fixture["expected"]
    with torch.no_grad():
        if kind == "property":
            torch.testing.assert_close(model(batch), expected["property"], rtol=0, atol=1e-5)
            return
        for s, times in enumerate(fixture["inputs"]["times"]):  # integer official times → our t = t_int / T
            out = model.backbone(batch, times.double() / 1000)
            torch.testing.assert_close(out.lattice, expected["lattice"][s], rtol=0, atol=1e-5)
            torch.testing.assert_close(out.coord, expected["coord"][s], rtol=0, atol=1e-5)
            if kind == "energy":
                torch.testing.assert_close(out.energy, expected["energy"][s], rtol=0, atol=1e-5)
    assert float(expected["lattice"].abs().max()) > 0.1  # the comparison is not between near-zero outputs


def test_refuses_what_it_cannot_map(tmp_path, fixture):
    def fails(ckpt: Path, kind: str, needle: str, **kw) -> None:
        with pytest.raises(CheckpointError, match=needle):
            convert_checkpoint(ckpt, kind, tmp_path / "out.pt", **kw)
        assert not (tmp_path / "out.pt").exists()

    full = tmp_path / "full.ckpt"
    torch.save({"state_dict": fixture["state_dict"], "hyper_parameters": fixture["hyper_parameters"]}, full)
    fails(full, "generator", "unexpected key 'predictor.0.weight'")
    fails(official_ckpt(tmp_path / "a.ckpt", fixture, "energy", drop=("decoder.scalar_out.2.bias",)), "energy",
          "missing key 'decoder.scalar_out.2.bias'")
    fails(official_ckpt(tmp_path / "b.ckpt", fixture, "generator", drop=("decoder.block_1.ffn.norm.bias",)),
          "generator", "missing key 'decoder.block_1.ffn.norm.bias'")
    state = dict(fixture["state_dict"], **{"decoder.block_0.attention.fn.to_kv.bias": torch.zeros(10)})
    torch.save({"state_dict": state, "hyper_parameters": fixture["hyper_parameters"]}, tmp_path / "c.ckpt")
    fails(tmp_path / "c.ckpt", "property", "to_kv / edges_to_kv.bias have the wrong shape")
    state = dict(fixture["state_dict"], **{"decoder.atom_latent_emb.weight": torch.zeros(32)})
    torch.save({"state_dict": state, "hyper_parameters": fixture["hyper_parameters"]}, tmp_path / "c2.ckpt")
    state = dict(fixture["state_dict"], **{"decoder.block_1.ffn.fn.net.0.bias": torch.zeros(127)})
    torch.save({"state_dict": state, "hyper_parameters": fixture["hyper_parameters"]}, tmp_path / "c3.ckpt")
    fails(tmp_path / "c3.ckpt", "property", r"decoder.block_1.ffn.fn.net.0.bias has shape \(127,\), expected \(128,\)")
    fails(tmp_path / "c2.ckpt", "property", r"decoder.atom_latent_emb.weight has shape \(32,\), expected a matrix")
    table = fixture["state_dict"]["decoder.embedding_in.0.weight"].clone()
    table[8, 0] = 1.0
    torch.save({"state_dict": dict(fixture["state_dict"], **{"decoder.embedding_in.0.weight": table}),
                "hyper_parameters": fixture["hyper_parameters"]}, tmp_path / "d.ckpt")
    fails(tmp_path / "d.ckpt", "property", "differs from the CGCNN table at Z = 8")
    torch.save({"state_dict": fixture["state_dict"]}, tmp_path / "e.ckpt")  # no hyper-parameters: heads unknown
    fails(tmp_path / "e.ckpt", "property", "pass it with --heads")
    convert_checkpoint(tmp_path / "e.ckpt", "property", tmp_path / "ok.pt", heads=4)
    knn = dict(fixture["hyper_parameters"], decoder=dict(fixture["hyper_parameters"]["decoder"], edge_style="knn"))
    fails(official_ckpt(tmp_path / "knn.ckpt", fixture, "energy", hyper_parameters=knn), "energy",
          "decoder.edge_style = 'knn' is not supported")
    fails(tmp_path / "nope.ckpt", "energy", "checkpoint not found")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    fails(tmp_path / "junk.ckpt", "energy", "unreadable checkpoint")
    fails(tmp_path / "ok.pt", "property", "already a DAO checkpoint")


class HyperParameters:
    """Stands for an object the loader must not import (an OmegaConf DictConfig, say): pickled by
    reference to this module, with its content in its state as DictConfig keeps it."""

    def __init__(self, content: dict) -> None:
        self._content = content


class Boobytrap:
    """Unpickling this would call os.remove on the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.remove, (str(self.sentinel),))


def test_loading_runs_no_pickled_code(tmp_path, fixture):
    hp = HyperParameters({"decoder": {"head_num": 4}, "optim": {"lr": 3e-4}})
    src = official_ckpt(tmp_path / "official.ckpt", fixture, "energy", hyper_parameters=hp)
    with pytest.raises(Exception):  # plain weights-only loading refuses the file
        torch.load(src, weights_only=True)
    loaded = safe_load(src)
    assert type(loaded["hyper_parameters"]).__name__ == "HyperParameters"
    assert not isinstance(loaded["hyper_parameters"], HyperParameters)  # a stand-in, not the real class
    summary = convert_checkpoint(src, "energy", tmp_path / "dao_p.pt")
    assert summary["config"]["model"]["heads"] == 4  # read through the stand-in's recorded state
    sentinel = tmp_path / "sentinel"
    sentinel.write_text("still here")
    trap = official_ckpt(tmp_path / "trap.ckpt", fixture, "energy", callbacks=Boobytrap(sentinel))
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*posix\.remove"):
        convert_checkpoint(trap, "energy", tmp_path / "trap.pt")
    assert sentinel.read_text() == "still here" and not (tmp_path / "trap.pt").exists()


def test_reads_omegaconf_hyper_parameters_without_omegaconf(tmp_path, fixture):
    """omegaconf_hparams.pt: hyper-parameters pickled as real OmegaConf DictConfigs (made by
    tools/make_official_fixture.py), as the official Lightning checkpoints hold them."""
    hp = safe_load(FIXTURE.parent / "omegaconf_hparams.pt")["hyper_parameters"]
    assert isinstance(hp["decoder"], Opaque) and type(hp["decoder"]).qualified_name == "omegaconf.dictconfig.DictConfig"
    assert plain(hp)["decoder"]["head_num"] == 4 and plain(hp)["timesteps"] == 1000
    state = {k: v for k, v in fixture["state_dict"].items() if not k.startswith("predictor.")}
    assert infer_backbone(state, plain(hp), "generator").heads == 4  # what convert_checkpoint reads


class StandardScalerTorch:
    """Laid out as the official scaler objects saved beside the checkpoints (prop_scaler.pt)."""

    def __init__(self, means: torch.Tensor, stds: torch.Tensor) -> None:
        self.means, self.stds = means, stds


def test_scaler_file_sets_the_standardisation(tmp_path, fixture):
    torch.save(StandardScalerTorch(torch.tensor([0.25]), torch.tensor([1.5])), tmp_path / "prop_scaler.pt")
    assert read_scaler(tmp_path / "prop_scaler.pt") == (0.25, 1.5)
    hp = dict(fixture["hyper_parameters"], data={"prop": "logtc", "datasets": {"train": {"prop": "${data.prop}"}}})
    src = official_ckpt(tmp_path / "ft.ckpt", fixture, "property", hyper_parameters=hp)
    summary = convert_checkpoint(src, "property", tmp_path / "prop.pt", scaler=tmp_path / "prop_scaler.pt")
    assert (summary["config"]["mean"], summary["config"]["std"], summary["config"]["target"]) == (0.25, 1.5, "logtc")
    model = load_model(tmp_path / "prop.pt", "property").double()
    with torch.no_grad():  # predictions in target units: official standardised output · std + mean
        got = model.predict(fixture_batch(fixture))
    torch.testing.assert_close(got, fixture["expected"]["property"] * 1.5 + 0.25, rtol=0, atol=1e-5)
    torch.save({"means": "x"}, tmp_path / "bad_scaler.pt")
    with pytest.raises(CheckpointError, match="not an official scaler"):
        read_scaler(tmp_path / "bad_scaler.pt")


def test_cli_converts_then_predicts_with_guidance(tmp_path, fixture, capsys):
    gen = official_ckpt(tmp_path / "dao_g.ckpt", fixture, "generator")
    energy = official_ckpt(tmp_path / "dao_p.ckpt", fixture, "energy")
    main(["convert-checkpoint", str(gen), "--kind", "generator", "--out", str(tmp_path / "g.pt")])
    main(["convert-checkpoint", str(energy), "--kind", "energy", "--out", str(tmp_path / "p.pt")])
    assert "4 heads" in capsys.readouterr().err
    def predict(out: Path, *guidance: str) -> dict:
        main(["predict", "LiO2", "--model", str(tmp_path / "g.pt"), "--no-rank", "--steps", "3", "-n", "2",
              "--out", str(out), "--no-progress", "--device", "cpu", *guidance])
        assert len(list(out.glob("*.cif"))) == 2, sorted(p.name for p in out.iterdir())
        return json.loads((out / "summary.json").read_text())

    guided = predict(tmp_path / "guided", "--energy-model", str(tmp_path / "p.pt"), "--guidance-scale", "5")
    assert guided["guidance"] == {"energy_model": str(tmp_path / "p.pt"), "scale": 5.0}
    plain_run = predict(tmp_path / "plain")  # same seed: the converted DAO-P's guidance moved the samples
    assert [s["lattice"] for s in guided["samples"]] != [s["lattice"] for s in plain_run["samples"]]
    with pytest.raises(SystemExit) as exc:  # refused input: one line, exit 2, nothing written
        main(["convert-checkpoint", str(gen), "--kind", "property", "--out", str(tmp_path / "bad.pt")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dao: error: official checkpoint: missing key 'predictor.")
    assert not (tmp_path / "bad.pt").exists()


def _official_alphas_cumprod(timesteps: int = 1000, s: float = 0.008) -> torch.Tensor:
    """The official BetaScheduler's buffer, written from its definition: cosine β clipped to [1e-4, 0.9999],
    a leading β = 0, cumulative product of 1 − β."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    ac = torch.cos(((x / timesteps) + s) / (1 + s) * torch.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = torch.clip(1 - ac[1:] / ac[:-1], 0.0001, 0.9999)
    return torch.cumprod(1 - torch.cat([torch.zeros(1, dtype=torch.float64), betas]), 0)


def test_converted_generator_samples_with_the_official_lattice_schedule(tmp_path, fixture):
    src = official_ckpt(tmp_path / "official.ckpt", fixture, "generator")
    ckpt = torch.load(src, weights_only=True)
    ckpt["state_dict"]["beta_scheduler.alphas_cumprod"] = _official_alphas_cumprod().float()
    torch.save(ckpt, src)
    convert_checkpoint(src, "generator", tmp_path / "model.pt")
    model = load_model(tmp_path / "model.pt", "generator")
    ab = model.process.lattice.alpha_bar.double()
    torch.testing.assert_close(ab, _official_alphas_cumprod(), rtol=0, atol=1e-6)
    assert abs(float(ab[1]) - 0.9999) < 1e-7  # β_1 clipped up to 1e-4 (ours unclipped would give ≈ 1 − 4e-5)
    ckpt["state_dict"]["beta_scheduler.alphas_cumprod"] = _official_alphas_cumprod(s=0.02).float()
    torch.save(ckpt, src)
    with pytest.raises(CheckpointError, match="not the official cosine schedule"):
        convert_checkpoint(src, "generator", tmp_path / "other.pt")
