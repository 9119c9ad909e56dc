"""The one configuration object of a sparsectr pipeline: every knob, with its default, in one place.

The Trainer's section is defined beside the Trainer (components/trainer_config.py: `TrainerConfig`
and its choices), which reads it back typed; it is part of this config like every other section.

A `PipelineConfig` is built from defaults, optionally overlaid with a YAML file (same nesting as the
dataclasses below), then with command-line options. Every runner (local, Kubeflow v2) takes it.
`load_config` checks every value's type and range (`validate`) before anything runs: a bad value is
a `ConfigError`, one line naming its key path.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from typing import Any, Callable, Dict, List, Optional

import yaml

from components import push_defaults
from components.trainer_config import DISTRIBUTIONS, MODELS, OPTIMIZERS, PS_TARGET_ERROR, TrainerConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ExampleGen hashes each example into one of SPLIT_BUCKETS buckets; data.eval_split_buckets of them
# form the eval split, the rest the train split.
SPLIT_BUCKETS = 10
# The generator writes ~244 bytes a row, ~15 us a row on one core: 1e8 rows are ~24 GB and ~25 min.
# Bigger sets belong in data.data_root (--data).
MAX_GENERATED_ROWS = 100_000_000
# pipelines.generator.PRESETS (tests/pipelines/test_generator.py checks they agree).
GENERATOR_PRESETS = ("default", "criteo-scale")


@dataclasses.dataclass
class DataConfig:
    # Folder of click-log files; None = generate Criteo-layout logs under <output>/generated.
    data_root: Optional[str] = None
    # Built-in spec name (criteo, criteo-kaggle, avazu) or a spec file path.
    dataset_format: str = "criteo"
    # Glob under data_root. May contain {SPAN} (TFX span pattern) for daily spans.
    input_pattern: str = "*"
    # With {SPAN} in the pattern: ingest the newest N spans (1 = the newest day only).
    span_window: int = 1
    # Quarantine: fail the run when more than this fraction of lines is bad.
    max_bad_fraction: float = 0.01
    # Quarantine records stored per (reason, file); the counts always include every bad line.
    max_quarantine_records_per_reason: int = 1000
    # Rows generated when data_root is None.
    generated_rows: int = 20000
    generator_seed: int = 7
    # Generated data's preset (pipelines.generator.preset_config): default | criteo-scale.
    generator_preset: str = "default"
    # Ground truth of generated data (its Bayes-optimal AUC goes into the summary).
    ground_truth: Optional[str] = None
    eval_split_buckets: int = 2  # eval hash buckets out of SPLIT_BUCKETS: train:eval = 8:2
    # Transform writes the transformed examples the Trainer reads; false: it writes only its transform
    # graph, which the Trainer applies to each batch of ExampleGen's examples (Transform in under half
    # the time, each epoch a little slower: docs/ingestion.md). Not with parameter_server training.
    materialize_transformed: bool = True

    @property
    def split_buckets(self) -> List[tuple]:
        """(split name, hash buckets) of ExampleGen's output splits."""
        return [("train", SPLIT_BUCKETS - self.eval_split_buckets), ("eval", self.eval_split_buckets)]


@dataclasses.dataclass
class GateConfig:
    min_auc: float = 0.60
    max_auc_drop: float = 0.01
    min_sparsity: float = 0.0
    min_sparsity_per_table: Dict[str, float] = dataclasses.field(default_factory=dict)
    # Largest model the gate lets through: bytes of the non-zero embedding rows plus the other weights
    # (what the pruned export's variables hold). None = no limit.
    max_model_bytes: Optional[int] = None
    slice_field: Optional[str] = None


@dataclasses.dataclass
class ServingConfig:
    model_name: str = push_defaults.MODEL_NAME
    serving_dir: Optional[str] = None  # None = <output>/serving
    keep_versions: int = push_defaults.KEEP_VERSIONS
    # base_path written into <serving_dir>/models.config when TF Serving sees the model folder under
    # another path than the pipeline does (a Pod's mount, say); None = <serving_dir>/<model_name>.
    model_base_path: Optional[str] = None
    # The Pusher compacts a table only when that saves at least this many bytes (its two lookup ops
    # cost a few KB of graph per signature; smaller tables stay whole).
    min_compact_bytes: int = push_defaults.MIN_COMPACT_BYTES


