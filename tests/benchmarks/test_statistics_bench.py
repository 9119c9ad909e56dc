"""benchmarks/statistics_bench.py: both cases run a real StatisticsGen executor and agree; the
comparison catches statistics that differ; the committed results back what the README quotes."""
import json
import os

import pytest

from benchmarks import statistics_bench
from tests.components.test_fast_statistics import FULL_SCHEMA, _examples_artifact, _schema

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "statistics.json")


def test_bulk_and_tfx_statistics_agree(tmp_path):
    _examples_artifact(str(tmp_path / "examples"), rows=400)
    (tmp_path / "schema.pbtxt").write_text(str(_schema(**FULL_SCHEMA)))
    statistics_bench.main(["--examples", str(tmp_path / "examples"), "--schema", str(tmp_path / "schema.pbtxt"),
                           "--files", "2", "--repeats", "1", "--out", str(tmp_path / "result")])
    report = json.loads((tmp_path / "result.json").read_text())
    assert report["rows"] == 400
    assert report["disagreements"] == [] and report["summary"]["statistics_agree"]
    assert [r["case"] for r in report["runs"]] == ["bulk", "tfx"]
    assert "yes" in (tmp_path / "result.txt").read_text()


def test_differing_statistics_do_not_agree():
    from tensorflow_metadata.proto.v0 import statistics_pb2
    ours = statistics_pb2.DatasetFeatureStatisticsList()
    dataset = ours.datasets.add(num_examples=10)
    feature = dataset.features.add()
    feature.path.step.append("I1")
    feature.num_stats.mean = 2.0
    feature.num_stats.common_stats.num_missing = 1
    top = dataset.features.add()
    top.path.step.append("C1")
    top.string_stats.top_values.add(value="a", frequency=3)
    theirs = type(ours).FromString(ours.SerializeToString())
    theirs.datasets[0].features[1].string_stats.top_values[0].frequency = 4  # a sketch: not compared
    theirs.datasets[0].features[0].num_stats.mean = 2.0 * (1 + 1e-12)
    assert statistics_bench.disagreements(ours, theirs) == []
    theirs.datasets[0].features[0].num_stats.mean = 2.001
    theirs.datasets[0].features[0].num_stats.common_stats.num_missing = 2
    assert statistics_bench.disagreements(ours, theirs) == ["I1: statistics", "I1: mean 2.0 vs 2.001"]
    theirs.datasets[0].num_examples = 11
    assert statistics_bench.disagreements(ours, theirs) == ["num_examples 10 vs 11"]


def test_committed_results_show_agreeing_statistics_and_the_quoted_speed_up():
    with open(RESULTS) as f:
        report = json.load(f)
    summary = report["summary"]
    assert report["rows"] > 100_000 and summary["statistics_agree"]
    assert summary["speed_up"] == pytest.approx(summary["tfx_s"] / summary["bulk_s"], rel=0.02)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert f"{summary['tfx_s']:.1f} s" in readme and f"{summary['bulk_s']:.1f} s" in readme
