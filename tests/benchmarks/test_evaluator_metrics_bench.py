"""benchmarks/evaluator_metrics_bench.py: both log losses through the real Evaluator executor agree;
the committed results back what the README quotes."""
import json
import os

import pytest

from benchmarks import evaluator_metrics_bench
from tests.benchmarks.test_evaluator_bench import _write_examples_and_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "evaluator_metrics.json")


def test_binary_log_loss_and_tfma_keras_log_loss_agree(tmp_path):
    _write_examples_and_model(tmp_path)
    evaluator_metrics_bench.main(["--examples", str(tmp_path / "examples"), "--model", str(tmp_path / "model"),
                                  "--schema", str(tmp_path / "schema.pbtxt"), "--files", "2", "--repeats", "1",
                                  "--models", "1", "--out", str(tmp_path / "result")])
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["rows_evaluated"] == 600
    (summary,) = report["summary"]
    assert summary["metrics_agree"], summary
    assert {r["case"] for r in report["runs"]} == set(evaluator_metrics_bench.CASES)
    assert all(r["metrics"]["overall/binary_crossentropy/"] > 0 for r in report["runs"])


def test_the_keras_case_swaps_only_the_log_loss():
    ours = evaluator_metrics_bench.case_config("binary_log_loss").metrics_specs[0].metrics
    keras = evaluator_metrics_bench.case_config("tfma_keras").metrics_specs[0].metrics
    assert [m.class_name for m in ours if m.class_name != "BinaryLogLoss"] == \
        [m.class_name for m in keras if m.class_name != "BinaryCrossentropy"]
    assert [m.class_name for m in keras].count("BinaryCrossentropy") == 1
    assert not any(m.module for m in keras)


def test_log_losses_that_differ_do_not_agree():
    runs = [{"models": 1, "case": c, "wall_s": 1.0, "metrics": {"overall/binary_crossentropy/": 0.45, "overall/auc/": 0.8}}
            for c in evaluator_metrics_bench.CASES]
    assert evaluator_metrics_bench.summarize(runs)[0]["metrics_agree"]
    runs[1]["metrics"]["overall/binary_crossentropy/"] = 0.45 * (1 + 1e-5)
    assert not evaluator_metrics_bench.summarize(runs)[0]["metrics_agree"]


def test_committed_results_show_agreement_and_the_quoted_figures():
    with open(RESULTS) as f:
        report = json.load(f)
    assert report["rows_evaluated"] > 100_000
    for s in report["summary"]:
        assert s["metrics_agree"], s
        assert s["speed_up"] == pytest.approx(s["tfma_keras_s"] / s["binary_log_loss_s"], rel=0.02)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    one = next(s for s in report["summary"] if s["models"] == 1)
    assert f"{one['tfma_keras_s']:.0f} s" in readme and f"{one['binary_log_loss_s']:.0f} s with BinaryLogLoss" in readme
