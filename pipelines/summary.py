"""The run summary: `<output>/summary.json`, read back from ML Metadata after a run.

Each stage adds its block (keys are documented in the README and kept stable):
``ingestion``, ``validation``, ``training``, ``evaluation``, ``gates``, ``push``, plus ``status``,
``error`` (when the run failed), ``run_id`` and ``duration_s``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2


def _props(artifact) -> Dict[str, Any]:
    out = {}
    for props in (artifact.properties, artifact.custom_properties):
        for key, value in props.items():
            kind = value.WhichOneof("value")
            if kind is None:
                continue
            v = getattr(value, kind)
            if kind == "struct_value" or kind == "proto_value":
                continue
            out[key] = v
    return out


def _json_prop(props: Dict[str, Any], key: str):
    value = props.get(key)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _read_json(path: str) -> Optional[Dict[str, Any]]:
    import tensorflow as tf
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def _latest_run_artifacts(store, pipeline_name: str):
    """Artifacts (by type name) produced in the newest pipeline run of `pipeline_name`."""
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    pipeline_ctx = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline_ctx is not None:
        in_pipeline = {e.id for e in store.get_executions_by_context(pipeline_ctx.id)}
        runs = [r for r in runs if any(e.id in in_pipeline for e in store.get_executions_by_context(r.id))]
    if not runs:
        return None, {}
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    types = {t.id: t.name for t in store.get_artifact_types()}
    executions = store.get_executions_by_context(run.id)
    events = store.get_events_by_execution_ids([e.id for e in executions])
    output_ids = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
    by_type: Dict[str, List] = {}
    for artifact in store.get_artifacts_by_id(output_ids):
        by_type.setdefault(types[artifact.type_id], []).append(artifact)
    return run.name, by_type


def _evaluation_block(artifact) -> Dict[str, Any]:
    import tensorflow_model_analysis as tfma
    block: Dict[str, Any] = {}
    try:
        for metrics in tfma.load_metrics(artifact.uri):
            if metrics.slice_key.single_slice_keys:
                continue  # overall slice only here
            for mkey_val in metrics.metric_keys_and_values:
                name = mkey_val.key.name
                if mkey_val.key.model_name == "baseline":
                    name = "baseline_" + name
                elif mkey_val.key.is_diff:
                    name += "_diff_vs_baseline"
                value = mkey_val.value
                if value.HasField("double_value"):
                    block[name] = value.double_value.value
    except Exception as e:  # noqa: BLE001 -- a summary never fails the run it describes
        block["error"] = f"cannot read metrics: {e}".splitlines()[0]
    return block


def collect(metadata_path: str, pipeline_name: str) -> Dict[str, Any]:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    run_id, arts = _latest_run_artifacts(store, pipeline_name)
    return from_artifacts(arts, run_id)


def from_artifacts(arts: Dict[str, List], run_id: Optional[str] = None) -> Dict[str, Any]:
    """The summary blocks of a run's output artifacts (MLMD Artifact protos by type name); the
    RunReport step (pipelines/report_step.py) calls it with its input artifacts."""
    summary: Dict[str, Any] = {"run_id": run_id}

    for examples in arts.get("Examples", []):
        props = _props(examples)
        if "rows_read" in props:  # the ExampleGen output (Transform's has no such property)
            summary["ingestion"] = {
                "rows_read": int(props["rows_read"]),
                "rows_emitted": int(props.get("rows_emitted", 0)),
                "rows_quarantined": int(props.get("rows_quarantined", 0)),
                "quarantined_by_reason": _json_prop(props, "quarantined_by_reason") or {},
                "negative_ints_by_field": _json_prop(props, "negative_ints_by_field") or {},
                "quarantine_uri": props.get("quarantine_uri"),
                "span": props.get("span"),
                "examples_uri": examples.uri,
            }
    for anomalies in arts.get("ExampleAnomalies", []):
        summary["validation"] = _anomalies_block(anomalies.uri)
    for model in arts.get("Model", []):
        if "found" in _props(model):
            continue  # LatestPushedModel's copy of the baseline
        training = _read_json(os.path.join(model.uri, "training.json")) or {}
        sparsity = _read_json(os.path.join(model.uri, "sparsity.json"))
        summary["training"] = dict(training, sparsity=sparsity, model_uri=model.uri)
    for evaluation in arts.get("ModelEvaluation", []):
        summary["evaluation"] = _evaluation_block(evaluation)
    for report in arts.get("sparsectr.GateReport", []):
        summary["gates"] = _read_json(os.path.join(report.uri, "gate_report.json"))
    for report in arts.get("sparsectr.ServingCheckReport", []):
        # The ServingCheck's verdict on the candidate goes into the gates block beside the gates'.
        gates = summary.get("gates") or {}
        gates["serving_check"] = _read_json(os.path.join(report.uri, "serving_check.json"))
        summary["gates"] = gates
    for baseline in arts.get("Model", []):
        props = _props(baseline)
        if "found" in props:
            summary["baseline"] = {"found": bool(props["found"]), "path": props.get("source_path")}
    warm = (summary.get("training") or {}).get("warm_start") or {}
    if warm.get("restored") and summary.get("baseline", {}).get("found"):
        warm["pushed_model"] = summary["baseline"]["path"]  # the version the state was pushed with
    for pushed in arts.get("PushedModel", []):
        props = _props(pushed)
        summary["push"] = {
            "pushed": bool(props.get("pushed", 0)),
            "path": props.get("pushed_destination"),
            "version": props.get("pushed_version"),
        }
        for key in PUSH_PROPERTIES:
            if key in props:
                summary["push"][key] = props[key]
        if summary["push"]["pushed"] and summary["push"]["path"]:
            # The served SavedModel (what TF Serving loads), without the warm-start state beside it.
            summary["push"]["size_bytes"] = props.get("size_after_bytes", _dir_size(summary["push"]["path"]))
        elif summary.get("gates"):
            check = summary["gates"].get("serving_check") or {}
            summary["push"]["reason"] = (f"serving check failed: {check.get('reason')}"
                                         if summary["gates"].get("blessed") and check and not check.get("passed")
                                         else summary["gates"].get("reason"))
    return summary


# PrunedPusher's output properties copied into the push block (docs/contracts.md).
PUSH_PROPERTIES = ("size_before_bytes", "size_after_bytes", "embedding_bytes_before", "embedding_bytes_after",
                   "id_map_bytes", "embedding_rows", "embedding_zero_rows", "embedding_rows_dropped",
                   "compacted_tables", "vocabulary_lines", "vocabulary_lines_kept", "row_sparsity",
                   "parity_max_abs_error", "warmup_requests", "warm_start_bytes", "models_config")


def _anomalies_block(uri: str) -> Dict[str, Any]:
    from components.validation_gate import read_anomalies
    found = read_anomalies(uri)
    return {"anomalies": found, "count": len(found)}


def _dir_size(path: str) -> int:
    import tensorflow as tf
    total = 0
    for root, _, files in tf.io.gfile.walk(path):
        for name in files:
            total += tf.io.gfile.stat(os.path.join(root, name)).length
    return total


def write(summary: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)


def render(summary: Dict[str, Any]) -> str:
    """The human-readable form printed at the end of a run."""
    lines = [f"sparsectr run {summary.get('run_id') or '-'}: {summary.get('status', '?').upper()}"
             + (f" in {summary['duration_s']:.0f}s" if "duration_s" in summary else "")]
    if summary.get("error"):
        lines.append(f"  error: {summary['error']}")
    ing = summary.get("ingestion")
    if ing:
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(ing["quarantined_by_reason"].items())) or "none"
        lines.append(f"  rows: read {ing['rows_read']}, emitted {ing['rows_emitted']}, "
                     f"quarantined {ing['rows_quarantined']} ({reasons})")
    val = summary.get("validation")
    if val is not None:
        lines.append(f"  validation: {val['count']} anomalies"
                     + (": " + "; ".join(f"{k} ({v})" for k, v in val["anomalies"].items()) if val["count"] else ""))
    tr = summary.get("training")
    if tr:
        sp = tr.get("sparsity") or {}
        lines.append(f"  training: {tr.get('model')} with {tr.get('optimizer')}, {tr.get('steps')} steps; "
                     f"embedding-row sparsity {sp.get('fraction', 0):.1%} "
                     f"({sp.get('zero_rows', 0)} of {sp.get('rows', 0)} rows zero)")
        for name, g in sorted(((tr.get("sparsity_target") or {}).get("groups") or {}).items()):
            wanted = (f"sparsity {g['target_sparsity']:g}" if g.get("target_sparsity") is not None
                      else f"{g['max_embedding_bytes'] / 1e6:.3f} MB of rows")
            lines.append(f"  target ({'all tables' if name == '*' else name}): {wanted} -> reached "
                         f"{g['reached_sparsity']:.1%}, {g['reached_bytes'] / 1e6:.3f} MB of non-zero rows; "
                         f"l21 {g['l21_start']:.3g} -> {g['l21']:.3g}")
        early = tr.get("early_stopping") or {}
        if early.get("best_epoch"):
            lines.append(f"  best epoch: {early['best_epoch']} of {early['epochs_run']} run "
                         f"(eval auc by epoch {', '.join(f'{v:.4f}' for v in early['values'])})")
        warm = tr.get("warm_start") or {}
        if warm.get("restored"):
            lines.append(f"  warm start: from {warm.get('pushed_model', warm['source'])} ({warm['steps_before']} steps before); rows "
                         f"carried {warm['rows_carried']}, new {warm['rows_new']}, dropped {warm['rows_dropped']}; "
                         f"optimizer state {'restored' if warm['optimizer_state'] else 'fresh'}")
        elif warm:
            lines.append(f"  cold start: {warm.get('reason')}")
    ev = summary.get("evaluation")
    if ev:
        parts = [f"{k} {ev[k]:.4f}" for k in ("auc", "binary_crossentropy", "calibration") if k in ev]
        if "example_count" in ev:
            parts.append(f"{int(ev['example_count'])} examples")
        lines.append("  eval split: " + ", ".join(parts))
    if summary.get("baseline", {}).get("found"):
        lines.append(f"  baseline: last pushed model {summary['baseline']['path']}")
    if "bayes_auc" in summary:
        lines.append(f"  generated data: Bayes-optimal AUC {summary['bayes_auc']:.4f}")
    gates = summary.get("gates")
    if gates:
        verdicts = []
        for name, g in gates.get("gates", {}).items():
            number = "{}" if g.get("comparison") == "<=" else "{:.4f}"  # bytes: whole numbers
            value = "n/a" if g["value"] is None else number.format(g["value"])
            comparison = g.get("comparison", ">=")
            if not g["passed"]:
                comparison = {">=": "<", "<=": ">"}[comparison]
            verdicts.append(f"{name} {value} {comparison} {number.format(g['threshold'])} "
                            f"{'PASS' if g['passed'] else 'FAIL'}")
        if "blessed" in gates:
            lines.append("  gates: " + "; ".join(verdicts) + f" -> {'BLESSED' if gates['blessed'] else 'NOT BLESSED'}")
        if gates.get("serving_check"):
            from components.serving_check.check import summary_line
            lines.append(f"  serving check: {summary_line(gates['serving_check'])}")
    push = summary.get("push")
    if push:
        if push["pushed"]:
            line = f"  pushed: {push['path']} ({push.get('size_bytes', 0) / 1e6:.2f} MB"
            if "size_before_bytes" in push:
                line += (f"; trained model {push['size_before_bytes'] / 1e6:.2f} MB, embeddings "
                         f"{push['embedding_bytes_before'] / 1e6:.3f} -> {push['embedding_bytes_after'] / 1e6:.3f} MB, "
                         f"parity max |error| {push['parity_max_abs_error']:.2g}")
            lines.append(line + ")")
        else:
            lines.append(f"  not pushed: {push.get('reason', 'model not blessed')}")
    demo = summary.get("demo_scores")
    if demo:
        if "error" in demo:
            lines.append(f"  scoring through local TF Serving failed: {demo['error']}")
        else:
            pairs = ", ".join(f"{p:.3f} (label {y})" for p, y in zip(demo["rest"], demo["labels"]))
            lines.append(f"  scored via local TF Serving REST+gRPC, version {demo['model_version']}: {pairs}")
    return "\n".join(lines)
