"""ServingCheck: between the gates and the Pusher, proves the candidate loads and answers in a serving process.

TFX's InfraValidator does this for TF Serving, but TFX's Kubeflow V2 compiler cannot compile it
(NotImplementedError), so on open-source Kubeflow Pipelines nobody has it. ServingCheck is an
ordinary container step that runs the same way under LocalDagRunner and KFP:

* it builds the candidate -- the pruned export that will be pushed, with its TF Serving warmup
  requests (``components.pruned_pusher.pruning``) -- and checks its scores against the trained model's in process;
* it serves the candidate in a fresh ``serving.local_server`` process (the TF runtime behind TF
  Serving's REST and gRPC APIs) and checks load time, peak RSS, p99 latency and score parity against
  configured limits, replaying the warmup requests and a sample of eval rows over both protocols
  (``components.serving_check.check``);
* its ``blessing`` (an ``InfraBlessing``, what TFX's Pusher checks) carries the checked export
  under ``stamped_model/`` (``has_model=1``) when it passed, so the Pusher publishes exactly those
  files; ``report`` is ``serving_check.json`` (every measured value, its limit and the verdict).

Fail-closed: a candidate that cannot be exported, loaded or served, answers wrongly or exceeds a
limit gets ``blessed=0`` and the Pusher pushes nothing. A model the gates did not bless is not
checked (``skipped``).
"""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import artifact, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import push_defaults
from components.serving_check import executor


class ServingCheckReport(artifact.Artifact):
    """serving_check.json: what the ServingCheck measured, its limits and the verdict."""
    TYPE_NAME = "sparsectr.ServingCheckReport"


class ServingCheckSpec(ComponentSpec):
    PARAMETERS = {
        executor.MODEL_NAME_KEY: ExecutionParameter(type=str),
        executor.EXAMPLES_SPLIT_KEY: ExecutionParameter(type=str),
        executor.PARITY_TOLERANCE_KEY: ExecutionParameter(type=float),
        executor.PARITY_EXAMPLES_KEY: ExecutionParameter(type=int),
        executor.WARMUP_REQUESTS_KEY: ExecutionParameter(type=int),
        executor.MIN_COMPACT_BYTES_KEY: ExecutionParameter(type=int),
        executor.SAMPLE_ROWS_KEY: ExecutionParameter(type=int),
        executor.MAX_LOAD_SECONDS_KEY: ExecutionParameter(type=float),
        executor.MAX_PEAK_RSS_MB_KEY: ExecutionParameter(type=float),
        executor.MAX_P99_LATENCY_MS_KEY: ExecutionParameter(type=float),
        executor.MAX_SCORE_DIFF_KEY: ExecutionParameter(type=float),
        executor.STARTUP_TIMEOUT_KEY: ExecutionParameter(type=float),
    }
    INPUTS = {
        executor.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
        executor.MODEL_BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing, optional=True),
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor.TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
    }
    OUTPUTS = {
        executor.BLESSING_KEY: ChannelParameter(type=standard_artifacts.InfraBlessing),
        executor.REPORT_KEY: ChannelParameter(type=ServingCheckReport),
    }


class ServingCheck(base_component.BaseComponent):
    """Builds the candidate the Pusher will publish and proves it servable first (see the module doc)."""

    SPEC_CLASS = ServingCheckSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, model: types.BaseChannel, examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 model_blessing: Optional[types.BaseChannel] = None, model_name: str = push_defaults.MODEL_NAME,
                 examples_split: str = push_defaults.EXAMPLES_SPLIT,
                 parity_tolerance: float = push_defaults.PARITY_TOLERANCE,
                 parity_examples: int = push_defaults.PARITY_EXAMPLES,
                 warmup_requests: int = push_defaults.WARMUP_REQUESTS,
                 min_compact_bytes: int = push_defaults.MIN_COMPACT_BYTES, sample_rows: int = push_defaults.SAMPLE_ROWS,
                 max_load_seconds: float = push_defaults.MAX_LOAD_SECONDS,
                 max_peak_rss_mb: float = push_defaults.MAX_PEAK_RSS_MB,
                 max_p99_latency_ms: float = push_defaults.MAX_P99_LATENCY_MS,
                 max_score_diff: float = push_defaults.MAX_SCORE_DIFF,
                 startup_timeout_seconds: float = push_defaults.STARTUP_TIMEOUT_SECONDS):
        """
        Args:
          model: the Trainer's ``model``.
          examples: raw Examples; rows of `examples_split` are the parity rows, the warmup requests and
            the sample sent to the serving process.
          transform_graph: the Transform output the Trainer used (the export rebuilds the signatures over it).
          model_blessing: the gates' blessing; a model that is not blessed is not checked.
          model_name: TF Serving model name.
          parity_tolerance, parity_examples: in-process check of the pruned export against the trained model.
          warmup_requests: PredictionLogs written to ``assets.extra/tf_serving_warmup_requests`` (<= 1000).
          min_compact_bytes: a table is compacted only when that saves at least this many bytes.
          sample_rows: eval rows sent one per request over REST and gRPC (and once as a batch).
          max_load_seconds, max_peak_rss_mb, max_p99_latency_ms, max_score_diff: the limits.
          startup_timeout_seconds: how long the serving process may take to start listening.
        """
        if not model_name or "/" in model_name:
            raise ValueError(f"model_name must be non-empty and contain no '/', got {model_name!r}")
        if not 0 <= int(warmup_requests) <= 1000:
            raise ValueError(f"warmup_requests must be in [0, 1000], got {warmup_requests}")
        if int(sample_rows) < 1 or int(parity_examples) < 1:
            raise ValueError(f"sample_rows and parity_examples must be >= 1, got {sample_rows}, {parity_examples}")
        for name, value in (("max_load_seconds", max_load_seconds), ("max_peak_rss_mb", max_peak_rss_mb),
                            ("max_p99_latency_ms", max_p99_latency_ms), ("startup_timeout_seconds", startup_timeout_seconds)):
            if not float(value) > 0:
                raise ValueError(f"{name} must be > 0, got {value}")
        if float(max_score_diff) < 0 or float(parity_tolerance) < 0:
            raise ValueError("max_score_diff and parity_tolerance must be >= 0")
        spec = ServingCheckSpec(
            model=model, model_blessing=model_blessing, examples=examples, transform_graph=transform_graph,
            model_name=model_name, examples_split=examples_split, parity_tolerance=float(parity_tolerance),
            parity_examples=int(parity_examples), warmup_requests=int(warmup_requests),
            min_compact_bytes=int(min_compact_bytes), sample_rows=int(sample_rows),
            max_load_seconds=float(max_load_seconds), max_peak_rss_mb=float(max_peak_rss_mb),
            max_p99_latency_ms=float(max_p99_latency_ms), max_score_diff=float(max_score_diff),
            startup_timeout_seconds=float(startup_timeout_seconds),
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            report=types.Channel(type=ServingCheckReport))
        super().__init__(spec=spec)
