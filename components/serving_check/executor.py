"""ServingCheck executor: build the candidate (pruned export + warmup), check it in process, then serve it and check it.

Outputs: ``blessing`` (InfraBlessing; custom properties ``blessed``, ``has_model``, ``reason`` and the
pruning measurements the Pusher reports; the checked export under ``<uri>/stamped_model`` when
blessed) and ``report`` (``<uri>/serving_check.json``).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any, Dict, List

from absl import logging
from tfx import types
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils, path_utils

from components import push_defaults

MODEL_KEY = "model"
MODEL_BLESSING_KEY = "model_blessing"
EXAMPLES_KEY = "examples"
TRANSFORM_GRAPH_KEY = "transform_graph"
BLESSING_KEY = "blessing"
REPORT_KEY = "report"

MODEL_NAME_KEY = "model_name"
EXAMPLES_SPLIT_KEY = "examples_split"
PARITY_TOLERANCE_KEY = "parity_tolerance"
PARITY_EXAMPLES_KEY = "parity_examples"
WARMUP_REQUESTS_KEY = "warmup_requests"
MIN_COMPACT_BYTES_KEY = "min_compact_bytes"
SAMPLE_ROWS_KEY = "sample_rows"
MAX_LOAD_SECONDS_KEY = "max_load_seconds"
MAX_PEAK_RSS_MB_KEY = "max_peak_rss_mb"
MAX_P99_LATENCY_MS_KEY = "max_p99_latency_ms"
MAX_SCORE_DIFF_KEY = "max_score_diff"
STARTUP_TIMEOUT_KEY = "startup_timeout_seconds"

REPORT_FILE = "serving_check.json"
# The InfraBlessing conventions of TFX's InfraValidator and Pusher (marker files, has_model,
# the model under stamped_model/).
BLESSED_FILE, NOT_BLESSED_FILE = "INFRA_BLESSED", "INFRA_NOT_BLESSED"
HAS_MODEL_KEY = "has_model"
# Pruning measurements carried to the Pusher's PushedModel (docs/contracts.md).
CARRIED_INT_PROPERTIES = ("size_before_bytes", "size_after_bytes", "embedding_bytes_before", "embedding_bytes_after",
                          "id_map_bytes", "embedding_rows", "embedding_zero_rows", "embedding_rows_dropped",
                          "compacted_tables", "vocabulary_lines", "vocabulary_lines_kept", "warmup_requests")
CARRIED_FLOAT_PROPERTIES = ("row_sparsity", "parity_max_abs_error")

DEFAULTS = {MODEL_NAME_KEY: push_defaults.MODEL_NAME, EXAMPLES_SPLIT_KEY: push_defaults.EXAMPLES_SPLIT,
            PARITY_TOLERANCE_KEY: push_defaults.PARITY_TOLERANCE, PARITY_EXAMPLES_KEY: push_defaults.PARITY_EXAMPLES,
            WARMUP_REQUESTS_KEY: push_defaults.WARMUP_REQUESTS, MIN_COMPACT_BYTES_KEY: push_defaults.MIN_COMPACT_BYTES,
            SAMPLE_ROWS_KEY: push_defaults.SAMPLE_ROWS, MAX_LOAD_SECONDS_KEY: push_defaults.MAX_LOAD_SECONDS,
            MAX_PEAK_RSS_MB_KEY: push_defaults.MAX_PEAK_RSS_MB, MAX_P99_LATENCY_MS_KEY: push_defaults.MAX_P99_LATENCY_MS,
            MAX_SCORE_DIFF_KEY: push_defaults.MAX_SCORE_DIFF, STARTUP_TIMEOUT_KEY: push_defaults.STARTUP_TIMEOUT_SECONDS}


def _write_report(report_artifact, report: Dict[str, Any]) -> None:
    import tensorflow as tf
    tf.io.gfile.makedirs(report_artifact.uri)
    with tf.io.gfile.GFile(os.path.join(report_artifact.uri, REPORT_FILE), "w") as f:
        f.write(json.dumps(report, indent=1, sort_keys=True, default=str))


def _bless(blessing, passed: bool, reason: str) -> None:
    import tensorflow as tf
    blessing.set_int_custom_property("blessed", 1 if passed else 0)
    blessing.set_int_custom_property(HAS_MODEL_KEY, 1 if passed else 0)
    blessing.set_string_custom_property("reason", reason)
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, BLESSED_FILE if passed else NOT_BLESSED_FILE), "w") as f:
        f.write(reason)


class Executor(base_executor.BaseExecutor):
    """Export -> in-process parity -> warmup file -> fresh serving process over REST and gRPC -> blessing."""

    def Do(self, input_dict: Dict[str, List[types.Artifact]], output_dict: Dict[str, List[types.Artifact]],
           exec_properties: Dict[str, Any]) -> None:
        from components.serving_check import check
        from components.pruned_pusher import pruning

        self._log_startup(input_dict, output_dict, exec_properties)
        props = {k: exec_properties.get(k) if exec_properties.get(k) is not None else v for k, v in DEFAULTS.items()}
        blessing = artifact_utils.get_single_instance(output_dict[BLESSING_KEY])
        report_artifact = artifact_utils.get_single_instance(output_dict[REPORT_KEY])
        model_name = props[MODEL_NAME_KEY]
        limits = check.Limits(max_load_seconds=float(props[MAX_LOAD_SECONDS_KEY]),
                              max_peak_rss_mb=float(props[MAX_PEAK_RSS_MB_KEY]),
                              max_p99_latency_ms=float(props[MAX_P99_LATENCY_MS_KEY]),
                              max_score_diff=float(props[MAX_SCORE_DIFF_KEY]),
                              startup_timeout_seconds=float(props[STARTUP_TIMEOUT_KEY]))

        gate = (input_dict.get(MODEL_BLESSING_KEY) or [None])[0]
        if gate is not None and gate.get_int_custom_property("blessed") != 1:
            reason = "not run: the gates did not bless the model"
            _bless(blessing, False, reason)
            _write_report(report_artifact, {"passed": False, "skipped": True, "reason": reason,
                                            "model_name": model_name, "limits": limits.__dict__})
            logging.info("ServingCheck skipped: %s", reason)
            return

        model = artifact_utils.get_single_instance(input_dict[MODEL_KEY])
        trained_dir = path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))
        examples = artifact_utils.get_single_instance(input_dict[EXAMPLES_KEY])
        sample_rows, parity_rows = int(props[SAMPLE_ROWS_KEY]), int(props[PARITY_EXAMPLES_KEY])
        rows = pruning.read_split_examples(examples, props[EXAMPLES_SPLIT_KEY],
                                           max(parity_rows, sample_rows, int(props[WARMUP_REQUESTS_KEY])))
        transform_graph = artifact_utils.get_single_instance(input_dict[TRANSFORM_GRAPH_KEY])

        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="serving-check-") as work:
            staged, serve_dir = os.path.join(work, "candidate"), os.path.join(work, "serve")
            # Started first: its start-up (Python, TensorFlow) overlaps the export and scoring here.
            server = check.start_serving(serve_dir, model_name, limits)
            try:
                report, size_after, pruning_report = self._check(
                    trained_dir, transform_graph.uri, rows, props, limits, model_name, staged, serve_dir, server)
            finally:
                server.stop()
            parity_error, warmups = report["parity_max_abs_error"], report["warmup_requests_written"]
            if report["passed"]:
                # The checked files become the blessing's model; the manifests prove they are the same.
                stamped = path_utils.stamped_model_path(blessing.uri)
                io_utils.copy_dir(staged, stamped)
                if pruning.manifest(stamped) != pruning.manifest(staged):
                    raise RuntimeError(f"the copy of the checked candidate at {stamped} differs from it")
                report["stamped_model"] = stamped
        report["duration_total_s"] = round(time.monotonic() - started, 2)
        _bless(blessing, bool(report["passed"]), report["reason"] if not report["passed"] else "servable")
        for key, value in (("size_before_bytes", pruning.dir_size(trained_dir)), ("size_after_bytes", size_after),
                           ("embedding_bytes_before", pruning_report.embedding_bytes_before),
                           ("embedding_bytes_after", pruning_report.embedding_bytes_after),
                           ("id_map_bytes", pruning_report.id_map_bytes),
                           ("embedding_rows", pruning_report.rows), ("embedding_zero_rows", pruning_report.zero_rows),
                           ("embedding_rows_dropped", pruning_report.dropped_rows),
                           ("compacted_tables", pruning_report.compacted_tables),
                           ("vocabulary_lines", pruning_report.vocabulary_lines),
                           ("vocabulary_lines_kept", pruning_report.vocabulary_lines_kept),
                           ("warmup_requests", warmups)):
            blessing.set_int_custom_property(key, int(value))
        blessing.set_float_custom_property("row_sparsity", float(pruning_report.row_sparsity))
        if parity_error is not None:
            blessing.set_float_custom_property("parity_max_abs_error", parity_error)
        _write_report(report_artifact, report)
        logging.info("ServingCheck of %s: %s", model_name, check.summary_line(report))

    @staticmethod
    def _check(trained_dir: str, transform_graph_uri: str, rows: List[bytes], props: Dict[str, Any], limits,
               model_name: str, staged: str, serve_dir: str, server):
        """Export the candidate to `staged`, score it in process, then check it served by `server`:
        (report, with its parity error and warmup requests written; SavedModel bytes; pruning report)."""
        from components.serving_check import check
        from components.pruned_pusher import pruning
        sample_rows, parity_rows = int(props[SAMPLE_ROWS_KEY]), int(props[PARITY_EXAMPLES_KEY])
        # Reference scores: the trained model's, in this process.
        spec, reference = pruning.trained_spec_and_scores(trained_dir, transform_graph_uri,
                                                          rows[:max(parity_rows, sample_rows)])
        # The candidate, exactly as the Pusher will publish it.
        pruning_report = pruning.export_pruned(trained_dir, transform_graph_uri, staged,
                                               min_compact_bytes=int(props[MIN_COMPACT_BYTES_KEY]), spec=spec)
        size_after = pruning.dir_size(staged)  # the SavedModel, before assets.extra is added
        warmups = pruning.write_warmup_requests(staged, rows, model_name, int(props[WARMUP_REQUESTS_KEY]))
        parity_error, in_process_error = None, None
        if rows:
            import numpy as np
            try:
                pruned = pruning.score_examples(staged, rows[:parity_rows])
                parity_error = float(np.max(np.abs(pruned.astype(np.float64) -
                                                   np.asarray(reference[:parity_rows], np.float64))))
            except Exception as e:  # noqa: BLE001 -- a candidate that does not even load here fails the check
                in_process_error = check._one_line(str(e).strip().splitlines()[0] if str(e).strip()
                                                   else type(e).__name__)
        def failed(reason: str) -> Dict[str, Any]:
            return {"passed": False, "model_name": model_name, "limits": limits.__dict__, "measured": {},
                    "reason": reason}

        if in_process_error:
            report = failed(f"the candidate cannot be loaded and scored in process: {in_process_error}")
        elif not rows:
            report = failed("no eval rows to check the candidate with (the examples' "
                            f"{props[EXAMPLES_SPLIT_KEY]} split is empty)")
        elif not parity_error <= float(props[PARITY_TOLERANCE_KEY]):  # also NaN
            report = failed(f"pruned model disagrees with the trained model: max |Δprobability| = "
                            f"{parity_error:.3g} > tolerance {float(props[PARITY_TOLERANCE_KEY]):g} on "
                            f"{len(rows[:parity_rows])} eval rows")
        else:
            report = check.check_candidate(staged, rows[:sample_rows], reference[:sample_rows], model_name,
                                           limits, work_dir=serve_dir, server=server)
        report["parity_max_abs_error"] = parity_error
        report["warmup_requests_written"] = warmups
        return report, size_after, pruning_report
