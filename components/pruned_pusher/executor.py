"""PrunedPusher executor: TFX's Pusher executor, pushing the pruned model (pruning.py).

Blessing is checked by the stock ``CheckBlessing`` (model_blessing / infra_blessing): a model that is
not blessed is not pushed and the PushedModel artifact gets ``pushed=0``, exactly like TFX's Pusher.
With an ``infra_blessing`` from ServingCheck that carries the checked export (``has_model=1``), that
export is published as it is (no second pruning); without one the executor prunes, parity-checks and
adds the warmup file itself.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List

import tensorflow as tf
from absl import logging
from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components import push_defaults

EXAMPLES_KEY = "examples"
TRANSFORM_GRAPH_KEY = "transform_graph"
MODEL_NAME_KEY = "model_name"
KEEP_VERSIONS_KEY = "keep_versions"
PARITY_TOLERANCE_KEY = "parity_tolerance"
PARITY_EXAMPLES_KEY = "parity_examples"
WARMUP_REQUESTS_KEY = "warmup_requests"
EXAMPLES_SPLIT_KEY = "examples_split"
MODEL_BASE_PATH_KEY = "model_base_path"
MIN_COMPACT_BYTES_KEY = "min_compact_bytes"
LOCK_TIMEOUT_KEY = "lock_timeout_seconds"

DEFAULTS = {MODEL_NAME_KEY: push_defaults.MODEL_NAME, KEEP_VERSIONS_KEY: push_defaults.KEEP_VERSIONS,
            PARITY_TOLERANCE_KEY: push_defaults.PARITY_TOLERANCE, PARITY_EXAMPLES_KEY: push_defaults.PARITY_EXAMPLES,
            WARMUP_REQUESTS_KEY: push_defaults.WARMUP_REQUESTS, EXAMPLES_SPLIT_KEY: push_defaults.EXAMPLES_SPLIT,
            MODEL_BASE_PATH_KEY: "", MIN_COMPACT_BYTES_KEY: push_defaults.MIN_COMPACT_BYTES,
            LOCK_TIMEOUT_KEY: push_defaults.LOCK_TIMEOUT_SECONDS}


class Executor(tfx_pusher_executor.Executor):
    """Prune -> parity check -> warmup -> atomic versioned push -> models.config."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from components.pruned_pusher import pruning

        self._log_startup(input_dict, output_dict, exec_properties)
        props = {k: exec_properties.get(k) if exec_properties.get(k) is not None else v for k, v in DEFAULTS.items()}
        model_push = artifact_utils.get_single_instance(output_dict[standard_component_specs.PUSHED_MODEL_KEY])
        if not self.CheckBlessing(input_dict):
            self._MarkNotPushed(model_push)
            return
        model_path = self.GetModelPath(input_dict)

        destination = pusher_pb2.PushDestination()
        proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY], destination)
        if destination.WhichOneof("destination") != "filesystem" or not destination.filesystem.base_directory:
            raise ValueError("PrunedPusher needs push_destination.filesystem.base_directory (the TF Serving base "
                             "directory; the model goes to <base>/<model_name>/<version>/)")
        base_dir = destination.filesystem.base_directory

        # A ServingCheck's blessing carries the checked candidate: publish exactly those files.
        infra = (input_dict.get(standard_component_specs.INFRA_BLESSING_KEY) or [None])[0]
        if infra is not None and infra.get_int_custom_property("has_model") == 1:
            self._push_checked(infra, model_path, base_dir, props, model_push)
            return

        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        rows = pruning.read_split_examples(examples, props[EXAMPLES_SPLIT_KEY],
                                           max(int(props[PARITY_EXAMPLES_KEY]), int(props[WARMUP_REQUESTS_KEY])))
        transform_graph = artifact_utils.get_single_instance(input_dict[TRANSFORM_GRAPH_KEY])
        # The Trainer's warm-start state (components.warm_start) travels inside the pushed version, so
        # the next scheduled run finds it beside the model it continues.
        from components import warm_start
        state = warm_start.state_dir(os.path.dirname(model_path.rstrip("/")))
        carry = {warm_start.STATE_DIR: state} if tf.io.gfile.isdir(state) else {}

        with tempfile.TemporaryDirectory(prefix="pruned-export-") as staging:
            staged = os.path.join(staging, "model")
            result = pruning.prune_and_push(
                model_path, transform_graph.uri, rows, base_dir,
                model_name=props[MODEL_NAME_KEY], keep_versions=int(props[KEEP_VERSIONS_KEY]),
                parity_tolerance=float(props[PARITY_TOLERANCE_KEY]),
                parity_examples=int(props[PARITY_EXAMPLES_KEY]),
                warmup_requests=int(props[WARMUP_REQUESTS_KEY]),
                staging_dir=staged,
                model_base_path=props[MODEL_BASE_PATH_KEY] or None, carry_dirs=carry,
                min_compact_bytes=int(props[MIN_COMPACT_BYTES_KEY]),
                lock_timeout_s=float(props[LOCK_TIMEOUT_KEY]))
            # Like TFX's Pusher: the pushed model is also archived under the artifact's own uri. Copied
            # from the staged files (what was published, manifest-checked): the served version may
            # already be going away under a later push's retention.
            io_utils.copy_dir(staged, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=result.path, pushed_version=str(result.version))
        report = result.report
        for key, value in (("size_before_bytes", result.size_before_bytes),
                           ("size_after_bytes", result.size_after_bytes),
                           ("embedding_bytes_before", report.embedding_bytes_before),
                           ("embedding_bytes_after", report.embedding_bytes_after),
                           ("id_map_bytes", report.id_map_bytes),
                           ("embedding_rows", report.rows),
                           ("embedding_zero_rows", report.zero_rows),
                           ("embedding_rows_dropped", report.dropped_rows),
                           ("compacted_tables", report.compacted_tables),
                           ("vocabulary_lines", report.vocabulary_lines),
                           ("vocabulary_lines_kept", report.vocabulary_lines_kept),
                           ("warmup_requests", result.warmup_requests),
                           ("warm_start_bytes", pruning.dir_size(state) if carry else 0)):
            model_push.set_int_custom_property(key, int(value))
        model_push.set_float_custom_property("row_sparsity", float(report.row_sparsity))
        model_push.set_float_custom_property("parity_max_abs_error", float(result.parity_max_abs_error))
        model_push.set_string_custom_property("models_config", result.models_config)
        logging.info("pushed pruned model to %s: %d -> %d bytes, embeddings %d -> %d bytes (row sparsity %.4f), "
                     "parity max |error| %.3g", result.path, result.size_before_bytes, result.size_after_bytes,
                     report.embedding_bytes_before, report.embedding_bytes_after, report.row_sparsity,
                     result.parity_max_abs_error)

    def _push_checked(self, infra, model_path: str, base_dir: str, props: Dict[str, Any], model_push) -> None:
        """Publish ``<infra_blessing>/stamped_model`` (the ServingCheck's checked export) as it is, plus the
        Trainer's warm-start state; the pruning measurements come from the blessing's properties."""
        from components.pruned_pusher import pruning
        from components import warm_start
        from tfx.utils import path_utils
        checked = path_utils.stamped_model_path(infra.uri)
        state = warm_start.state_dir(os.path.dirname(model_path.rstrip("/")))
        carry = {warm_start.STATE_DIR: state} if tf.io.gfile.isdir(state) else {}
        with tempfile.TemporaryDirectory(prefix="checked-export-") as staging:
            staged = os.path.join(staging, "model")
            io_utils.copy_dir(checked, staged)
            if pruning.manifest(staged) != pruning.manifest(checked):
                raise RuntimeError(f"the copy of the checked export {checked} differs from it; nothing was pushed")
            path, version, config = pruning.push_export(
                staged, base_dir, props[MODEL_NAME_KEY], int(props[KEEP_VERSIONS_KEY]),
                props[MODEL_BASE_PATH_KEY] or None, carry, float(props[LOCK_TIMEOUT_KEY]))
            io_utils.copy_dir(staged, model_push.uri)
        self._MarkPushed(model_push, pushed_destination=path, pushed_version=str(version))
        from components.serving_check.executor import CARRIED_FLOAT_PROPERTIES, CARRIED_INT_PROPERTIES
        for key in CARRIED_INT_PROPERTIES:
            if infra.has_custom_property(key):
                model_push.set_int_custom_property(key, int(infra.get_int_custom_property(key)))
        for key in CARRIED_FLOAT_PROPERTIES:
            if infra.has_custom_property(key):
                model_push.set_float_custom_property(key, float(infra.get_float_custom_property(key)))
        model_push.set_int_custom_property("warm_start_bytes", pruning.dir_size(state) if carry else 0)
        model_push.set_string_custom_property("models_config", config)
        model_push.set_string_custom_property("checked_export", checked)
        logging.info("pushed the ServingCheck's checked export %s to %s", checked, path)
