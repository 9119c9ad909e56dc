"""benchmarks/transform_materialize.py: the run order, what a run's output says, medians and ratios."""
import json

from benchmarks import transform_materialize as bench


def test_each_repeat_runs_both_settings_the_first_one_alternating():
    assert bench.run_order(1) == [True, False]
    assert bench.run_order(3) == [True, False, False, True, True, False]


def test_run_facts_read_the_summary_and_the_transformed_examples_on_disk(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(
        {"training": {"epochs": 3, "fit_seconds": 41.5}, "evaluation": {"auc": 0.79}}))
    split = tmp_path / "pipeline_root" / "Transform" / "transformed_examples" / "9" / "Split-train"
    split.mkdir(parents=True)
    (split / "data-00000.gz").write_bytes(b"x" * 1000)
    (split / "data-00001.gz").write_bytes(b"x" * 24)
    assert bench.run_facts(str(tmp_path)) == {"epochs": 3, "fit_s": 41.5, "eval_auc": 0.79, "transformed_bytes": 1024}
    empty = tmp_path / "failed-run"
    empty.mkdir()
    assert bench.run_facts(str(empty)) == {"epochs": None, "fit_s": None, "eval_auc": None, "transformed_bytes": 0}


def _run(materialize, transform_s, trainer_s, pipeline_s, exit_code=0, status="succeeded"):
    return {"materialize": materialize, "exit_code": exit_code, "status": status, "pipeline_s": pipeline_s,
            "process_s": pipeline_s + 8.0, "epochs": 4, "fit_s": trainer_s - 5.0, "eval_auc": 0.8,
            "transformed_bytes": 2**20 if materialize else 0,
            "machine": {"stream_gb_per_s": 20.0, "random_64b_rows_gb_per_s": 2.0},
            "nodes": {"Transform": {"wall_s": transform_s, "state": "COMPLETE"},
                      "Trainer": {"wall_s": trainer_s, "state": "COMPLETE"}}}


def test_medians_per_setting_over_succeeded_runs_and_the_ratios():
    runs = [_run(True, 40.0, 60.0, 200.0), _run(False, 20.0, 70.0, 180.0),
            _run(False, 22.0, 74.0, 190.0), _run(True, 44.0, 62.0, 210.0),
            _run(False, 1.0, 1.0, 1.0, exit_code=1, status="failed")]
    result = bench.evaluate(runs)
    on, off = result["settings"]["materialize"], result["settings"]["no_materialize"]
    assert on["runs_succeeded"] == 2 and off["runs_succeeded"] == 2 and result["runs_succeeded"] == 4
    assert (on["transform_s"], on["trainer_s"], on["transform_trainer_s"]) == (42.0, 61.0, 103.0)
    assert (off["transform_s"], off["trainer_s"], off["transform_trainer_s"]) == (21.0, 72.0, 93.0)
    assert on["transformed_bytes"] == 2**20 and off["transformed_bytes"] == 0
    ratios = result["no_materialize_over_materialize"]
    assert ratios["transform_trainer_s"] == round(93.0 / 103.0, 3) and ratios["pipeline_s"] == round(185.0 / 205.0, 3)


def test_report_shows_every_run_the_medians_ratios_and_failures():
    runs = [_run(True, 40.0, 60.0, 200.0), _run(False, 20.0, 70.0, 180.0),
            _run(True, 1.0, 1.0, 1.0, exit_code=1, status="failed")]
    record = {"command": "python -m benchmarks.transform_materialize", "demo_command": "python -m pipelines run",
              "machine": "2 CPUs", "runs": runs, "result": bench.evaluate(runs)}
    text = bench.report_text(record)
    rows = [line.split() for line in text.splitlines() if line.split()[1:2] in (["true"], ["false"])]
    assert rows[0][:5] == ["1", "true", "40.0", "60.0", "100.0"] and rows[1][:5] == ["2", "false", "20.0", "70.0", "90.0"]
    assert "materialize      Transform 40.0 s + Trainer 60.0 s = 100.0 s" in text
    assert "transform_trainer_s 0.90x" in text
    assert "failed: run 3: exit 1, status failed" in text


def test_the_committed_run_is_the_one_the_readme_and_docs_quote():
    import os
    with open(os.path.join(bench.REPO, "benchmarks", "results", "transform_materialize.json")) as f:
        record = json.load(f)
    result = record["result"]
    assert record["rows"] == 1_000_000 and result["runs_succeeded"] == len(record["runs"]) == 4
    on, off = result["settings"]["materialize"], result["settings"]["no_materialize"]
    ratios = result["no_materialize_over_materialize"]
    readme = " ".join(open(os.path.join(bench.REPO, "README.md")).read().split())
    docs = " ".join(open(os.path.join(bench.REPO, "docs", "ingestion.md")).read().split())
    assert f"Transform + Trainer {ratios['transform_trainer_s']:.2f}x ({ratios['pipeline_s']:.2f}x the whole pipeline)" in readme
    assert f"{on['transformed_bytes'] / 2**20:.1f} MB of transformed examples not written" in readme
    assert (f"Transform {off['transform_s']:.1f} s against {on['transform_s']:.1f} s "
            f"({ratios['transform_s']:.2f}x), the Trainer {off['trainer_s']:.1f} s against {on['trainer_s']:.1f} s "
            f"({ratios['trainer_s']:.2f}x), the two together {off['transform_trainer_s']:.1f} s against "
            f"{on['transform_trainer_s']:.1f} s ({ratios['transform_trainer_s']:.2f}x)") in docs
