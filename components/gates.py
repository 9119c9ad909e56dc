"""The push decision: the last pushed model as a baseline, the TFMA gate, and the sparsity gate.

Open-source Kubeflow Pipelines v2 cannot run TFX Resolver nodes, so `LatestPushedModel` finds the
newest version under the serving base directory itself (the same way under LocalDagRunner and KFP)
and hands it on as a Model artifact: the Evaluator's baseline, flagged `found=0` when there is none.
`BaselineEvaluator` is TFX's Evaluator that treats a `found=0` baseline as no baseline (TFX then
ignores the change thresholds) and decodes only the features TFMA reads (label, slices): the models
get the serialized examples, and unbatching every raw feature of every example was a third of its
time. `SparsityGate` reads the trained embedding tables (TFMA cannot see weights) and makes the one
decision the Pusher follows: blessed only if the Evaluator blessed the model and its embedding-row
sparsity reaches the minimum. Its report (JSON) gives every measured value, its threshold and the
verdict.
"""
# No `from __future__ import annotations`: TFX parses the component signatures' real types.
import json
import os
import tempfile
from typing import Any, Dict, Optional, Set

import tensorflow as tf
from tfx.components.evaluator import executor as evaluator_executor
from tfx.components.evaluator.component import Evaluator
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact, standard_artifacts, standard_component_specs
from tfx.utils import io_utils, proto_utils

from components.beam_dependencies import NoSdistOnDirectRunner
from serving import model_versions

REPORT_FILE = "gate_report.json"


class GateReport(artifact.Artifact):
    """gate_report.json: each gate's measured value, threshold and verdict, and the decision."""
    TYPE_NAME = "sparsectr.GateReport"


def latest_version_dir(model_base: str) -> Optional[str]:
    """The newest complete numeric version under `<serving_dir>/<model_name>`, as TF Serving picks it."""
    return model_versions.latest_version_dir(model_base, tf.io.gfile)


@component
def LatestPushedModel(model_base: Parameter[str], model: OutputArtifact[standard_artifacts.Model]):
    """Copies the newest pushed version under `model_base` into `model` (Format-Serving layout)."""
    latest = latest_version_dir(model_base)
    model.set_int_custom_property("found", 1 if latest else 0)
    if latest:
        model_versions.copy_tree(latest, os.path.join(model.uri, "Format-Serving"))
        model.set_string_custom_property("source_path", latest)
        model.set_string_custom_property("source_version", os.path.basename(latest))


def evaluated_features(eval_config) -> Optional[Set[str]]:
    """The example features TFMA reads for `eval_config` (labels, weights, slices); None when it
    cannot be told (SQL slices), in which case every feature must be decoded."""
    names: Set[str] = set()
    for spec in eval_config.model_specs:
        for key in ("label_key", "example_weight_key", "prediction_key"):
            if getattr(spec, key):
                names.add(getattr(spec, key))
        for keys in (spec.label_keys, spec.example_weight_keys, spec.prediction_keys):
            names.update(keys.values())
    slices = list(eval_config.slicing_specs)
    for cross in eval_config.cross_slicing_specs:
        slices += [cross.baseline_spec, *cross.slicing_specs]
    for spec in slices:
        if spec.slice_keys_sql:
            return None
        names.update(spec.feature_keys)
        names.update(spec.feature_values.keys())
    return names


def reduced_schema(schema, names: Set[str]):
    """`schema` with only the features in `names`; None if one of them is not in it."""
    kept = [f for f in schema.feature if f.name in names]
    if {f.name for f in kept} != names:
        return None
    reduced = type(schema)()
    reduced.CopyFrom(schema)
    del reduced.feature[:]
    reduced.feature.extend(kept)
    # Composite features and custom tensor representations may name features that are gone; the
    # kept ones get TFXIO's default representation.
    del reduced.sparse_feature[:]
    del reduced.weighted_feature[:]
    reduced.ClearField("tensor_representation_group")
    return reduced


class _BaselineEvaluatorExecutor(NoSdistOnDirectRunner, evaluator_executor.Executor):
    def Do(self, input_dict, output_dict, exec_properties):
        baseline = input_dict.get("baseline_model") or []
        if baseline and not baseline[0].get_int_custom_property("found"):
            input_dict = {k: v for k, v in input_dict.items() if k != "baseline_model"}
        schema_key = standard_component_specs.SCHEMA_KEY
        with tempfile.TemporaryDirectory() as tmp:
            if input_dict.get(schema_key):
                input_dict = dict(input_dict, **{schema_key: [self._evaluated_schema(input_dict[schema_key][0],
                                                                                      exec_properties, tmp)]})
            return super().Do(input_dict, output_dict, exec_properties)

    @staticmethod
    def _evaluated_schema(schema_artifact, exec_properties, tmp: str):
        """A Schema artifact in `tmp` with the features TFMA reads, or `schema_artifact` itself."""
        import tensorflow_model_analysis as tfma
        config_json = exec_properties.get(standard_component_specs.EVAL_CONFIG_KEY)
        if not config_json:
            return schema_artifact
        eval_config = tfma.EvalConfig()
        proto_utils.json_to_proto(config_json, eval_config)
        schema = io_utils.SchemaReader().read(io_utils.get_only_uri_in_dir(schema_artifact.uri))
        names = evaluated_features(eval_config)
        reduced = reduced_schema(schema, names) if names is not None else None
        if reduced is None:
            return schema_artifact
        artifact_in_tmp = standard_artifacts.Schema()
        artifact_in_tmp.uri = tmp
        io_utils.write_pbtxt_file(os.path.join(tmp, "schema.pbtxt"), reduced)
        return artifact_in_tmp


