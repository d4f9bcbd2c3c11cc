"""params.yaml is parsed once into a typed object: unknown keys and values out of range are
refused with an error that names the key (and the file), and overrides go through the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from components.config import Config, ConfigError, config_from_dict, load_config

ROOT = Path(__file__).parents[1]


def _leaves(data: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in data.items():
        keys |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return keys


def test_repository_params_yaml_loads_and_documents_every_key():
    load_config(ROOT / "params.yaml")
    written = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert _leaves(written) == _leaves(Config().model_dump())


@pytest.mark.parametrize("data, key", [
    ({"world": {"sorce": "demo"}}, "world.sorce"),
    ({"flow": {"max_batch": 3}}, "flow.max_batch"),
    ({"unlearn": {"npo": {"betta": 0.1}}}, "unlearn.npo.betta"),
    ({"seeds": 1}, "seeds"),
])
def test_an_unknown_key_is_refused_by_its_full_name(data, key):
    with pytest.raises(ConfigError) as error:
        config_from_dict(data)
    assert f"  - {key}: unknown key" in str(error.value)


@pytest.mark.parametrize("key, value", [
    ("finetune.target_prob", 1.5),
    ("gate.min_forget_quality", 1.01),
    ("flow.max_batch_requests", 0),
    ("flow.lease_seconds", 30),
    ("unlearn.forget_loss", "nope"),
    ("unlearn.steps", "many"),
])
def test_a_value_out_of_range_or_of_the_wrong_type_is_refused_by_its_key(key, value):
    section, leaf = key.split(".")
    with pytest.raises(ConfigError) as error:
        config_from_dict({section: {leaf: value}})
    assert f"  - {key}: " in str(error.value)


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        config_from_dict({"world": {"sorce": "demo"}, "flow": {"retries": -1}})
    assert "world.sorce" in str(error.value) and "flow.retries" in str(error.value)


def test_a_file_world_needs_a_path():
    with pytest.raises(ConfigError, match="world.path is required"):
        config_from_dict({"world": {"source": "file"}})


def test_overrides_replace_one_key_and_are_validated():
    base = Config()
    changed = base.with_overrides({"unlearn.steps": 3, "flow.max_batch_requests": "7"})
    assert (changed.unlearn.steps, changed.flow.max_batch_requests) == (3, 7)
    assert changed.unlearn.lr == base.unlearn.lr and base.unlearn.steps != 3
    with pytest.raises(ConfigError, match="unknown config key 'unlearn.stepz'"):
        base.with_overrides({"unlearn.stepz": 3})
    with pytest.raises(ConfigError, match="unknown config key 'unlearn.steps.x'"):
        base.with_overrides({"unlearn.steps.x": 3})
    with pytest.raises(ConfigError, match=r"gate\.min_forget_quality"):
        base.with_overrides({"gate.min_forget_quality": 1.01})


def test_errors_in_a_file_name_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("flow:\n  retries: -1\n")
    with pytest.raises(ConfigError) as error:
        load_config(params)
    assert str(error.value).startswith(f"invalid configuration in {params}:\n  - flow.retries: ")
    params.write_text("flow: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        load_config(params)
    params.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(params)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "params.yaml")
