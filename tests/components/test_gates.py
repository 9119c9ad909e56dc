"""The push decision's logic and the baseline lookup (the whole path runs in tests/pipelines/test_gates.py)."""
import os

from components.gates import decide, evaluated_features, latest_version_dir, reduced_schema
from tests.conftest import write_sigmoid_model

SPARSITY = {"fraction": 0.6, "tables": {"C1": {"fraction": 0.9}, "C2": {"fraction": 0.1}}}


def test_all_pass_without_baseline():
    r = decide({"candidate": 0.80}, True, SPARSITY, 0.7, 0.01, 0.5, {})
    assert r["blessed"] and r["reason"] == "all gates passed"
    assert set(r["gates"]) == {"auc", "sparsity"}


def test_baseline_drop_fails_alone():
    r = decide({"candidate": 0.80, "baseline": 0.83}, False, SPARSITY, 0.7, 0.01, 0.5, {})
    assert not r["blessed"]
    assert r["gates"]["auc_vs_baseline"]["threshold"] == 0.83 - 0.01
    assert [n for n, g in r["gates"].items() if not g["passed"]] == ["auc_vs_baseline"]
    assert "auc_vs_baseline 0.8000 < 0.8200" in r["reason"]


def test_per_table_minimum_and_overall():
    r = decide({"candidate": 0.80}, True, SPARSITY, 0.7, 0.01, 0.7, {"C1": 0.8, "C2": 0.5, "C9": 0.1})
    failed = sorted(n for n, g in r["gates"].items() if not g["passed"])
    assert failed == ["sparsity", "sparsity:C2", "sparsity:C9"]  # C9: no such table -> not measured
    assert "sparsity:C9: not measured" in r["reason"]


def test_max_model_bytes():
    sized = dict(SPARSITY, model_bytes=120_000)
    r = decide({"candidate": 0.80}, True, sized, 0.7, 0.01, 0.5, {}, max_model_bytes=100_000)
    assert not r["blessed"] and r["reason"] == "model_bytes 120000 > 100000"
    assert r["gates"]["model_bytes"] == {"value": 120_000, "threshold": 100_000, "comparison": "<=", "passed": False}
    assert decide({"candidate": 0.80}, True, sized, 0.7, 0.01, 0.5, {}, max_model_bytes=120_000)["blessed"]
    assert "model_bytes" not in decide({"candidate": 0.80}, True, sized, 0.7, 0.01, 0.5, {})["gates"]
    # a model trained before sparsity.json had bytes: not measured, not blessed
    r = decide({"candidate": 0.80}, True, SPARSITY, 0.7, 0.01, 0.5, {}, max_model_bytes=100_000)
    assert not r["blessed"] and "model_bytes: not measured" in r["reason"]


def test_evaluator_verdict_is_never_overridden():
    # TFMA refused (a threshold the gate does not mirror): the decision follows it.
    r = decide({"candidate": 0.80}, False, SPARSITY, 0.7, 0.01, 0.5, {})
    assert not r["blessed"] and "Evaluator did not bless" in r["reason"]


def test_latest_version_dir_ignores_partial_and_temporary(tmp_path):
    base = tmp_path / "ctr"
    assert latest_version_dir(str(base)) is None
    for v in ("5", "12", "30"):
        (base / v).mkdir(parents=True)
    (base / "5" / "saved_model.pb").write_bytes(b"x")
    (base / "12" / "saved_model.pb").write_bytes(b"x")
    (base / ".tmp-40").mkdir()  # an interrupted push, and "30" has no saved_model.pb yet
    assert latest_version_dir(str(base)) == os.path.join(str(base), "12")


def _eval_config(**slicing):
    import tensorflow_model_analysis as tfma
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name="serving_default", label_key="label")],
        slicing_specs=[tfma.SlicingSpec(), tfma.SlicingSpec(**slicing)] if slicing else [tfma.SlicingSpec()],
        metrics_specs=[tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount"),
                                                 tfma.MetricConfig(class_name="AUC")])])


def _schema(*names):
    from tensorflow_metadata.proto.v0 import schema_pb2
    schema = schema_pb2.Schema()
    for name in names:
        schema.feature.add(name=name, type=schema_pb2.FLOAT if name == "score" else schema_pb2.BYTES)
    schema.feature[0].type = schema_pb2.INT
    return schema


def test_evaluated_features_are_labels_and_slices():
    import tensorflow_model_analysis as tfma
    assert evaluated_features(_eval_config()) == {"label"}
    assert evaluated_features(_eval_config(feature_keys=["C1"])) == {"label", "C1"}
    assert evaluated_features(_eval_config(feature_values={"C2": "a"})) == {"label", "C2"}
    assert evaluated_features(_eval_config(slice_keys_sql="SELECT STRUCT(C1) FROM example")) is None
    crossed = _eval_config()
    crossed.cross_slicing_specs.add(baseline_spec=tfma.SlicingSpec(feature_keys=["C3"]),
                                    slicing_specs=[tfma.SlicingSpec(feature_keys=["C4"])])
    assert evaluated_features(crossed) == {"label", "C3", "C4"}


