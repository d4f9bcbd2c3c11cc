"""params.yaml is parsed once into a typed object whose errors name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).parents[1]


def test_repository_params_yaml_is_valid():
    config = load_config(ROOT / "params.yaml")
    assert config.world.source == "demo"
    assert config.finetune.target_prob == 0.85


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match=r"world\.sorce: unknown key"):
        config_from_dict({"world": {"sorce": "demo"}})


def test_out_of_range_value_is_named():
    with pytest.raises(ConfigError, match=r"finetune\.target_prob"):
        config_from_dict({"finetune": {"target_prob": 1.5}})


def test_file_world_needs_a_path():
    with pytest.raises(ConfigError, match="world.path is required"):
        config_from_dict({"world": {"source": "file"}})


def test_overrides_are_validated():
    config = Config().with_overrides({"unlearn.steps": 3})
    assert config.unlearn.steps == 3
    with pytest.raises(ConfigError, match="unknown config key"):
        Config().with_overrides({"unlearn.stepz": 3})


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