@dataclasses.dataclass
class ServingCheckConfig:
    """Limits of the ServingCheck step (components/serving_check): the candidate is served in a fresh
    serving process before the push and must stay under each of them, or nothing is pushed."""
    # eval rows sent one per request over REST and over gRPC (and as one batch)
    sample_rows: int = push_defaults.SAMPLE_ROWS
    max_load_seconds: float = push_defaults.MAX_LOAD_SECONDS  # version published -> AVAILABLE
    # the serving process's peak resident memory after all requests
    max_peak_rss_mb: float = push_defaults.MAX_PEAK_RSS_MB
    max_p99_latency_ms: float = push_defaults.MAX_P99_LATENCY_MS  # single-row requests, per protocol
    max_score_diff: float = push_defaults.MAX_SCORE_DIFF  # |served probability - trained model's probability|
    startup_timeout_seconds: float = push_defaults.STARTUP_TIMEOUT_SECONDS  # serving process started -> listening


@dataclasses.dataclass
class ScoringConfig:
    # Backfills: a BulkInferrer step after the gates scores the ingested examples of these splits
    # with the blessed model (an InferenceResult of PredictionLogs). Off by default. Click-log files
    # are scored outside a run with `python -m pipelines score`.
    bulk_inference: bool = False
    bulk_inference_splits: List[str] = dataclasses.field(default_factory=lambda: ["eval"])


@dataclasses.dataclass
class KubeflowConfig:
    image: str = "ghcr.io/sparsectr/pipeline:0.1.0"
    pipeline_root: str = "gs://YOUR_BUCKET/sparsectr/pipeline_root"
    endpoint: Optional[str] = None
    # A ReadWriteMany PersistentVolumeClaim (in the namespace the runs execute in) that the compiled
    # spec mounts at serving.serving_dir in the steps that read or write the serving folder (Pusher,
    # LatestPushedModel); TF Serving mounts the same claim read-only. Needed when serving_dir is a
    # local path; an object-store serving_dir (gs://, s3://) needs none.
    serving_volume_claim: Optional[str] = None


