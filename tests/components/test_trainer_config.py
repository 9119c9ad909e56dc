"""TrainerConfig: the Trainer's section travels as JSON and is read back typed, defaults once."""
import dataclasses
import json

import pytest

from components.trainer_config import TrainerConfig


def test_to_json_and_back_is_the_same_config():
    config = dataclasses.replace(TrainerConfig(), optimizer="group_adagrad", hidden_units=[16], l21=2e-3,
                                 target_sparsity_per_table={"C1": 0.9})
    assert TrainerConfig.from_json(config.to_json()) == config
    assert json.loads(config.to_json()) == dataclasses.asdict(config)


def test_a_missing_key_takes_its_default_and_an_unknown_key_is_refused():
    values = dataclasses.asdict(TrainerConfig())
    del values["warm_start"], values["distribution"]  # a spec written before these keys existed
    config = TrainerConfig.from_json(json.dumps(values))
    assert (config.warm_start, config.distribution) == (TrainerConfig.warm_start, TrainerConfig.distribution)
    with pytest.raises(ValueError, match="unknown trainer config keys \\['l22'\\]"):
        TrainerConfig.from_json(json.dumps(dict(values, l22=1.0)))
