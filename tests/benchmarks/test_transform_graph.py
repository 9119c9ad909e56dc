"""benchmarks/transform_graph.py: the baseline graph, the report and the committed result the README quotes."""
import json
import os
import statistics

from benchmarks import transform_graph


def test_the_baseline_makes_each_feature_dense_with_more_ops_than_the_pipeline():
    ops = {variant: transform_graph.graph_ops(fn) for variant, fn in transform_graph.VARIANTS.items()}
    assert ops["baseline"] > 1.3 * ops["current"], ops


def _run(size, variant, seconds, sha="a"):
    return {"size": size, "variant": variant, "seconds": seconds, "cpu_s": seconds, "records_sha256": sha,
            "vocabulary_sha256": "v"}


def _report(runs):
    return {"benchmark": "b", "command": "c", "machine": {"cpus": 2, "load_average_before": [1], "load_average_after": [1]},
            "transform": "t", "graph_ops": {"baseline": 900, "current": 600}, "rows": [1000], "runs": runs}


def test_report_gives_the_median_ratio_and_whether_every_run_wrote_the_same_output():
    runs = [_run(1000, "baseline", s) for s in (12.0, 15.0, 13.0)] + [_run(1000, "current", s) for s in (9.0, 10.0, 30.0)]
    line = next(l for l in transform_graph.format_report(_report(runs)).splitlines() if l.split()[1:2] == ["current"])
    assert line.split()[-2:] == ["1.30x", "yes"]
    runs[-1]["records_sha256"] = "b"
    line = next(l for l in transform_graph.format_report(_report(runs)).splitlines() if l.split()[1:2] == ["current"])
    assert line.split()[-1] == "NO"


def test_readme_quotes_the_committed_run():
    with open(os.path.join(transform_graph.REPO, "benchmarks", "results", "transform_graph.json")) as f:
        report = json.load(f)
    median = {(r["size"], v): statistics.median(x["seconds"] for x in report["runs"]
                                                if x["size"] == r["size"] and x["variant"] == v)
              for r in report["runs"] for v in transform_graph.VARIANTS}
    assert len({(r["records_sha256"], r["vocabulary_sha256"]) for r in report["runs"] if r["size"] == 1000}) == 1
    with open(os.path.join(transform_graph.REPO, "README.md")) as f:
        readme = " ".join(f.read().split())
    assert (f"on 1,000 rows the Transform took {median[1000, 'current']:.1f} s against "
            f"{median[1000, 'baseline']:.1f} s") in readme
    assert f"{report['graph_ops']['current']:,} ops for Criteo's 40 features" in readme
