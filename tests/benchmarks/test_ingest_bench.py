"""benchmarks/ingest_bench.py: the committed results cover what the README quotes, and merging reports."""
import json
import os

import pytest

from benchmarks import ingest_bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "ingest.json")


SIZES = (100_000, 1_000_000, 10_000_000)


def test_committed_results_cover_sizes_stages_modes_and_the_parse_floor():
    with open(RESULTS) as f:
        report = json.load(f)
    runs = {(r["size"], r["stage"], r["mode"]): r for r in report["runs"]}
    for size in SIZES:
        floor = runs.get((size, "parse_floor", ingest_bench.PARSE_FLOOR_MODE))
        assert floor is not None and "error" not in floor and floor["rows"] == size, size
        for mode in ingest_bench.MODES:
            for stage in ("examplegen", "transform", "both"):
                r = runs.get((size, stage, mode))
                assert r is not None and "error" not in r, (size, stage, mode)
                assert r["rows_per_s"] == pytest.approx(size / r["seconds"], rel=0.01)
                assert r["peak_rss_mib"] > 100 and r["cpu_s"] > 0
            eg, tf_ = runs[(size, "examplegen", mode)], runs[(size, "transform", mode)]
            assert eg["rows"] == size  # every generated row read and emitted
            assert eg["rows_read"] == eg["rows"] + eg["rows_quarantined"]
            assert tf_["rows"] == size  # Transform wrote every row of both splits
            assert runs[(size, "both", mode)]["seconds"] == pytest.approx(eg["seconds"] + tf_["seconds"], abs=0.05)
            assert all(len(r["load_average"]) == 2 for r in (eg, tf_, floor))
    with open(RESULTS[:-len(".json")] + ".txt") as f:
        text = f.read()
    assert "10000000 transform" in " ".join(text.split())
    assert "x the parse floor" in text and "multi_processing / in_memory" in text


def test_parse_floor_child_counts_every_row(tmp_path):
    from pipelines.generator import generate

    generate(str(tmp_path / "logs"), 300, span=0)
    generate(str(tmp_path / "logs"), 200, span=1)
    result = ingest_bench._child_parse_floor(str(tmp_path / "logs"))
    assert result["rows"] == 500 and result["seconds"] > 0 and result["cpu_s"] >= 0


def test_summary_compares_with_the_floor_the_old_figures_and_the_modes():
    runs = [_run(1_000_000, "parse_floor", ingest_bench.PARSE_FLOOR_MODE, 1.0),
            _run(1_000_000, "examplegen", "in_memory", 10.0, cpu_s=9.0),
            _run(1_000_000, "transform", "in_memory", 30.0, cpu_s=28.0),
            _run(1_000_000, "examplegen", "multi_processing", 8.0, cpu_s=12.0),
            _run(1_000_000, "transform", "multi_processing", 12.0, cpu_s=30.0)]
    summary = ingest_bench.format_summary(runs + ingest_bench.combine(runs))
    assert "40.0 s, 25,000 rows/s; 40x the parse floor (1.00 s); 13.3x the rows/s before issue #18 (1,873)" in summary
    assert "multi_processing / in_memory: 2.00x" in summary
    assert ingest_bench.combine(runs)[0]["cpu_s"] == 37.0


@pytest.mark.parametrize("same", [True, False], ids=["same-vocabulary", "different-vocabulary"])
def test_summary_compares_the_default_vocabulary_counter_with_the_other(same):
    runs = [_run(10_000_000, "transform", "multi_processing", 240.0, vocabulary_sha256="a" * 64,
                 vocabulary_lines=5, vocabulary_counter="numpy"),
            _run(10_000_000, "transform_tft", "multi_processing", 600.0, vocabulary_sha256=("a" if same else "b") * 64,
                 vocabulary_lines=5)]
    summary = ingest_bench.format_summary(runs + ingest_bench.combine(runs))
    assert "vocabulary counter numpy vs tft: 2.50x faster (600 -> 240 s)" in summary
    assert ("the same vocabulary file" in summary) == same and ("DIFFERENT" in summary) != same
    table = ingest_bench.format_table(runs)
    assert "transform_tft" in table and "vocabulary 5 lines, sha256 aaaaaaaaaaaa" in table


def _run(size, stage, mode, seconds, **extra):
    return dict({"size": size, "stage": stage, "mode": mode, "workers": 1, "seconds": seconds, "rows": size,
                 "rows_per_s": round(size / seconds, 1), "peak_rss_mib": 500.0}, **extra)


def _report(path, runs, load):
    machine = {"cpus": 2, "python": "3.10", "platform": "x", "load_average_before": [load] * 3,
               "load_average_after": [load] * 3}
    path.write_text(json.dumps({"machine": machine, "files_per_set": 4, "runs": runs}))
    return str(path)


