"""The one configuration object of a sparsectr pipeline: every knob, with its default, in one place.

A `PipelineConfig` is built from defaults, optionally overlaid with a YAML file (same nesting as the
dataclasses below), then with command-line options. Every runner (local, Kubeflow v2) takes it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Dict, List, Optional

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
    # Rows generated when data_root is None.
    generated_rows: int = 20000
    generator_seed: int = 7
    # Ground truth of generated data (its Bayes-optimal AUC goes into the summary).
    ground_truth: Optional[str] = None
    eval_split_buckets: int = 2  # train:eval = 8:2 hash buckets out of 10


@dataclasses.dataclass
class TrainerConfig:
    model: str = "dnn"  # dnn | deepfm | wide_deep | dcn
    embedding_dim: int = 8
    embedding_dims: Dict[str, int] = dataclasses.field(default_factory=dict)  # per-field override
    hidden_units: List[int] = dataclasses.field(default_factory=lambda: [64, 32])
    optimizer: str = "group_adam"  # group_adam | group_adagrad | group_momentum | group_amsgrad | adam
    learning_rate: float = 0.005
    l1: float = 0.0
    l2: float = 0.0
    l21: float = 1e-3
    batch_size: int = 256
    epochs: int = 4
    train_steps: Optional[int] = None  # None = epochs over the train split
    eval_steps: Optional[int] = None
    jit_compile: bool = True
    distribution: str = "auto"  # auto | none | mirrored | multi_worker (components.trainer_module)
    seed: int = 42
    warm_start: bool = True


@dataclasses.dataclass
class GateConfig:
    min_auc: float = 0.60
    max_auc_drop: float = 0.01
    min_sparsity: float = 0.0
    min_sparsity_per_table: Dict[str, float] = dataclasses.field(default_factory=dict)
    slice_field: Optional[str] = None


@dataclasses.dataclass
class ServingConfig:
    model_name: str = "ctr"
    serving_dir: Optional[str] = None  # None = <output>/serving
    keep_versions: int = 3
    # base_path written into <serving_dir>/models.config when TF Serving sees the model folder under
    # another path than the pipeline does (a Pod's mount, say); None = <serving_dir>/<model_name>.
    model_base_path: Optional[str] = None
    # The Pusher compacts a table only when that saves at least this many bytes (its two lookup ops
    # cost a few KB of graph per signature; smaller tables stay whole).
    min_compact_bytes: int = 8192


@dataclasses.dataclass
class KubeflowConfig:
    image: str = "ghcr.io/sparsectr/pipeline:0.1.0"
    pipeline_root: str = "gs://YOUR_BUCKET/sparsectr/pipeline_root"
    endpoint: Optional[str] = None


@dataclasses.dataclass
class PipelineConfig:
    pipeline_name: str = "sparsectr"
    output_dir: str = os.path.join(REPO_ROOT, "output")
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    gates: GateConfig = dataclasses.field(default_factory=GateConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
    kubeflow: KubeflowConfig = dataclasses.field(default_factory=KubeflowConfig)
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


def _overlay(obj, values: Dict[str, Any], where: str):
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"{where}: unknown config key {key!r} (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{key}: expected a mapping")
            _overlay(current, value, f"{where}.{key}")
        else:
            setattr(obj, key, value)
    return obj


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> PipelineConfig:
    """Defaults, then the YAML file at `path`, then `overrides` (same nesting)."""
    config = PipelineConfig()
    if path:
        with open(path, encoding="utf-8") as f:
            _overlay(config, yaml.safe_load(f) or {}, os.path.basename(path))
    if overrides:
        _overlay(config, overrides, "overrides")
    return config
