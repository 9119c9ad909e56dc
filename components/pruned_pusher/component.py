"""PrunedPusher: TFX's Pusher component, with the pruning executor and the inputs it needs.

Inputs beyond the stock Pusher's: ``examples`` (rows of the ``eval`` split for the parity check and
the TF Serving warmup file) and ``transform_graph`` (the Trainer's Transform output: the pruned
export rebuilds the three serving signatures with the trainer's own code over it). All parameters are
plain str/int/float so that the KubeflowV2DagRunner compiles them.
"""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.components.pusher import component as tfx_pusher_component
from tfx.dsl.components.base import base_component, executor_spec
from tfx.proto import pusher_pb2
from tfx.types import standard_artifacts, standard_component_specs
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import push_defaults
from components.pruned_pusher import executor


class PrunedPusherSpec(standard_component_specs.PusherSpec):
    PARAMETERS = {
        **standard_component_specs.PusherSpec.PARAMETERS,
        executor.MODEL_NAME_KEY: ExecutionParameter(type=str),
        executor.KEEP_VERSIONS_KEY: ExecutionParameter(type=int),
        executor.PARITY_TOLERANCE_KEY: ExecutionParameter(type=float),
        executor.PARITY_EXAMPLES_KEY: ExecutionParameter(type=int),
        executor.WARMUP_REQUESTS_KEY: ExecutionParameter(type=int),
        executor.EXAMPLES_SPLIT_KEY: ExecutionParameter(type=str),
        executor.MODEL_BASE_PATH_KEY: ExecutionParameter(type=str, optional=True),
        executor.MIN_COMPACT_BYTES_KEY: ExecutionParameter(type=int, optional=True),
        executor.LOCK_TIMEOUT_KEY: ExecutionParameter(type=int, optional=True),
    }
    INPUTS = {
        **standard_component_specs.PusherSpec.INPUTS,
        executor.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        executor.TRANSFORM_GRAPH_KEY: ChannelParameter(type=standard_artifacts.TransformGraph),
    }


class PrunedPusher(tfx_pusher_component.Pusher):
    """Pushes the blessed model, minus its all-zero embedding rows, to ``<base>/<model_name>/<version>/``.

    Output ``pushed_model`` (PushedModel) custom properties: ``pushed`` (1/0), ``pushed_destination``,
    ``pushed_version`` (as TFX's Pusher), ``size_before_bytes``, ``size_after_bytes``,
    ``embedding_bytes_before``, ``embedding_bytes_after``, ``id_map_bytes``, ``embedding_rows``,
    ``embedding_zero_rows``, ``vocabulary_lines`` / ``vocabulary_lines_kept`` (Transform's vocabulary in the
    trained and the pushed model), ``row_sparsity``, ``parity_max_abs_error``, ``warmup_requests``,
    ``models_config`` (docs/contracts.md).
    """

    SPEC_CLASS = PrunedPusherSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, model: types.BaseChannel, model_blessing: Optional[types.BaseChannel],
                 examples: types.BaseChannel, transform_graph: types.BaseChannel,
                 push_destination: pusher_pb2.PushDestination,
                 model_name: str = push_defaults.MODEL_NAME, keep_versions: int = push_defaults.KEEP_VERSIONS,
                 parity_tolerance: float = push_defaults.PARITY_TOLERANCE,
                 parity_examples: int = push_defaults.PARITY_EXAMPLES,
                 warmup_requests: int = push_defaults.WARMUP_REQUESTS,
                 examples_split: str = push_defaults.EXAMPLES_SPLIT, model_base_path: str = "",
                 min_compact_bytes: int = push_defaults.MIN_COMPACT_BYTES,
                 lock_timeout_seconds: int = push_defaults.LOCK_TIMEOUT_SECONDS,
                 infra_blessing: Optional[types.BaseChannel] = None):
        """
        Args:
          model: the Trainer's ``model``.
          model_blessing: the Evaluator's ``blessing`` (not blessed -> nothing pushed, ``pushed=0``).
          examples: raw Examples (ClickLogExampleGen's); rows of `examples_split` feed the parity
            check and the warmup file.
          transform_graph: the Transform output the Trainer used.
          push_destination: ``PushDestination(filesystem=...(base_directory=SERVING_BASE))``: the TF
            Serving base directory (local path or any tf.io.gfile URL); the model goes to
            ``<base>/<model_name>/<version>/`` and ``<base>/models.config`` is written.
          model_name: TF Serving model name (no '/').
          keep_versions: numbered versions kept after a push (>= 1); older ones are deleted.
          parity_tolerance: max |pruned - trained| probability allowed on the parity rows.
          parity_examples: eval rows scored by both models.
          warmup_requests: PredictionLog records in ``assets.extra/tf_serving_warmup_requests`` (<= 1000).
          model_base_path: base_path written into models.config when the model server sees the
            model directory under another path (a Pod mount, gs://...); default ``<base>/<model_name>``.
          min_compact_bytes: a table is compacted only when that saves at least this many bytes (its
            lookup ops cost a few KB of graph in every signature); smaller tables stay whole.
          lock_timeout_seconds: how long a push waits for another push to the same (local) model
            directory to finish before it fails naming the holder; ``<base>/models.config`` keeps
            other models, version pins and labels (docs/pushing.md).
        """
        if not model_name or "/" in model_name:
            raise ValueError(f"model_name must be non-empty and contain no '/', got {model_name!r}")
        if int(keep_versions) < 1:
            raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
        if not 0 <= int(warmup_requests) <= 1000:
            raise ValueError(f"warmup_requests must be in [0, 1000] (TF Serving reads at most 1000), "
                             f"got {warmup_requests}")
        if int(parity_examples) < 1 or float(parity_tolerance) < 0:
            raise ValueError(f"parity_examples must be >= 1 and parity_tolerance >= 0, got "
                             f"{parity_examples}, {parity_tolerance}")
        if int(lock_timeout_seconds) < 0:
            raise ValueError(f"lock_timeout_seconds must be >= 0, got {lock_timeout_seconds}")
        if not push_destination.filesystem.base_directory:
            raise ValueError("push_destination.filesystem.base_directory (the TF Serving base directory) is required")
        spec = PrunedPusherSpec(
            model=model, model_blessing=model_blessing, infra_blessing=infra_blessing,
            examples=examples, transform_graph=transform_graph,
            push_destination=push_destination, custom_config=None,
            model_name=model_name, keep_versions=int(keep_versions), parity_tolerance=float(parity_tolerance),
            parity_examples=int(parity_examples), warmup_requests=int(warmup_requests),
            examples_split=examples_split, model_base_path=model_base_path, min_compact_bytes=int(min_compact_bytes),
            lock_timeout_seconds=int(lock_timeout_seconds),
            pushed_model=types.Channel(type=standard_artifacts.PushedModel))
        # tfx Pusher.__init__ builds a PusherSpec of its own; skip to the base component.
        base_component.BaseComponent.__init__(self, spec=spec)