class BaselineEvaluator(Evaluator):
    """TFX's Evaluator; a LatestPushedModel baseline with found=0 counts as no baseline, and a
    `schema` narrows the decoded features to those TFMA reads."""
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(_BaselineEvaluatorExecutor)


def _overall_auc(evaluation_uri: str) -> Dict[str, float]:
    """AUC of each model (candidate, baseline) and the candidate-minus-baseline diff, overall slice."""
    import tensorflow_model_analysis as tfma
    values: Dict[str, float] = {}
    for metrics in tfma.load_metrics(evaluation_uri):
        if metrics.slice_key.single_slice_keys:
            continue
        for kv in metrics.metric_keys_and_values:
            if kv.key.name != "auc" or not kv.value.HasField("double_value"):
                continue
            model = kv.key.model_name or "candidate"
            values[f"{model}_diff" if kv.key.is_diff else model] = kv.value.double_value.value
    return values


def decide(auc: Dict[str, float], evaluator_blessed: bool, sparsity: Dict[str, Any], min_auc: float,
           max_auc_drop: float, min_sparsity: float, min_sparsity_per_table: Dict[str, float],
           max_model_bytes: Optional[int] = None) -> Dict[str, Any]:
    """The gate report: every check with its value, threshold and verdict, and the decision.

    `max_model_bytes` (None: no limit) bounds the bytes of the non-zero embedding rows, what the
    pruned export holds (`model_bytes` of the sparsity report).
    """
    candidate = auc.get("candidate")
    gates: Dict[str, Any] = {
        "auc": {"value": candidate, "threshold": min_auc,
                "passed": candidate is not None and candidate >= min_auc},
    }
    if "baseline" in auc:
        floor = auc["baseline"] - max_auc_drop
        gates["auc_vs_baseline"] = {"value": candidate, "baseline": auc["baseline"],
                                    "threshold": floor, "passed": candidate is not None and candidate >= floor}
    gates["sparsity"] = {"value": sparsity["fraction"], "threshold": min_sparsity,
                         "passed": sparsity["fraction"] >= min_sparsity}
    for table, minimum in sorted(min_sparsity_per_table.items()):
        value = sparsity["tables"].get(table, {}).get("fraction")
        gates[f"sparsity:{table}"] = {"value": value, "threshold": minimum,
                                      "passed": value is not None and value >= minimum}
    if max_model_bytes is not None:
        value = sparsity.get("model_bytes")
        gates["model_bytes"] = {"value": value, "threshold": max_model_bytes, "comparison": "<=",
                                "passed": value is not None and value <= max_model_bytes}
    failed = [name for name, g in gates.items() if not g["passed"]]
    # TFMA's own verdict must agree; if it does not (a threshold we do not mirror), it wins.
    if not evaluator_blessed and not any(n.startswith("auc") for n in failed):
        failed.append("evaluator")
    reasons = []
    for name in failed:
        g = gates.get(name)
        if g is None:
            reasons.append("the Evaluator did not bless the model")
        elif g["value"] is None:
            reasons.append(f"{name}: not measured")
        elif g.get("comparison") == "<=":
            reasons.append(f"{name} {g['value']} > {g['threshold']}")
        else:
            reasons.append(f"{name} {g['value']:.4f} < {g['threshold']:.4f}")
    return {"gates": gates, "evaluator_blessed": evaluator_blessed, "blessed": not failed,
            "reason": "; ".join(reasons) if reasons else "all gates passed"}


@component
def SparsityGate(
    model: InputArtifact[standard_artifacts.Model],
    evaluator_blessing: InputArtifact[standard_artifacts.ModelBlessing],
    evaluation: InputArtifact[standard_artifacts.ModelEvaluation],
    blessing: OutputArtifact[standard_artifacts.ModelBlessing],
    report: OutputArtifact[GateReport],
    min_auc: Parameter[float],
    max_auc_drop: Parameter[float],
    min_sparsity: Parameter[float],
    min_sparsity_per_table: Parameter[str] = "{}",
    max_model_bytes: Parameter[int] = -1,
):
    """Blesses the model only if the Evaluator blessed it and its embeddings are sparse enough."""
    with tf.io.gfile.GFile(os.path.join(model.uri, "sparsity.json")) as f:
        sparsity = json.load(f)
    evaluator_blessed = evaluator_blessing.get_int_custom_property("blessed") == 1
    result = decide(_overall_auc(evaluation.uri), evaluator_blessed, sparsity, min_auc, max_auc_drop,
                    min_sparsity, json.loads(min_sparsity_per_table or "{}"),
                    max_model_bytes=None if max_model_bytes < 0 else max_model_bytes)
    tf.io.gfile.makedirs(report.uri)
    with tf.io.gfile.GFile(os.path.join(report.uri, REPORT_FILE), "w") as f:
        f.write(json.dumps(result, indent=1, sort_keys=True))
    # The same markers and properties TFX's Evaluator writes, so the stock Pusher logic applies.
    for key in ("current_model", "current_model_id", "baseline_model", "baseline_model_id"):
        if evaluator_blessing.has_custom_property(key):
            value = evaluator_blessing.get_custom_property(key)
            if isinstance(value, int):
                blessing.set_int_custom_property(key, value)
            else:
                blessing.set_string_custom_property(key, str(value))
    blessing.set_int_custom_property("blessed", 1 if result["blessed"] else 0)
    blessing.set_string_custom_property("reason", result["reason"])
    tf.io.gfile.makedirs(blessing.uri)
    with tf.io.gfile.GFile(os.path.join(blessing.uri, "BLESSED" if result["blessed"] else "NOT_BLESSED"), "w") as f:
        f.write("")
