"""benchmarks/beam_executor_setup.py: the real executors, both modes, and its summary."""
from benchmarks import beam_executor_setup as bench
from pipelines.config import BEAM_PRESETS
from pipelines.local_runner import run_scratch


def test_the_pipelines_beam_executors_get_an_sdist_only_as_tfx_builds_it(tmp_path):
    classes = bench.beam_executor_classes()
    assert list(classes) == ["ClickLogExampleGen", "StatisticsGen", "Transform", "BaselineEvaluator"]
    with run_scratch(str(tmp_path)):
        runs = []
        for mode in bench.MODES:
            seconds, sdist = bench.construct(classes["StatisticsGen"], BEAM_PRESETS["inmemory"], mode)
            runs.append({"executor": "StatisticsGen", "mode": mode, "seconds": seconds, "sdist": sdist})
    assert [r["sdist"] for r in runs] == [True, False]
    table, totals = bench.summarize(runs)
    assert totals == {"tfx_sdist": runs[0]["seconds"], "no_sdist": runs[1]["seconds"]}
    assert table["StatisticsGen"]["no_sdist"] < table["StatisticsGen"]["tfx_sdist"]
    record = {"median_seconds": table, "total_seconds": totals, "runs": runs, "machine": "m", "repeats": 1,
              "load_before": [0], "load_after": [0], "memory_bandwidth_gb_per_s": 1.0}
    assert "one local run (sum)" in bench.text(record)
