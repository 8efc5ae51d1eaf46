"""`dao.train_config`: the train section's ranges and the config file's sections are checked up front."""
from __future__ import annotations

from pathlib import Path

import pytest

from dao.errors import ConfigError
from dao.train_config import TrainConfig, config_sections, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_bundled_config_loads(path):
    cfg = load_config(path)
    assert set(cfg) <= set(config_sections())
    TrainConfig.from_dict(cfg.get("train"))


@pytest.mark.parametrize("key,value", [("lr", -1e-3), ("batch_size", 0), ("max_epochs", -2), ("warmup_steps", -1),
                                       ("ema_decay", 1.0), ("max_time", "10 minutes"), ("ckpt_every_n_steps", 0)])
def test_out_of_range_values_name_the_key(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        TrainConfig.from_dict({key: value})


def test_min_atoms_above_max_atoms_is_refused():
    with pytest.raises(ConfigError, match="train.max_atoms"):
        TrainConfig.from_dict({"min_atoms": 10, "max_atoms": 5})


def test_unknown_keys_and_wrong_types_are_config_errors():
    with pytest.raises(ConfigError, match="unknown train config key.*learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1e-3})
    with pytest.raises(ConfigError, match="train.lr"):
        TrainConfig.from_dict({"lr": "fast"})


def test_round_trip_and_frozen_learning_rate():
    cfg = TrainConfig.from_dict({"lr": 0.0, "lr_min": 0.0, "max_time": "00:01:00:00", "max_epochs": -1})
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_load_config_rejects_unknown_sections_and_bad_files(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("model: {hidden: 16}\ntrian: {lr: 1.0e-3}\n")
    with pytest.raises(ConfigError, match="unknown config section.*trian"):
        load_config(typo)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listing)
    assert load_config(None) == {}
