"""benchmarks/evaluator_loader_bench.py: the pipeline's model loader and TFMA's own give the same
metrics through the real Evaluator executor; the committed results back what the README quotes."""
import json
import os

import pytest

from benchmarks import evaluator_loader_bench
from tests.benchmarks.test_evaluator_bench import _write_examples_and_model

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "evaluator_loader.json")


def test_both_loaders_give_the_same_metrics(tmp_path):
    _write_examples_and_model(tmp_path)
    evaluator_loader_bench.main(["--examples", str(tmp_path / "examples"), "--model", str(tmp_path / "model"),
                                 "--schema", str(tmp_path / "schema.pbtxt"), "--files", "2", "--repeats", "1",
                                 "--models", "1", "--copies", "2", "--out", str(tmp_path / "result")])
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["rows_evaluated"] == 1200
    (summary,) = report["summary"]
    assert summary["metrics_agree"], summary
    assert [r["case"] for r in report["runs"]] == list(evaluator_loader_bench.CASES)
    assert all(r["metrics"]["overall/auc/"] > 0 for r in report["runs"])
    assert "tfma_loader" in (tmp_path / "result.txt").read_text()


def test_metrics_that_differ_do_not_agree():
    runs = [{"models": 2, "case": c, "wall_s": w, "metrics": {"overall/auc/candidate": 0.8}}
            for c, w in zip(evaluator_loader_bench.CASES, (2.0, 3.0))]
    (summary,) = evaluator_loader_bench.summarize(runs)
    assert summary["metrics_agree"] and summary["speed_up"] == 1.5
    runs[1]["metrics"]["overall/auc/candidate"] = 0.8 * (1 + 1e-7)
    assert not evaluator_loader_bench.summarize(runs)[0]["metrics_agree"]


def test_committed_results_show_agreement_and_the_quoted_figures():
    with open(RESULTS) as f:
        report = json.load(f)
    assert report["rows_evaluated"] > 100_000
    for s in report["summary"]:
        assert s["metrics_agree"], s
        assert s["speed_up"] == pytest.approx(s["tfma_loader_s"] / s["pipeline_s"], rel=0.02)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = " ".join(f.read().split())
    one = next(s for s in report["summary"] if s["models"] == 1)
    two = next(s for s in report["summary"] if s["models"] == 2)
    assert (f"{one['pipeline_s']:.0f} s against {one['tfma_loader_s']:.0f} s ({one['speed_up']:.2f}x), "
            f"{two['pipeline_s']:.0f} vs {two['tfma_loader_s']:.0f} s with a baseline model "
            f"({two['speed_up']:.2f}x)") in readme