@dataclasses.dataclass
class PipelineConfig:
    pipeline_name: str = "sparsectr"
    output_dir: str = os.path.join(REPO_ROOT, "output")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    gates: GateConfig = dataclasses.field(default_factory=GateConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
    serving_check: ServingCheckConfig = dataclasses.field(default_factory=ServingCheckConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    # Beam: "local" = DirectRunner, multi-processing with one worker per core once the input is
    # larger than local_multiprocessing_min_bytes, in-memory below (worker start-up, each importing
    # TensorFlow, costs more than it saves on small data); or a preset name from BEAM_PRESETS
    # (inmemory, multiprocessing, dataflow, flink, spark). Extra args are appended unchanged.
    beam_preset: str = "local"
    local_multiprocessing_min_bytes: int = 64 << 20
    beam_args: List[str] = dataclasses.field(default_factory=list)
    # ML Metadata: SQLite file (None = <output>/metadata.sqlite).
    metadata_path: Optional[str] = None

    # -- derived paths ----------------------------------------------------------------------------
    @property
    def pipeline_root(self) -> str:
        return os.path.join(self.output_dir, "pipeline_root")

    @property
    def serving_dir(self) -> str:
        return self.serving.serving_dir or os.path.join(self.output_dir, "serving")

    @property
    def metadata_sqlite(self) -> str:
        return self.metadata_path or os.path.join(self.output_dir, "metadata.sqlite")

    @property
    def summary_path(self) -> str:
        return os.path.join(self.output_dir, "summary.json")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


BEAM_PRESETS: Dict[str, List[str]] = {
    "multiprocessing": ["--runner=DirectRunner", "--direct_running_mode=multi_processing",
                        f"--direct_num_workers={os.cpu_count() or 1}"],
    # One process: no worker start-up (each worker imports TensorFlow), fastest on small data.
    "inmemory": ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"],
    # Users fill in project/region/bucket; the args pass through to Beam unchanged.
    "dataflow": ["--runner=DataflowRunner", "--project=YOUR_PROJECT", "--region=us-central1",
                 "--temp_location=gs://YOUR_BUCKET/tmp", "--experiments=use_runner_v2"],
    "flink": ["--runner=FlinkRunner", "--flink_master=localhost:8081", "--environment_type=LOOPBACK"],
    "spark": ["--runner=SparkRunner", "--spark_master_url=local[*]", "--environment_type=LOOPBACK"],
}


def beam_pipeline_args(config: PipelineConfig, input_bytes: Optional[int] = None) -> List[str]:
    """Beam args of the configured preset; "local" resolves by `input_bytes` (None: multi-processing)."""
    preset = config.beam_preset
    if preset == "local":
        small = input_bytes is not None and input_bytes < config.local_multiprocessing_min_bytes
        preset = "inmemory" if small else "multiprocessing"
    if preset not in BEAM_PRESETS:
        raise ValueError(f"beam_preset {config.beam_preset!r} not in {['local'] + sorted(BEAM_PRESETS)}")
    return list(BEAM_PRESETS[preset]) + list(config.beam_args)


class ConfigError(ValueError):
    """A config value of the wrong type or out of range, or an unreadable config file.

    `str()` is one line: "<key path>: <problem>", e.g. "trainer.l21: must be a finite number >= 0, got -1.0".
    """

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


# -- the rule of every config key: (key path, value) -> the value (floats as float) or ConfigError --
Rule = Callable[[str, Any], Any]


def _bounds(lo, hi, above=None, below=None) -> str:
    if above is not None and below is not None:
        return f" in ({above}, {below})"
    if above is not None:
        return f" > {above}"
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    return f" >= {lo}" if lo is not None else ""


def _integer(lo: Optional[int] = None, hi: Optional[int] = None) -> Rule:
    def check(key, value):
        if isinstance(value, bool) or not isinstance(value, int) or \
                (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ConfigError(key, f"must be an integer{_bounds(lo, hi)}, got {value!r}")
        return value
    return check


def _number(lo: Optional[float] = None, hi: Optional[float] = None, above: Optional[float] = None,
            below: Optional[float] = None) -> Rule:
    def check(key, value):
        number = value
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                number = float(value)
            except ValueError:
                pass
        ok = isinstance(number, (int, float)) and not isinstance(number, bool) and math.isfinite(number) \
            and (lo is None or number >= lo) and (hi is None or number <= hi) and (above is None or number > above) \
            and (below is None or number < below)
        if not ok:
            raise ConfigError(key, f"must be a finite number{_bounds(lo, hi, above, below)}, got {value!r}")
        return float(number)
    return check


def _byte_count(key, value):
    """A number of bytes: an integer >= 0; 2e6 and "2e6" (YAML 1.1 reads 2e6 as a string) too."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            pass
    if isinstance(number, float) and math.isfinite(number) and number.is_integer():
        number = int(number)
    if isinstance(number, bool) or not isinstance(number, int) or number < 0:
        raise ConfigError(key, f"must be a number of bytes (an integer >= 0), got {value!r}")
    return number


def _text(key, value):
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


def _boolean(key, value):
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, got {value!r}")
    return value


def _boolean_or_auto(key, value):
    if not isinstance(value, bool) and value != "auto":
        raise ConfigError(key, f"must be true, false or auto, got {value!r}")
    return value


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def _name(key, value):
    """A name that is one safe path component (model folder, pipeline name): not '.', '..', 'a/b'."""
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value):
        raise ConfigError(key, f"must be a name of letters, digits, '.', '_' and '-' that starts with a "
                               f"letter or digit, got {value!r}")
    return value


_K8S_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def _k8s_name(key, value):
    """A Kubernetes object name (RFC 1123 subdomain: lower case, digits, '-', '.')."""
    if not isinstance(value, str) or not _K8S_NAME.fullmatch(value):
        raise ConfigError(key, f"must be a Kubernetes object name (lower-case letters, digits, '-' and '.', "
                               f"starting and ending with a letter or digit), got {value!r}")
    return value


def _one_of(options) -> Rule:
    def check(key, value):
        if not isinstance(value, str) or value not in options:
            raise ConfigError(key, f"must be one of {', '.join(options)}, got {value!r}")
        return value
    return check


def _optional(rule: Rule) -> Rule:
    return lambda key, value: None if value is None else rule(key, value)


def _list_of(rule: Rule) -> Rule:
    def check(key, value):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"must be a list, got {value!r}")
        return [rule(f"{key}[{i}]", v) for i, v in enumerate(value)]
    return check


def _mapping_of(rule: Rule) -> Rule:
    def check(key, value):
        if not isinstance(value, dict):
            raise ConfigError(key, f"must be a mapping, got {value!r}")
        for k in value:
            if not isinstance(k, str) or not k:
                raise ConfigError(key, f"keys must be non-empty strings, got {k!r}")
        return {k: rule(f"{key}.{k}", v) for k, v in value.items()}
    return check


_FRACTION = _number(0, 1)
_RULES: Dict[str, Rule] = {
    "pipeline_name": _name,
    "output_dir": _text,
    "beam_preset": _one_of(("local",) + tuple(sorted(BEAM_PRESETS))),
    "local_multiprocessing_min_bytes": _integer(0),
    "beam_args": _list_of(_text),
    "metadata_path": _optional(_text),
    "data.data_root": _optional(_text),
    "data.dataset_format": _text,
    "data.input_pattern": _text,
    "data.span_window": _integer(1),
    "data.max_bad_fraction": _FRACTION,
    "data.max_quarantine_records_per_reason": _integer(0),
    "data.generated_rows": _integer(1, MAX_GENERATED_ROWS),
    "data.generator_seed": _integer(0),
    "data.generator_preset": _one_of(GENERATOR_PRESETS),
    "data.ground_truth": _optional(_text),
    "data.eval_split_buckets": _integer(1, SPLIT_BUCKETS - 1),
    "data.materialize_transformed": _boolean,
    "trainer.model": _one_of(MODELS),
    "trainer.embedding_dim": _integer(1),
    "trainer.embedding_dims": _mapping_of(_integer(1)),
    "trainer.hidden_units": _list_of(_integer(1)),
    "trainer.optimizer": _one_of(OPTIMIZERS),
    "trainer.learning_rate": _number(above=0),
    "trainer.l1": _number(0),
    "trainer.l2": _number(0),
    "trainer.l21": _number(0),
    "trainer.batch_size": _integer(1),
    "trainer.epochs": _integer(1),
    "trainer.early_stopping": _boolean,
    "trainer.rows_relative_to_oov": _boolean,
    "trainer.early_stopping_patience": _integer(1),
    "trainer.target_sparsity": _optional(_number(above=0, below=1)),
    "trainer.max_embedding_bytes": _optional(_byte_count),
    "trainer.target_sparsity_per_table": _mapping_of(_number(above=0, below=1)),
    "trainer.max_embedding_bytes_per_table": _mapping_of(_byte_count),
    "trainer.train_steps": _optional(_integer(1)),
    "trainer.eval_steps": _optional(_integer(1)),
    "trainer.steps_per_execution": _integer(1),
    "trainer.jit_compile": _boolean_or_auto,
    "trainer.distribution": _one_of(DISTRIBUTIONS),
    "trainer.seed": _integer(0, 2**32 - 1),  # numpy's seed range (keras.utils.set_random_seed)
    "trainer.warm_start": _boolean,
    "gates.min_auc": _FRACTION,
    # Negative: the new model must beat the last pushed one by that much.
    "gates.max_auc_drop": _number(-1, 1),
    "gates.min_sparsity": _FRACTION,
    "gates.min_sparsity_per_table": _mapping_of(_FRACTION),
    "gates.max_model_bytes": _optional(_byte_count),
    "gates.slice_field": _optional(_text),
    "serving.model_name": _name,
    "serving.serving_dir": _optional(_text),
    "serving.keep_versions": _integer(1),
    "serving.model_base_path": _optional(_text),
    "serving.min_compact_bytes": _integer(0),
    "serving_check.sample_rows": _integer(1, 10000),
    "serving_check.max_load_seconds": _number(above=0),
    "serving_check.max_peak_rss_mb": _number(above=0),
    "serving_check.max_p99_latency_ms": _number(above=0),
    "serving_check.max_score_diff": _number(0),
    "serving_check.startup_timeout_seconds": _number(above=0),
    "scoring.bulk_inference": _boolean,
    "scoring.bulk_inference_splits": _list_of(_one_of(("train", "eval"))),
    "kubeflow.image": _text,
    "kubeflow.pipeline_root": _text,
    "kubeflow.endpoint": _optional(_text),
    "kubeflow.serving_volume_claim": _optional(_k8s_name),
}


def _check_targets(trainer: "TrainerConfig", key: str) -> None:
    """A sparsity target and a byte budget never both for one table, and only with a Group optimizer."""
    if trainer.target_sparsity is not None and trainer.max_embedding_bytes is not None:
        raise ConfigError(f"{key}.max_embedding_bytes", "set either target_sparsity or max_embedding_bytes, "
                                                        "not both (both would apply to every table)")
    both = sorted(set(trainer.target_sparsity_per_table) & set(trainer.max_embedding_bytes_per_table))
    if both:
        raise ConfigError(f"{key}.max_embedding_bytes_per_table.{both[0]}",
                          f"table {both[0]} also has a target_sparsity_per_table; give it one of the two")
    targeted = (trainer.target_sparsity is not None or trainer.max_embedding_bytes is not None
                or trainer.target_sparsity_per_table or trainer.max_embedding_bytes_per_table)
    if targeted and trainer.distribution == "parameter_server":
        raise ConfigError(f"{key}.distribution", PS_TARGET_ERROR)
    if targeted and not trainer.optimizer.startswith("group_"):
        raise ConfigError(f"{key}.optimizer", f"a sparsity or size target needs a Group optimizer (it sets "
                                              f"l21), got {trainer.optimizer!r}")


def _check_sections(config, key: str) -> None:
    if not config.data.materialize_transformed and config.trainer.distribution == "parameter_server":
        raise ConfigError("data.materialize_transformed", "parameter_server training reads transformed examples: "
                                                          "set it true, or train with another distribution")


# Checks across keys of one section (the whole config: ""), after each key's own rule.
_SECTION_CHECKS: Dict[str, Callable[[Any, str], None]] = {"trainer": _check_targets, "": _check_sections}


def validate(config, where: str = "") -> Any:
    """Checks (and normalizes: ints to floats where a number is meant) every value of `config`, a
    `PipelineConfig` or one of its sections (`where` is then its key, e.g. "trainer")."""
    for field in dataclasses.fields(config):
        key = f"{where}.{field.name}" if where else field.name
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            validate(value, key)
        elif key not in _RULES:
            raise KeyError(f"config key {key} has no rule in pipelines.config._RULES")
        else:
            setattr(config, field.name, _RULES[key](key, value))
    if where in _SECTION_CHECKS:
        _SECTION_CHECKS[where](config, where)
    return config


def _overlay(obj, values: Any, source: str, where: str = ""):
    """Sets the keys of `values` (a mapping from `source`: a file, "overrides") on `obj`, the section
    at key path `where`."""
    if not isinstance(values, dict):
        raise ConfigError(where or source, f"must be a mapping of config keys{f' in {source}' if where else ''}, "
                                           f"got {type(values).__name__} {values!r:.60}")
    fields = {f.name for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(path, f"unknown config key in {source} (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if value is not None:  # an empty section ("data:" with its keys commented out)
                _overlay(current, value, source, path)
        else:
            setattr(obj, key, value)
    return obj


def _read_yaml(path: str) -> Any:
    """The YAML document at `path` (safe_load: no Python tags); errors as one-line ConfigErrors."""
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise ConfigError(path, f"cannot read the config file: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "cannot read the config file: not UTF-8 text") from None
    except yaml.YAMLError as e:
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(path, f"not a valid config file: {problem}{where}") from None


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> PipelineConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (same nesting); then `validate`."""
    config = PipelineConfig()
    if path:
        values = _read_yaml(path)
        if values is not None:  # an empty file
            _overlay(config, values, path)
    if overrides:
        _overlay(config, overrides, "overrides")
    return validate(config)


def config_from_options(path: Optional[str], given: Dict[str, Any]) -> PipelineConfig:
    """The config of a command line: defaults, the YAML file at `path`, then the options given.

    `given` maps a config key path to ``(option, value)``, value None when the option was not given
    (``{"trainer.l21": ("--l21", 0.002)}``). A bad value names its option too:
    ``--l21 (trainer.l21): must be a finite number >= 0, got -1.0``. Every CLI (``python -m
    pipelines run``, the Kubeflow ``compile``/``submit``/``schedule``) builds its config with it.
    """
    overrides: Dict[str, Any] = {}
    for key, (_, value) in given.items():
        if value is not None:
            *sections, name = key.split(".")
            section = overrides
            for s in sections:
                section = section.setdefault(s, {})
            section[name] = value
    try:
        return load_config(path, overrides)
    except ConfigError as e:
        option, value = given.get(e.key.split("[")[0], (None, None))
        if value is None:
            raise
        raise ConfigError(f"{option} ({e.key})", e.problem) from None
