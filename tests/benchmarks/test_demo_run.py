"""benchmarks/demo_run.py: the Makefile's demo command, the per-node medians and the Trainer target."""
import sys

import pytest

from benchmarks import demo_run


def test_demo_command_is_the_makefiles_demo_recipe():
    command = demo_run.demo_command()
    assert command[0] == sys.executable
    assert command[1:4] == ["-m", "pipelines", "run"]
    assert "$(ARGS)" not in command and "--output" not in command
    with open(demo_run.os.path.join(demo_run.REPO, "Makefile")) as f:
        recipe = f.read().split("\ndemo:", 1)[1].splitlines()[1]
    assert " ".join(command[1:]) in recipe


def test_a_makefile_without_a_demo_recipe_stops_in_one_line(tmp_path):
    makefile = tmp_path / "Makefile"
    makefile.write_text("test: setup\n\t$(PY) -m pytest\n")
    with pytest.raises(SystemExit, match="no one-line 'demo' recipe"):
        demo_run.demo_command(str(makefile))
    makefile.write_text("demo: setup\n\tpython -m pipelines run\n")
    with pytest.raises(SystemExit, match="does not start with"):
        demo_run.demo_command(str(makefile))


def _run(trainer_s, exit_code=0, status="succeeded"):
    return {"exit_code": exit_code, "status": status, "run_id": "r", "process_s": trainer_s + 100.0,
            "pipeline_s": trainer_s + 90.0, "machine": {"stream_gb_per_s": 20.0, "random_64b_rows_gb_per_s": 2.0},
            "nodes": {"Trainer": {"wall_s": trainer_s, "state": "COMPLETE"},
                      "Transform": {"wall_s": 12.0, "state": "COMPLETE"}}}


def test_medians_and_target_over_the_succeeded_runs_only():
    runs = [_run(28.0), _run(31.0), _run(1.0, exit_code=1, status="failed")]
    result = demo_run.evaluate(runs)
    assert result["runs_succeeded"] == 2
    assert result["node_median_s"] == {"Trainer": 29.5, "Transform": 12.0}
    assert result["pipeline_median_s"] == 119.5 and result["trainer_node_met"] is True
    assert demo_run.evaluate([_run(30.5), _run(31.0)])["trainer_node_met"] is False
    assert demo_run.evaluate([_run(1.0, exit_code=1)])["trainer_node_met"] is None


def test_report_shows_every_run_the_failures_and_the_target():
    runs = [_run(28.0), _run(31.0), _run(1.0, exit_code=1, status="failed")]
    record = {"command": "python -m benchmarks.demo_run", "demo_command": "python -m pipelines run --output <new folder>",
              "machine": "2 CPUs", "runs": runs, "result": demo_run.evaluate(runs)}
    text = demo_run.report_text(record)
    trainer_line = next(line for line in text.splitlines() if line.startswith("Trainer"))
    assert trainer_line.split()[1:] == ["28.0", "31.0", "1.0", "29.5"]
    assert "failed: run 3: exit 1, status failed" in text
    assert "target: Trainer node median 29.5 s (<= 30 s: met)" in text


def test_readme_quotes_the_committed_run():
    import json
    import os
    with open(os.path.join(demo_run.REPO, "benchmarks", "results", "demo_run.json")) as f:
        record = json.load(f)
    this = [r for r in record["runs"] if r.get("checkout") != "baseline"]
    assert record["result"]["runs_succeeded"] == len(this) >= 2
    with open(os.path.join(demo_run.REPO, "README.md")) as f:
        readme = " ".join(f.read().split())
    median = record["result"]["node_median_s"]["Trainer"]
    runs = " and ".join(f"{r['nodes']['Trainer']['wall_s']:.1f}" for r in this)
    assert f"`make demo`'s Trainer node took {median:.1f} s (the median of two fresh `make demo` runs, {runs} s" in readme
    assert f"the whole pipeline {record['result']['pipeline_median_s']:.1f} s" in readme


def test_baseline_runs_get_their_own_medians_and_the_ratios():
    runs = [dict(_run(10.0), first_node_s=7.0), dict(_run(20.0), checkout="baseline", first_node_s=12.0),
            dict(_run(24.0), checkout="baseline", first_node_s=13.0), dict(_run(12.0), checkout="this", first_node_s=6.0)]
    result = demo_run.evaluate(runs)
    assert result["runs_succeeded"] == 2 and result["node_median_s"]["Trainer"] == 11.0
    assert result["first_node_median_s"] == 6.5 and result["pipeline_median_s"] == 101.0
    base = result["baseline"]
    assert base["runs_succeeded"] == 2 and base["node_median_s"]["Trainer"] == 22.0
    assert base["first_node_median_s"] == 12.5 and base["pipeline_median_s"] == 112.0
    assert result["ratio_to_baseline"] == {"first_node_median_s": 0.52, "pipeline_median_s": 0.902,
                                           "process_median_s": 0.91}
    record = {"command": "python -m benchmarks.demo_run --baseline /b", "demo_command": "python -m pipelines run",
              "machine": "2 CPUs", "runs": runs, "result": result, "baseline": "/b at abc1234"}
    text = demo_run.report_text(record)
    assert "run = this checkout, base = the baseline /b at abc1234" in text
    assert text.splitlines()[5].split() == ["node", "(wall", "s)", "run", "1", "base", "1", "base", "2", "run", "2",
                                            "median", "baseline", "ratio"]
    trainer_line = next(line for line in text.splitlines() if line.startswith("Trainer"))
    assert trainer_line.split()[1:] == ["10.0", "20.0", "24.0", "12.0", "11.0", "22.0", "0.50x"]
    first = next(line for line in text.splitlines() if line.startswith("first node starts"))
    assert first.split()[3:] == ["7.0", "12.0", "13.0", "6.0", "6.5", "12.5", "0.52x"]


def test_a_baseline_that_is_not_a_checkout_stops_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match="not a sparsectr checkout"):
        demo_run.main(["--baseline", str(tmp_path), "--out", str(tmp_path / "out")])
