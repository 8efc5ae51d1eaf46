"""A new generative process is one class plus one registry line: defined here, it trains, samples, saves and
loads through the generic DAO-G with no other change. Also the one rule for generator configs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from dao.config import Config
from dao.crystal import CrystalBatch
from dao.diffusion import registry
from dao.diffusion.base import GuidancePoint, NoiseSource, Prediction, Process, TrainingSample, uniform_prior
from dao.errors import CheckpointError, ConfigError
from dao.nn.crysformer import CrysformerConfig


@dataclass
class OneShotConfig(Config):
    section: ClassVar[str] = "one_shot"
    num_steps: int = 3
    noise: float = 0.1


class OneShotProcess(Process):
    """A toy process: corrupt by mixing with noise; each reverse step jumps to the predicted clean state."""

    method = "one_shot"
    config_class = OneShotConfig

    @property
    def default_steps(self) -> int:
        return self.config.num_steps

    def training_sample(self, batch, generator=None):
        t = torch.rand(batch.num_crystals, generator=generator)
        base = uniform_prior(batch, NoiseSource(generator, batch.frac.device))
        lat = (1 - t.view(-1, 1, 1)) * batch.lattice + t.view(-1, 1, 1) * base.lattice
        frac = torch.remainder(batch.frac + self.config.noise * t[batch.batch].view(-1, 1) * base.frac, 1.0)
        return TrainingSample(batch.replace(frac=frac, lattice=lat), t, (batch.lattice, batch.frac - frac))

    def loss(self, prediction, targets):
        lat, dfrac = targets
        loss_l = ((prediction.lattice - lat) ** 2).mean()
        loss_f = ((prediction.coord - dfrac) ** 2).mean()
        return {"loss": loss_l + loss_f, "loss_lattice": loss_l, "loss_coord": loss_f}

    def prior(self, template, rng):
        return uniform_prior(template, rng)

    def schedule(self, num_steps, template):
        return [1.0 - k / num_steps for k in range(num_steps)]

    def step(self, network, guide, state, entry, rng):
        t = torch.full((state.num_crystals,), entry)
        pred = guide(state, Prediction(*network(state, t)), entry)
        return state.replace(frac=torch.remainder(state.frac + pred.coord, 1.0), lattice=pred.lattice)

    def guidance_point(self, state, prediction, entry):
        return GuidancePoint(state, torch.full((state.num_crystals,), entry), 1.0, 1.0)


@pytest.fixture
def one_shot_registered(monkeypatch):
    monkeypatch.setattr(registry, "PROCESSES", dict(registry.PROCESSES))
    monkeypatch.setattr(registry, "_resolved", dict(registry._resolved))
    registry.register_process(OneShotProcess)  # the one registry line
    yield


def test_a_new_process_trains_samples_saves_and_loads_through_the_generic_generator(tmp_path, one_shot_registered):
    from dao.models.checkpoint import load_generator, save_model
    from dao.models.generator import DAOGenerator, GeneratorConfig
    from dao.prediction import generate
    from dao.formula import parse_formula
    from tests.conftest import small_structures
    from dao.crystal import structures_to_crystals

    assert "one_shot" in registry.methods()
    torch.manual_seed(0)
    cfg = GeneratorConfig(CrysformerConfig(hidden=16, layers=1, heads=2, num_freqs=4, time_dim=8), method="one_shot")
    model = DAOGenerator(cfg)
    assert model.method == "one_shot" and model.default_steps == 3
    batch = CrystalBatch.from_crystals(structures_to_crystals(list(small_structures().values())))
    losses = model.loss(batch)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and any(p.grad is not None for p in model.parameters())
    save_model(tmp_path / "one_shot.pt", model.eval())
    loaded = load_generator(tmp_path / "one_shot.pt")
    assert loaded.method == "one_shot" and loaded.config.process == OneShotConfig()
    cells = [parse_formula("NaCl"), parse_formula("ZnO")]
    a = generate(model, cells, 2, seed=3)
    b = generate(loaded, cells, 2, seed=3)
    assert len(a) == 4 and [s.error for s in a] == [s.error for s in b]
    for x, y in zip(a, b):
        if x.structure is not None:
            assert x.structure.lattice.abc == pytest.approx(y.structure.lattice.abc)


def test_generator_config_rules():
    from dao.models.generator import GeneratorConfig

    both = {"model": {"hidden": 32, "heads": 4}, "diffusion": {"num_steps": 10}, "flow": {"num_steps": 4}}
    assert GeneratorConfig.from_dict({**both, "method": "flow"}).process.num_steps == 4  # flow keeps its section
    assert GeneratorConfig.from_dict(both).process.num_steps == 10  # diffusion is the default method
    with pytest.raises(ConfigError, match="unknown model config key.*hiden"):
        GeneratorConfig.from_dict({"model": {"hiden": 32}})
    with pytest.raises(ConfigError, match="unknown config section.*modle"):
        GeneratorConfig.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="flow.integrator"):  # another method's section is still checked
        GeneratorConfig.from_dict({"flow": {"integrator": "rk4"}})
    with pytest.raises(ConfigError, match="diffusion.num_steps: expected an integer"):
        GeneratorConfig.from_dict({"diffusion": {"num_steps": "many"}})
    with pytest.raises(ConfigError, match="unknown generator method 'ddim'"):
        GeneratorConfig.from_dict({"method": "ddim"})
    cfg = GeneratorConfig.from_dict({**both, "method": "flow", "max_atoms": 20})
    assert GeneratorConfig.from_dict(cfg.to_dict()) == cfg


def test_a_checkpoint_with_an_unusable_config_is_refused_by_name(tmp_path, tiny_generator):
    from dao.models.checkpoint import load_generator, save_model

    save_model(tmp_path / "m.pt", tiny_generator)
    ckpt = torch.load(tmp_path / "m.pt", weights_only=True)
    ckpt["config"]["model"]["hiden"] = 3
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="unusable config.*hiden"):
        load_generator(tmp_path / "bad.pt")
    for field, value in (("config", [1]), ("state_dict", None), ("kind", 3), ("dao_format", "1")):
        broken = dict(torch.load(tmp_path / "m.pt", weights_only=True), **{field: value})
        torch.save(broken, tmp_path / "broken.pt")
        with pytest.raises(CheckpointError, match=field):
            load_generator(tmp_path / "broken.pt")
