"""benchmarks/evaluator_metrics_bench.py: the pipeline's metrics and TFMA's own through the real
Evaluator executor agree; the committed results back what the README quotes."""
import json
import os

import pytest

from benchmarks import evaluator_metrics_bench
from tests.benchmarks.test_evaluator_bench import _write_examples_and_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "evaluator_metrics.json")


def test_pipeline_and_tfma_metrics_agree(tmp_path):
    _write_examples_and_model(tmp_path)
    evaluator_metrics_bench.main(["--examples", str(tmp_path / "examples"), "--model", str(tmp_path / "model"),
                                  "--schema", str(tmp_path / "schema.pbtxt"), "--files", "2", "--repeats", "1",
                                  "--models", "1", "--copies", "2", "--out", str(tmp_path / "result")])
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["rows_evaluated"] == 1200
    (summary,) = report["summary"]
    assert summary["metrics_agree"], summary
    assert {r["case"] for r in report["runs"]} == set(evaluator_metrics_bench.CASES)
    for name in ("binary_crossentropy", "auc", "calibration", "mean_label", "mean_prediction"):
        assert all(r["metrics"][f"overall/{name}/"] > 0 for r in report["runs"]), name


def test_the_tfma_case_computes_every_metric_with_tfma_own_class():
    from tensorflow_model_analysis.metrics import metric_specs, metric_types
    ours = evaluator_metrics_bench.case_config("pipeline").metrics_specs[0].metrics
    theirs = evaluator_metrics_bench.case_config("tfma").metrics_specs[0].metrics
    assert [m.class_name for m in theirs] == ["ExampleCount", "AUC", "BinaryCrossentropy", "Calibration",
                                              "MeanPrediction", "MeanLabel"]
    assert not any(m.module for m in theirs)
    assert [m.threshold for m in ours] == [m.threshold for m in theirs]
    registered = metric_types.registered_metrics()
    for metric in theirs:
        instance = metric_specs.metric_instance(metric)
        assert metric.class_name not in registered or type(instance) is registered[metric.class_name]


def test_metrics_that_differ_do_not_agree():
    runs = [{"models": 1, "case": c, "wall_s": 1.0, "metrics": {"overall/binary_crossentropy/": 0.45, "overall/auc/": 0.8}}
            for c in evaluator_metrics_bench.CASES]
    assert evaluator_metrics_bench.summarize(runs)[0]["metrics_agree"]
    runs[1]["metrics"]["overall/binary_crossentropy/"] = 0.45 * (1 + 1e-5)
    assert not evaluator_metrics_bench.summarize(runs)[0]["metrics_agree"]
    runs[1]["metrics"]["overall/binary_crossentropy/"] = 0.45
    runs[1]["metrics"]["overall/auc/"] = 0.8 * (1 + 1e-7)
    assert not evaluator_metrics_bench.summarize(runs)[0]["metrics_agree"]


def test_committed_results_show_agreement_and_the_quoted_figures():
    with open(RESULTS) as f:
        report = json.load(f)
    assert report["rows_evaluated"] > 100_000
    for s in report["summary"]:
        assert s["metrics_agree"], s
        assert s["speed_up"] == pytest.approx(s["tfma_s"] / s["pipeline_s"], rel=0.02)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = " ".join(f.read().split())
    one = next(s for s in report["summary"] if s["models"] == 1)
    two = next(s for s in report["summary"] if s["models"] == 2)
    assert (f"took {one['pipeline_s']:.0f} s against {one['tfma_s']:.0f} s with TFMA's own metrics "
            f"({one['speed_up']:.2f}x)") in readme
    assert f"{two['pipeline_s']:.0f} vs {two['tfma_s']:.0f} s with a baseline model ({two['speed_up']:.2f}x)" in readme
