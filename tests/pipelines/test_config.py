"""pipelines/config.py: every key is checked for type and range when the config loads."""
import dataclasses

import pytest

from pipelines import config as cfg
from pipelines.config import ConfigError, PipelineConfig, load_config, validate


def _leaf_keys(obj, where=""):
    for field in dataclasses.fields(obj):
        key = f"{where}.{field.name}" if where else field.name
        value = getattr(obj, field.name)
        yield from _leaf_keys(value, key) if dataclasses.is_dataclass(value) else [key]


def _overrides(key, value):
    *sections, name = key.split(".")
    out = {name: value}
    for section in reversed(sections):
        out = {section: out}
    return out


def test_every_key_has_a_rule_and_the_defaults_pass():
    assert set(_leaf_keys(PipelineConfig())) == set(cfg._RULES)
    assert validate(PipelineConfig()) == PipelineConfig()


BAD = [
    ("trainer.l21", -1.0, "must be a finite number >= 0, got -1.0"),
    ("trainer.l21", float("nan"), "got nan"),
    ("trainer.l1", float("inf"), "finite"),
    ("trainer.learning_rate", 0, "> 0"),
    ("trainer.epochs", 0, ">= 1"),
    ("trainer.epochs", "four", "got 'four'"),
    ("trainer.epochs", True, "integer"),
    ("trainer.epochs", 2.0, "integer"),
    ("trainer.batch_size", 0, ">= 1"),
    ("trainer.steps_per_execution", 0, ">= 1"),
    ("trainer.steps_per_execution", 2.5, "integer"),
    ("trainer.embedding_dim", 0, ">= 1"),
    ("trainer.embedding_dims", {"C1": 0}, "trainer.embedding_dims.C1"),
    ("trainer.hidden_units", [64, -1], "trainer.hidden_units[1]"),
    ("trainer.hidden_units", 64, "list"),
    ("trainer.model", "lstm", "dnn, deepfm, wide_deep, dcn"),
    ("trainer.optimizer", "sgd", "group_adam"),
    ("trainer.distribution", "tpu", "mirrored"),
    ("trainer.train_steps", 0, ">= 1"),
    ("trainer.jit_compile", "yes", "true, false or auto"),
    ("trainer.seed", -1, "integer"),
    ("trainer.target_sparsity", 1.0, "in (0, 1), got 1.0"),
    ("trainer.target_sparsity", 0, "in (0, 1), got 0"),
    ("trainer.target_sparsity", -0.5, "in (0, 1)"),
    ("trainer.target_sparsity_per_table", {"C1": 1.5}, "trainer.target_sparsity_per_table.C1"),
    ("trainer.max_embedding_bytes", -1, "number of bytes (an integer >= 0), got -1"),
    ("trainer.max_embedding_bytes", 2.5, "number of bytes"),
    ("trainer.max_embedding_bytes_per_table", {"C1": -8}, "trainer.max_embedding_bytes_per_table.C1"),
    ("gates.max_model_bytes", -1, "number of bytes"),
    ("data.max_bad_fraction", 5, "in [0, 1], got 5"),
    ("data.span_window", 0, ">= 1"),
    ("data.generated_rows", 10**12, f"in [1, {cfg.MAX_GENERATED_ROWS}]"),
    ("data.generated_rows", 0, "integer"),
    ("data.eval_split_buckets", 10, "in [1, 9]"),
    ("data.eval_split_buckets", 0, "in [1, 9]"),
    ("serving.keep_versions", 0, ">= 1"),
    ("serving.model_name", "..", "got '..'"),
    ("serving.model_name", ".", "got '.'"),
    ("serving.model_name", "a/b", "got 'a/b'"),
    ("serving.model_name", "", "got ''"),
    ("serving.min_compact_bytes", -1, ">= 0"),
    ("gates.min_auc", -1, "in [0, 1], got -1"),
    ("gates.min_auc", 1.5, "in [0, 1]"),
    ("gates.max_auc_drop", -1.5, "in [-1, 1]"),
    ("gates.max_auc_drop", 2, "in [-1, 1]"),
    ("gates.min_sparsity", 2, "in [0, 1]"),
    ("gates.min_sparsity_per_table", {"C1": 1.5}, "gates.min_sparsity_per_table.C1"),
    ("beam_preset", "nosuch", "inmemory"),
    ("beam_args", "--x", "list"),
    ("pipeline_name", "../x", "name"),
    ("output_dir", "", "non-empty string"),
]


@pytest.mark.parametrize("key,value,message", BAD, ids=[f"{k}={v!r}" for k, v, _ in BAD])
def test_bad_values_are_one_line_errors_naming_the_key(key, value, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, _overrides(key, value))
    assert isinstance(e.value, ValueError)
    text = str(e.value)
    assert text.startswith(f"{key.split('.')[0]}") and message in text and "\n" not in text, text
    assert e.value.key.startswith(key)


def test_transform_without_materializing_is_not_for_parameter_server_training():
    with pytest.raises(ConfigError, match="data.materialize_transformed: parameter_server training reads "
                                          "transformed examples"):
        load_config(None, {"data": {"materialize_transformed": False}, "trainer": {"distribution": "parameter_server"}})
    assert load_config(None, {"data": {"materialize_transformed": False}}).data.materialize_transformed is False
    with pytest.raises(ConfigError, match="data.materialize_transformed"):
        load_config(None, {"data": {"materialize_transformed": "no"}})