def test_merge_replaces_same_runs_keeps_others_and_recombines(tmp_path):
    old = _report(tmp_path / "old.json", [
        _run(100, "examplegen", "in_memory", 1.0), _run(100, "transform", "in_memory", 4.0),
        _run(1000, "examplegen", "in_memory", 10.0),
        {"size": 100, "stage": "both", "mode": "in_memory", "seconds": 5.0}], load=1.0)
    new = _report(tmp_path / "new.json", [
        _run(1000, "examplegen", "in_memory", 12.0), _run(1000, "transform", "in_memory", 30.0)], load=3.0)
    ingest_bench.merge([old, new], str(tmp_path / "out"))
    merged = json.loads((tmp_path / "out.json").read_text())
    runs = {(r["size"], r["stage"], r["mode"]): r for r in merged["runs"]}
    assert set(runs) == {(100, "examplegen", "in_memory"), (100, "transform", "in_memory"), (100, "both", "in_memory"),
                         (1000, "examplegen", "in_memory"), (1000, "transform", "in_memory"),
                         (1000, "both", "in_memory")}
    assert runs[(1000, "examplegen", "in_memory")]["seconds"] == 12.0  # the later report wins
    assert runs[(1000, "both", "in_memory")]["seconds"] == 42.0
    assert runs[(100, "both", "in_memory")]["seconds"] == 5.0
    assert len(merged["machine"]) == 2
    text = (tmp_path / "out.txt").read_text()
    assert "load average before [1.0, 1.0, 1.0]" in text and "load average before [3.0, 3.0, 3.0]" in text


def test_merge_refuses_reports_with_different_file_counts(tmp_path):
    a = _report(tmp_path / "a.json", [_run(100, "examplegen", "in_memory", 1.0)], load=1.0)
    data = json.loads(open(a).read())
    data["files_per_set"] = 8
    (tmp_path / "b.json").write_text(json.dumps(data))
    with pytest.raises(SystemExit, match="8 files per set"):
        ingest_bench.merge([a, str(tmp_path / "b.json")], str(tmp_path / "out"))


def test_the_no_materialize_run_is_committed_and_quoted():
    with open(os.path.join(ingest_bench.REPO, "benchmarks", "results", "ingest_no_materialize.json")) as f:
        report = json.load(f)
    assert report["transform"] == ingest_bench.TRANSFORM_NOT_MATERIALIZED
    runs = {(r["size"], r["stage"]): r for r in report["runs"]}
    both, floor = runs[(1000000, "both")], runs[(1000000, "parse_floor")]
    with open(os.path.join(ingest_bench.REPO, "docs", "ingestion.md")) as f:
        docs = f.read()
    assert f"{both['rows_per_s']:,.0f} rows/s, {both['seconds'] / floor['seconds']:.0f}x the parse floor" in docs


def test_the_10m_no_materialize_run_is_committed_and_quoted():
    with open(os.path.join(ingest_bench.REPO, "benchmarks", "results", "ingest_no_materialize_10m.json")) as f:
        report = json.load(f)
    assert report["transform"] == ingest_bench.TRANSFORM_NOT_MATERIALIZED
    runs = {(r["size"], r["stage"], r["mode"]): r for r in report["runs"]}
    in_memory, workers = runs[(10000000, "both", "in_memory")], runs[(10000000, "both", "multi_processing")]
    with open(os.path.join(ingest_bench.REPO, "docs", "ingestion.md")) as f:
        docs = " ".join(f.read().split())
    assert (f"ExampleGen + Transform {in_memory['seconds']:.1f} s in memory ({in_memory['rows_per_s']:,.0f} rows/s"
            in docs)
    assert f"{workers['seconds']:.1f} s with 2 worker processes ({workers['rows_per_s']:,.0f} rows/s" in docs
    assert f"{in_memory['seconds'] / workers['seconds']:.2f}x; peak" in docs


def test_the_rerun_with_the_smaller_graph_is_committed_and_quoted():
    with open(os.path.join(ingest_bench.REPO, "benchmarks", "results", "ingest_smaller_graph.json")) as f:
        report = json.load(f)
    runs = {(r["size"], r["stage"], r["mode"]): r for r in report["runs"]}
    assert {size for size, _, _ in runs} == set(SIZES)  # one run of every size, not a merge
    both, floor = runs[(1000000, "both", "in_memory")], runs[(1000000, "parse_floor", ingest_bench.PARSE_FLOOR_MODE)]
    with open(os.path.join(ingest_bench.REPO, "README.md")) as f:
        readme = " ".join(f.read().split())
    with open(os.path.join(ingest_bench.REPO, "docs", "ingestion.md")) as f:
        docs = " ".join(f.read().split())
    quoted = f"{both['rows_per_s']:,.0f} rows/s at 1M, {both['seconds'] / floor['seconds']:.0f}x the floor"
    assert quoted in readme
    assert f"{both['seconds']:.1f} s at 1M ({both['rows_per_s']:,.0f} rows/s, {both['seconds'] / floor['seconds']:.0f}x the floor" in docs
