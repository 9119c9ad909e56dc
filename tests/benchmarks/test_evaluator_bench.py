"""benchmarks/evaluator_bench.py: both cases run the real Evaluator executor and agree; the committed
results back what the README quotes."""
import json
import os

import pytest

from benchmarks import evaluator_bench
from tests.conftest import write_sigmoid_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "evaluator.json")


def _write_examples_and_model(tmp_path):
    """Two eval files of Criteo-layout tf.Examples and a serving_default over serialized examples."""
    import numpy as np
    import tensorflow as tf
    from tensorflow_metadata.proto.v0 import schema_pb2
    rng = np.random.default_rng(1)
    split = tmp_path / "examples" / "Split-eval"
    split.mkdir(parents=True)
    for part in range(2):
        with tf.io.TFRecordWriter(str(split / f"data-{part}.gz"), options="GZIP") as w:
            for i in range(300):
                score = float(rng.normal())
                feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(
                               value=[int(rng.random() < 1 / (1 + np.exp(-2 * score)))])),
                           "I1": tf.train.Feature(float_list=tf.train.FloatList(value=[score])),
                           "C1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"v%d" % (i % 5)]))}
                w.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())

    write_sigmoid_model(str(tmp_path / "model"), "I1")
    schema = schema_pb2.Schema()
    schema.feature.add(name="label", type=schema_pb2.INT)
    schema.feature.add(name="I1", type=schema_pb2.FLOAT)
    schema.feature.add(name="C1", type=schema_pb2.BYTES)
    (tmp_path / "schema.pbtxt").write_text(str(schema))


def test_narrowed_and_full_evaluations_agree(tmp_path):
    _write_examples_and_model(tmp_path)
    out = tmp_path / "result"
    evaluator_bench.main(["--examples", str(tmp_path / "examples"), "--model", str(tmp_path / "model"),
                          "--schema", str(tmp_path / "schema.pbtxt"), "--files", "2", "--repeats", "1",
                          "--out", str(out)])
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["rows_evaluated"] == 600
    assert [s["models"] for s in report["summary"]] == [1, 2]
    assert all(s["metrics_agree"] for s in report["summary"])
    two = next(r for r in report["runs"] if r["models"] == 2)
    assert any(k.endswith("/auc/baseline") for k in two["metrics"]) and any("/diff" in k for k in two["metrics"])
    assert "agree" in (tmp_path / "result.txt").read_text()


def test_metrics_that_differ_or_are_missing_do_not_agree():
    runs = [{"metrics": {"auc": 0.8, "mean": 0.25}}, {"metrics": {"auc": 0.8, "mean": 0.25 * (1 + 1e-12)}}]
    assert evaluator_bench.max_relative_difference(runs) < evaluator_bench.METRICS_RTOL
    runs[1]["metrics"]["auc"] = 0.8001
    assert evaluator_bench.max_relative_difference(runs) > evaluator_bench.METRICS_RTOL
    del runs[1]["metrics"]["auc"]
    assert evaluator_bench.max_relative_difference(runs) == float("inf")


def test_committed_results_show_agreeing_metrics_and_the_quoted_speed_up():
    with open(RESULTS) as f:
        report = json.load(f)
    assert report["rows_evaluated"] > 100_000
    for s in report["summary"]:
        assert s["metrics_agree"], s
        assert s["speed_up"] == pytest.approx(s["full_s"] / s["narrowed_s"], rel=0.02)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    one = next(s for s in report["summary"] if s["models"] == 1)
    assert f"{one['full_s']:.0f} s" in readme and f"{one['narrowed_s']:.0f} s narrowed" in readme