def test_numbers_are_normalized():
    config = load_config(None, {"trainer": {"l21": 0, "learning_rate": "1e-3"}, "gates": {"min_auc": 1}})
    assert config.trainer.l21 == 0.0 and isinstance(config.trainer.l21, float)
    assert config.trainer.learning_rate == 0.001  # YAML 1.1 reads `1e-3` (no dot) as a string
    assert config.gates.min_auc == 1.0


@pytest.mark.parametrize("text,message", [
    ("- trainer\n- data\n", "must be a mapping of config keys, got list"),
    ("trainer: [1\n", "not a valid config file"),
    ("trainer:\n  epochs: 2\n bad: indent\n", "not a valid config file"),
    ("trainer: !!python/object/apply:os.system [echo hi]\n", "could not determine a constructor"),
    ("trainer: 3\n", "trainer: must be a mapping"),
    ("trainer:\n  epochs: four\n", "trainer.epochs: must be an integer >= 1, got 'four'"),
    ("nosuch: 1\n", "nosuch: unknown config key"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_empty_file_and_empty_section_keep_the_defaults(tmp_path):
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "section.yaml").write_text("data:\n  # generated_rows: 5\n")
    assert load_config(str(tmp_path / "empty.yaml")) == PipelineConfig()
    assert load_config(str(tmp_path / "section.yaml")) == PipelineConfig()


def test_trainer_choices_match_the_components():
    from components import models, trainer_module, training
    assert cfg.MODELS == models.MODELS
    assert cfg.DISTRIBUTIONS == trainer_module.DISTRIBUTIONS
    base = cfg.TrainerConfig()
    for name in cfg.OPTIMIZERS:
        assert training.make_optimizer(dataclasses.replace(base, optimizer=name)) is not None
    with pytest.raises(ValueError, match="not in"):
        training.make_optimizer(dataclasses.replace(base, optimizer="nosuch"))


def test_eval_split_buckets_set_the_example_gen_split(tmp_path):
    from google.protobuf import json_format
    from tfx.proto import example_gen_pb2
    from components.click_log_example_gen.component import default_output_config, input_config_for
    from pipelines.pipeline import create_pipeline

    def split(config):
        example_gen = create_pipeline(config, str(tmp_path)).components[0]
        output = json_format.Parse(example_gen.exec_properties["output_config"], example_gen_pb2.Output())
        return output, [(s.name, s.hash_buckets) for s in output.split_config.splits]

    default, buckets = split(load_config(None, {"output_dir": str(tmp_path)}))
    assert buckets == [("train", 8), ("eval", 2)] and default == default_output_config(input_config_for("*"))
    _, buckets = split(load_config(None, {"output_dir": str(tmp_path), "data": {"eval_split_buckets": 3}}))
    assert buckets == [("train", 7), ("eval", 3)]


@pytest.mark.parametrize("trainer,key,message", [
    ({"target_sparsity": 0.8, "max_embedding_bytes": 10**6}, "trainer.max_embedding_bytes",
     "either target_sparsity or max_embedding_bytes, not both"),
    ({"target_sparsity_per_table": {"C1": 0.9}, "max_embedding_bytes_per_table": {"C1": 4096}},
     "trainer.max_embedding_bytes_per_table.C1", "table C1 also has a target_sparsity_per_table"),
    ({"target_sparsity": 0.8, "optimizer": "adam"}, "trainer.optimizer", "needs a Group optimizer"),
    ({"max_embedding_bytes_per_table": {"C1": 4096}, "distribution": "parameter_server"}, "trainer.distribution",
     "cannot be used with parameter_server training"),
])
def test_conflicting_targets_are_one_line_errors(trainer, key, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"trainer": trainer})
    assert e.value.key == key and message in str(e.value) and "\n" not in str(e.value)


def test_targets_and_byte_counts():
    config = load_config(None, {"trainer": {"target_sparsity": 0.9, "max_embedding_bytes_per_table": {"C3": "2e6"},
                                            "target_sparsity_per_table": {"C1": 0.5}},
                                "gates": {"max_model_bytes": 3e6}})
    assert config.trainer.target_sparsity == 0.9 and config.trainer.target_sparsity_per_table == {"C1": 0.5}
    assert config.trainer.max_embedding_bytes_per_table == {"C3": 2000000}  # YAML 1.1 reads 2e6 as a string
    assert config.gates.max_model_bytes == 3000000 and isinstance(config.gates.max_model_bytes, int)


def test_statistics_gen_counts_string_values_with_sketches(tmp_path):
    """StatisticsGen runs with the curated schema's statistics options (sketch-based top-k/uniques)."""
    import tensorflow_data_validation as tfdv
    from pipelines.pipeline import create_pipeline
    components = create_pipeline(load_config(None, {"output_dir": str(tmp_path)}), str(tmp_path)).components
    statistics_gen = next(c for c in components if c.id == "StatisticsGen")
    options = tfdv.StatsOptions.from_json(statistics_gen.exec_properties["stats_options_json"])
    assert options.use_sketch_based_topk_uniques is True
