"""RunConfig round-trips to JSON and refuses what a person mistyped."""
import json

import pytest

from core.config import ConfigError, RunConfig

pytestmark = pytest.mark.unit


def test_round_trip_keeps_every_field():
    config = RunConfig()
    config.data.source = "/data/x"
    config.optim.lr = 0.05
    config.augment.resize = "pad"
    config.seed = 7
    again = RunConfig.from_json(config.to_json())
    assert again == config


def test_run_config_json_with_provenance_reads_back():
    config = RunConfig()
    data = config.to_dict() | {"provenance": {"weights": {"source": "random"}}}
    assert RunConfig.from_json(json.dumps(data)) == config


def test_partial_config_fills_defaults_and_ints_become_floats():
    config = RunConfig.from_json('{"optim": {"lr": 1, "epochs": 3}}')
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.optim.epochs == 3
    assert config.optim.batch_size == RunConfig().optim.batch_size


@pytest.mark.parametrize("text, where", [
    ('{"optim": {"learning_rate": 0.1}}', "optim.learning_rate"),
    ('{"epochs": 3}', "epochs"),
    ('{"optim": {"epochs": "ten"}}', "optim.epochs"),
    ('{"optim": 5}', "optim"),
])
def test_mistakes_are_refused_with_the_key(text, where):
    with pytest.raises(ConfigError, match=where.split(".")[-1]):
        RunConfig.from_json(text)