def test_reduced_schema_keeps_only_named_features_and_refuses_missing_ones():
    schema = _schema("label", "score", "C1", "C2")
    schema.tensor_representation_group[""].tensor_representation["C2"].varlen_sparse_tensor.column_name = "C2"
    reduced = reduced_schema(schema, {"label", "C1"})
    assert [f.name for f in reduced.feature] == ["label", "C1"]
    assert not reduced.tensor_representation_group  # it named C2, which is gone
    assert [f.name for f in schema.feature] == ["label", "score", "C1", "C2"]
    assert reduced_schema(schema, {"label", "C9"}) is None


def _evaluate(tmp_path, name, schema, eval_config):
    """TFX's Evaluator executor as the pipeline runs it (BaselineEvaluator), on the test's examples."""
    from tfx.types import standard_artifacts
    from tfx.utils import io_utils, proto_utils
    from components.gates import _BaselineEvaluatorExecutor
    import tensorflow_model_analysis as tfma
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "examples")
    examples.split_names = '["eval"]'
    model = standard_artifacts.Model()
    model.uri = str(tmp_path / "model")
    evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
    evaluation.uri, blessing.uri = str(tmp_path / name / "evaluation"), str(tmp_path / name / "blessing")
    inputs = {"examples": [examples], "model": [model]}
    if schema is not None:
        schema_artifact = standard_artifacts.Schema()
        schema_artifact.uri = str(tmp_path / name / "schema")
        io_utils.write_pbtxt_file(os.path.join(schema_artifact.uri, "schema.pbtxt"), schema)
        inputs["schema"] = [schema_artifact]
    _BaselineEvaluatorExecutor().Do(inputs, {"evaluation": [evaluation], "blessing": [blessing]},
                                    {"eval_config": proto_utils.proto_to_json(eval_config)})
    values = {}
    for metrics in tfma.load_metrics(evaluation.uri):
        for kv in metrics.metric_keys_and_values:
            values[(metrics.slice_key.SerializeToString(), kv.key.name)] = kv.value.SerializeToString()
    return values


def test_evaluator_with_reduced_schema_gives_the_same_metrics(tmp_path):
    """The Evaluator decoding only label and slice feature computes what it computes decoding all."""
    import numpy as np
    import tensorflow as tf
    rng = np.random.default_rng(0)
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    with tf.io.TFRecordWriter(str(split / "data.gz"), options="GZIP") as w:
        for i in range(600):
            score = float(rng.normal())
            label = int(rng.random() < 1 / (1 + np.exp(-2 * score)))
            features = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                        "score": tf.train.Feature(float_list=tf.train.FloatList(value=[score])),
                        "C1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"abc"[i % 3:i % 3 + 1]]))}
            if i % 4:  # a sometimes-missing feature, as in click logs
                features["C2"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))
            w.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    write_sigmoid_model(str(tmp_path / "model" / "Format-Serving"), "score")
    eval_config = _eval_config(feature_keys=["C1"])
    full = _evaluate(tmp_path, "no_schema", None, eval_config)
    reduced = _evaluate(tmp_path, "schema", _schema("label", "score", "C1", "C2"), eval_config)
    slices = {key[0] for key in full}
    assert len(slices) == 4 and {name for _, name in full} >= {"auc", "example_count"}
    assert reduced == full


def test_evaluator_schema_is_narrowed_only_when_it_can_be(tmp_path):
    from tfx.types import standard_artifacts
    from tfx.utils import io_utils, proto_utils
    from components.gates import _BaselineEvaluatorExecutor
    schema_artifact = standard_artifacts.Schema()
    schema_artifact.uri = str(tmp_path / "schema")
    io_utils.write_pbtxt_file(os.path.join(schema_artifact.uri, "schema.pbtxt"), _schema("label", "score", "C1"))

    def narrowed(eval_config):
        props = {"eval_config": proto_utils.proto_to_json(eval_config)} if eval_config else {}
        out = _BaselineEvaluatorExecutor._evaluated_schema(schema_artifact, props, str(tmp_path / "tmp"))
        if out is schema_artifact:
            return None
        return [f.name for f in io_utils.SchemaReader().read(os.path.join(out.uri, "schema.pbtxt")).feature]

    assert narrowed(_eval_config(feature_keys=["C1"])) == ["label", "C1"]
    assert narrowed(_eval_config(feature_keys=["C7"])) is None  # not in the schema: TFMA decides
    assert narrowed(_eval_config(slice_keys_sql="SELECT STRUCT(C1) FROM example")) is None
    assert narrowed(None) is None  # legacy feature_slicing_spec: no eval_config
