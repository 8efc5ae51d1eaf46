"""The corrector step size (``step_lr``: per call, per dataset, recorded in training) and the noise-free
last corrector step of the official sampler (docs/official.md)."""
from __future__ import annotations

import json

import pytest
import torch

from dao.crystal import CrystalBatch
from dao.diffusion.base import NoiseSource, Prediction
from dao.diffusion.denoising import (STEP_LR_BY_DATASET, DiffusionStep, dataset_of, record_dataset_step_lr,
                                    with_step_lr)
from dao.errors import DAOError


def _template() -> CrystalBatch:
    return CrystalBatch.from_compositions([[8, 8, 22], [11, 17]])


def _sample(model, step_lr=None, seed=0, steps=6):
    return model.sample(_template(), num_steps=steps, generator=torch.Generator().manual_seed(seed), step_lr=step_lr)


def test_step_lr_override_equals_the_config_value_and_leaves_the_model_alone(tiny_generator):
    base = _sample(tiny_generator)
    big = _sample(tiny_generator, step_lr=1e-2)
    assert tiny_generator.process.config.step_lr == 1e-5  # untouched by the per-call value
    assert not torch.allclose(base.frac, big.frac)
    tiny_generator.process.config.step_lr = 1e-2  # the same value set in the config gives the same samples
    try:
        same = _sample(tiny_generator)
    finally:
        tiny_generator.process.config.step_lr = 1e-5
    assert torch.equal(same.frac, big.frac) and torch.equal(same.lattice, big.lattice)
    zero = with_step_lr(tiny_generator.process, 0.0)
    assert zero.config.step_lr == 0.0 and zero.lattice is tiny_generator.process.lattice  # shared schedule


@pytest.mark.parametrize("value", [-1e-5, float("nan"), float("inf")])
def test_bad_step_lr_is_a_clear_error(tiny_generator, value):
    with pytest.raises(DAOError, match="--step-lr must be a finite number"):
        with_step_lr(tiny_generator.process, value)


def test_step_lr_on_a_flow_generator_is_refused():
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.nn.crysformer import CrysformerConfig

    flow = DAOGenerator(GeneratorConfig(model=CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8),
                                        method="flow", max_atoms=8))
    with pytest.raises(DAOError, match="diffusion generators only.*flow generator"):
        _sample(flow, step_lr=1e-5, steps=2)


def _last_step(process, network, state, seed):
    entry = DiffusionStep(1, 0, None)  # the final step, t = 1 → 0
    return process.step(network, lambda s, p, e: p, state, entry, NoiseSource(torch.Generator().manual_seed(seed), "cpu"))


@pytest.mark.parametrize("final_noise", [False, True])
def test_last_corrector_step_is_noise_free_unless_switched_on(tiny_generator, final_noise):
    process = with_step_lr(tiny_generator.process, 1e-2)  # a step large enough to see its noise
    process.config.final_corrector_noise = final_noise
    g = torch.Generator().manual_seed(0)
    template = _template()
    state = template.replace(frac=torch.rand(template.frac.shape, generator=g),
                             lattice=4 * torch.eye(3).expand(2, 3, 3) + torch.randn(2, 3, 3, generator=g))
    network = lambda b, t: tuple(tiny_generator.network(b, t))  # noqa: E731
    with torch.no_grad():
        a, b = _last_step(process, network, state, 1), _last_step(process, network, state, 2)
    if final_noise:
        assert not torch.equal(a.frac, b.frac)
        return
    # the predictor adds no noise at t → 0 (σ_0 = 0, ᾱ_0 = 1) and neither does the corrector now
    assert torch.equal(a.frac, b.frac) and torch.equal(a.lattice, b.lattice)
    t1 = torch.full((state.num_crystals,), 1 / process.config.num_steps)
    c = process.coords
    with torch.no_grad():  # the step is the corrector's drift alone, then the noise-free predictor
        drift = c.corrector_step(state.frac, c.score_from_output(network(state, t1)[1], 1), 1,
                                 torch.zeros_like(state.frac), 1e-2)
        pred = Prediction(*network(state.replace(frac=drift), t1))
        expect = c.predictor_step(drift, c.score_from_output(pred.coord, 1), 1, 0, torch.zeros_like(drift))
    torch.testing.assert_close(a.frac, expect)


def test_the_switch_changes_only_the_last_step(tiny_generator):
    gens = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]
    tiny_generator.process.config.final_corrector_noise = True
    try:
        noisy = tiny_generator.sample(_template(), num_steps=6, generator=gens[0], step_lr=1e-2)
    finally:
        tiny_generator.process.config.final_corrector_noise = False
    clean = tiny_generator.sample(_template(), num_steps=6, generator=gens[1], step_lr=1e-2)
    assert torch.equal(gens[0].get_state(), gens[1].get_state())  # the same random numbers were drawn
    assert not torch.equal(noisy.frac, clean.frac)  # but the last corrector's noise was not added


def test_dataset_names_and_the_official_table():
    assert STEP_LR_BY_DATASET == {"mp_20": 1e-5, "mpts_52": 1e-5, "perov_5": 5e-7, "carbon_24": 5e-6}
    assert dataset_of(["/d/csp/mp_20/train.csv.gz"]) == "mp_20"
    assert dataset_of(["data/Perov-5.csv", "other/perov_5/val.csv"]) == "perov_5"
    assert dataset_of(["csp/mp_20/train.csv", "csp/mpts_52/train.csv"]) is None  # mixed
    assert dataset_of(["pretrain/mp_20_biternary.csv.gz"]) is None  # a corpus named after, not a benchmark
    assert dataset_of([]) is None


def test_training_on_a_dataset_records_its_step_lr_unless_the_config_sets_one(tiny_generator, tiny_energy_model):
    got = record_dataset_step_lr(tiny_generator.config.process, {}, ["x/carbon_24/train.csv"])
    assert got == {"dataset": "carbon_24", "step_lr": 5e-6}
    assert tiny_generator.config.to_dict()["diffusion"]["step_lr"] == 5e-6  # what the checkpoint stores
    assert tiny_generator.process.config.step_lr == 5e-6  # what sampling uses
    assert record_dataset_step_lr(tiny_energy_model.config.process, {"diffusion": {"step_lr": 2e-5}},
                                  ["perov_5/t.csv"]) is None
    assert tiny_energy_model.process.config.step_lr == 1e-5


def test_predict_cli_step_lr_reaches_the_sampler_and_the_summary(tmp_path, tiny_generator):
    from dao.cli import main
    from dao.models.checkpoint import save_model

    ckpt = tmp_path / "g.pt"
    save_model(ckpt, tiny_generator, {})
    runs = {}
    for name, extra in (("default", []), ("set", ["--step-lr", "0.01"])):
        out = tmp_path / name
        main(["predict", "NaCl", "--no-rank", "--model", str(ckpt), "-n", "1", "--steps", "4", "--device", "cpu",
              "--no-progress", "--out", str(out), *extra])
        runs[name] = json.loads((out / "summary.json").read_text())
    assert runs["default"]["step_lr"] == 1e-5 and runs["set"]["step_lr"] == 0.01
    assert runs["default"]["samples"][0] != runs["set"]["samples"][0]
    with pytest.raises(SystemExit) as exc:
        main(["predict", "NaCl", "--no-rank", "--model", str(ckpt), "--step-lr", "-1", "--out", str(tmp_path / "bad")])
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()
