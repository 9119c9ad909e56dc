"""benchmarks/scale_run.py: resumable per-(day, optimizer) parts, their merge into one output with the
issue's targets, and (e2e) one real day through the whole pipeline at a tiny size."""
import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import scale_run
from tests.conftest import REPO_ROOT

GIB = 1 << 30


# -- parts as run_invocation writes them (only the keys the merge reads) -----------------------------
def _part(day, optimizer, **over):
    ga = optimizer == "group_adam"
    part = {
        "day": day, "optimizer": optimizer, "rows": 10_000_000, "status": "succeeded",
        "pipeline": {"wall_s": 1500.0, "peak_rss_bytes": 9 * GIB},
        "stages": {"ClickLogExampleGen": {"wall_s": 300.0, "peak_rss_bytes": 4 * GIB},
                   "Trainer": {"wall_s": 900.0, "peak_rss_bytes": 9 * GIB}},
        "quality": {"eval_auc": 0.799 if ga else 0.7985, "bayes_auc": 0.802, "bayes_gap": 0.003 if ga else 0.0035,
                    "row_sparsity": 0.9 if ga else 0.0, "embedding_rows": 1_200_000, "steps": 4000, "epochs": 4,
                    # day 1 keeps epoch 4 (0.795); warm days pass it after their first epoch
                    "val_auc_by_epoch": [0.78, 0.79, 0.794, 0.795] if day == 1 else [0.796, 0.797, 0.797, 0.797],
                    "best_epoch": 4},
        "push": {"pushed": True, "version": str(1000 + day), "pruned_bytes": (6_000_000 if ga else 40_000_000),
                 "parity_max_abs_error": 2e-7, "warmup_requests": 1000},
        "unpruned": {"saved_model_bytes": 40_000_000},
        "serving": {label: {"load_s": load, "rss_bytes": rss,
                            "latency": {f"{p}/batch{b}": {"p50_ms": 1.0 * b, "p99_ms": 2.0 * b}
                                        for p in ("grpc", "rest") for b in (1, 64)}}
                    for label, load, rss in (("pruned", 1.0, 300e6), ("unpruned", 3.0, 1200e6))},
    }
    for key, value in over.items():
        node = part
        path = key.split("__")
        for name in path[:-1]:
            node = node[name]
        node[path[-1]] = value
    return part


def _write_parts(work, parts):
    for part in parts:
        path = scale_run.part_path(str(work), part["day"], part["optimizer"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(part, f)


def _targets(result):
    return {t["name"]: t for t in result["targets"]}


def _vocabulary_check(rows, counted):
    return {"rows": rows, "counted": {"at_threshold_train": counted, "at_threshold_file": counted + 1, "distinct": 10 * counted},
            "expected": {"total": counted}, "counted_over_expected": 1.0, "expected_at_10m": {"total": 1_160_000},
            "extrapolated_at_10m": 1_160_000}


def test_merge_all_parts_every_target_met(tmp_path):
    _write_parts(tmp_path / "work", [_part(d, o) for d in scale_run.DAYS for o in scale_run.OPTIMIZERS])
    # Vocabulary checks: committed beside the output, or in the work folder's parts (which win).
    (tmp_path / "out_vocabulary_1000000.json").write_text(json.dumps(_vocabulary_check(1_000_000, 76_000)))
    (tmp_path / "out_vocabulary_200000.json").write_text(json.dumps(_vocabulary_check(200_000, 1)))
    (tmp_path / "work" / "parts" / "vocabulary-200000.json").write_text(json.dumps(_vocabulary_check(200_000, 11_900)))
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    assert [(v["rows"], v["counted"]["at_threshold_train"]) for v in result["vocabulary_check"]] == [
        (200_000, 11_900), (1_000_000, 76_000)]
    on_disk = json.loads((tmp_path / "out.json").read_text())
    assert on_disk["targets"] == result["targets"] and not on_disk["missing"]
    assert set(on_disk["days"]) == {"day1", "day2", "day3"}
    assert all(set(on_disk["days"][d]) == set(scale_run.OPTIMIZERS) for d in on_disk["days"])
    targets = _targets(result)
    assert {t: targets[t]["met"] for t in targets} == {t: True for t in targets}, targets
    assert len(targets) == 13
    row = result["summary"]["day2/group_adam"]
    assert row["size_ratio"] == pytest.approx(40 / 6, abs=1e-3)
    assert row["steps_to_day1_auc"] == 1000 and row["day1_steps_to_its_auc"] == 4000
    text = (tmp_path / "out.txt").read_text()
    assert text.count("[MET]") == 13 and "day3/adam" in text and "Targets (issue #22)" in text
    assert "Vocabulary check at 1,000,000 rows: 76,000 values >= 10" in text
    assert result["command"] == "python -m benchmarks.scale_run"


def test_merge_reports_missed_targets_and_what_is_not_measured(tmp_path):
    parts = [_part(d, o) for d in scale_run.DAYS for o in scale_run.OPTIMIZERS]
    parts[0] = _part(1, "group_adam", pipeline__wall_s=2000.0, quality__row_sparsity=0.5,
                     stages__Trainer__peak_rss_bytes=17 * GIB)
    parts[2] = _part(2, "group_adam", quality__val_auc_by_epoch=[0.79, 0.7955, 0.796, 0.796])  # 2 of 4 epochs
    parts[4] = _part(3, "group_adam", push__pruned_bytes=7_000_000, push__parity_max_abs_error=1e-5)
    _write_parts(tmp_path / "work", parts)
    targets = _targets(scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out")))
    assert targets["group_adam_day_time_and_memory"]["met"] is False
    assert targets["adam_day_time_and_memory"]["met"] is True
    assert targets["group_adam_row_sparsity"]["met"] is False
    assert targets["warm_start_steps"]["met"] is True  # 2000 steps <= half of day 1's 4000
    assert targets["day3_size_growth"]["met"] is False  # 7 MB > 1.1 x 6 MB
    assert targets["parity"]["met"] is False

    # Parts still missing: those targets are not measured, the others still are.
    for name in os.listdir(tmp_path / "work" / "parts"):
        if not name.startswith("day-1-"):
            os.remove(tmp_path / "work" / "parts" / name)
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    targets = _targets(result)
    assert targets["warm_start_steps"]["met"] is None and targets["day3_size_growth"]["met"] is None
    assert targets["group_adam_row_sparsity"]["met"] is False  # day 1 already misses it
    assert result["missing"] == ["day 2 group_adam", "day 2 adam", "day 3 group_adam", "day 3 adam"]
    # Each target says how each day fared: day 1 measured, the others not run.
    assert targets["parity"]["by_day"] == {"day1": True, "day2": None, "day3": None}
    assert targets["group_adam_row_sparsity"]["by_day"]["day1"] is False
    text = (tmp_path / "out.txt").read_text()
    assert "NOT MEASURED" in text
    assert "[NOT MEASURED] parity <= 1e-06 (pruned vs trained model, Group Adam) (day1 met, day2 -, day3 -)" in text


def test_warm_day_that_never_reaches_day_one_auc_fails(tmp_path):
    parts = [_part(d, o) for d in scale_run.DAYS for o in scale_run.OPTIMIZERS]
    parts[2] = _part(2, "group_adam", quality__val_auc_by_epoch=[0.79, 0.791, 0.792, 0.793])
    _write_parts(tmp_path / "work", parts)
    target = _targets(scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out")))["warm_start_steps"]
    assert target["by_day"] == {"day2": False, "day3": True} and target["met"] is False


def test_serving_model_memory_is_rss_above_the_idle_process(tmp_path):
    part = _part(1, "group_adam")
    part["serving"]["pruned"]["rss_idle_bytes"] = 250e6
    _write_parts(tmp_path / "work", [part])
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    row = result["summary"]["day1/group_adam"]
    assert row["pruned_model_rss_bytes"] == 50e6 and row["unpruned_model_rss_bytes"] is None
    assert _targets(result)["serving_rss"]["values"]["day1"]["pruned_model"] == 50e6
    assert "model MB" in (tmp_path / "out.txt").read_text()


def test_merge_of_a_smaller_size_names_it_in_the_command(tmp_path):
    _write_parts(tmp_path / "work", [_part(1, "group_adam", rows=2000)])
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    assert result["command"] == "python -m benchmarks.scale_run --rows 2000" and result["rows_per_day"] == 2000


def test_merge_names_the_set_overrides_in_the_command(tmp_path):
    sets = ["trainer.batch_size=1024"]
    _write_parts(tmp_path / "work", [_part(1, "group_adam", sets=sets), _part(1, "adam", sets=sets)])
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    assert result["command"] == "python -m benchmarks.scale_run --set trainer.batch_size=1024"
    _write_parts(tmp_path / "work", [_part(1, "adam", sets=[])])
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    assert result["command"] == "python -m benchmarks.scale_run"
    assert any("different --set overrides" in note for note in result["notes"])
    # What every part shares goes into the command; the note names only the rest.
    _write_parts(tmp_path / "work", [_part(1, "adam", sets=sets + ["trainer.epochs=2"])])
    result = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    assert result["command"] == "python -m benchmarks.scale_run --set trainer.batch_size=1024"
    note = next(n for n in result["notes"] if "different --set overrides" in n)
    assert "day1/adam: --set trainer.epochs=2" in note and "day1/group_adam: none" in note


def test_interleaved_latency_takes_turns_and_flips_the_order():
    calls = []

    class Recorder:  # stands in for the network: what is timed here is the order of the requests
        def __init__(self, label):
            self.label = label

        def predict_examples(self, rows):
            calls.append(self.label)
            return [0.5] * len(rows)

    cells = scale_run.interleaved_latency({"pruned": Recorder("pruned"), "unpruned": Recorder("unpruned")},
                                          [b"x"] * 10, requests=20, batch=4)
    warmup = 2 * 5
    assert calls[:warmup] == ["pruned"] * 5 + ["unpruned"] * 5
    timed = calls[warmup:]
    assert timed[:4] == ["pruned", "unpruned", "unpruned", "pruned"] and len(timed) == 40
    assert all(cell["requests"] == 20 and cell["batch"] == 4 for cell in cells.values())
    assert all(0 <= cell["p50_ms"] <= cell["p99_ms"] for cell in cells.values())


def test_remeasure_serving_needs_a_finished_day_and_its_models(tmp_path):
    with pytest.raises(SystemExit) as e:
        scale_run.main(["--day", "1", "--optimizer", "group_adam", "--remeasure-serving", "--work", str(tmp_path)])
    assert "run the day first" in str(e.value)
    part = _part(1, "group_adam", examples_uri=str(tmp_path))
    part["push"]["path"] = str(tmp_path / "gone")
    _write_parts(tmp_path, [part])
    with pytest.raises(SystemExit) as e:
        scale_run.main(["--day", "1", "--optimizer", "group_adam", "--remeasure-serving", "--work", str(tmp_path)])
    assert "gone is gone: rerun the day" in str(e.value)


def test_merge_notes_the_repushed_parts(tmp_path):
    repushed = _part(1, "group_adam")
    repushed["push"]["repushed"] = "2026-12-01T04:00:00"
    _write_parts(tmp_path / "work", [repushed, _part(1, "adam")])
    notes = scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))["notes"]
    assert [n for n in notes if "--repush" in n and "day1/group_adam" in n and "day1/adam" not in n]
    assert "--repush" in (tmp_path / "out.txt").read_text()


def test_merge_imports_the_parts_a_new_work_folder_lacks_and_notes_them(tmp_path):
    earlier = [_part(d, o) for d in scale_run.DAYS for o in scale_run.OPTIMIZERS]
    for part in earlier:
        part["started"], part["pipeline"]["wall_s"] = "2026-11-30T22:12:36", 1900.0
    _write_parts(tmp_path / "earlier", earlier)
    scale_run.merge(str(tmp_path / "earlier"), str(tmp_path / "earlier_out"))
    rerun = _part(1, "adam", pipeline={"wall_s": 1500.0})
    _write_parts(tmp_path / "work", [rerun])
    scale_run.main(["--merge", "--import-parts", str(tmp_path / "earlier_out.json"), "--work", str(tmp_path / "work"),
                    "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out.json").read_text())
    assert not result["missing"]
    assert result["days"]["day1"]["adam"]["pipeline"]["wall_s"] == 1500.0  # the rerun part wins
    assert "imported_from" not in result["days"]["day1"]["adam"]
    assert result["days"]["day2"]["adam"]["imported_from"].endswith("earlier_out.json")
    [note] = [n for n in result["notes"] if n.startswith("imported from")]
    assert "day1/group_adam (run 2026-11-30)" in note and "day1/adam" not in note
    with pytest.raises(SystemExit):
        scale_run.main(["--import-parts", str(tmp_path / "earlier_out.json"), "--work", str(tmp_path / "work")])
    # Imported again from the new output: each part keeps the output it was first merged in.
    _write_parts(tmp_path / "third", [_part(1, "group_adam")])
    scale_run.main(["--merge", "--import-parts", str(tmp_path / "out.json"), "--work", str(tmp_path / "third"),
                    "--out", str(tmp_path / "third_out")])
    third = json.loads((tmp_path / "third_out.json").read_text())
    assert third["days"]["day2"]["adam"]["imported_from"].endswith("earlier_out.json")
    assert third["days"]["day1"]["adam"]["imported_from"].endswith("out.json")
    assert not third["days"]["day1"]["adam"]["imported_from"].endswith("earlier_out.json")


def test_repush_needs_a_finished_day_and_its_trained_model(tmp_path):
    with pytest.raises(SystemExit) as e:
        scale_run.main(["--day", "2", "--optimizer", "adam", "--repush", "--work", str(tmp_path)])
    assert "run the day first" in str(e.value)
    part = _part(2, "adam", examples_uri=str(tmp_path), transform_graph_uri=str(tmp_path),
                 trained_model_dir=str(tmp_path / "model-gone"))
    _write_parts(tmp_path, [part])
    with pytest.raises(SystemExit) as e:
        scale_run.main(["--day", "2", "--optimizer", "adam", "--repush", "--work", str(tmp_path)])
    assert "model-gone is gone: rerun the day" in str(e.value)
    with pytest.raises(SystemExit):
        scale_run.main(["--repush", "--work", str(tmp_path)])  # needs --day and --optimizer


def test_steps_to_reach_and_kept_epoch():
    # 3 epochs run, the 2nd kept: the Trainer's steps are the kept model's (2 epochs of 100).
    q = {"val_auc_by_epoch": [0.7, 0.72, 0.71], "steps": 200, "epochs": 3, "best_epoch": 2}
    assert scale_run.kept_epoch_auc(q) == 0.72
    assert scale_run.steps_to_reach(q, 0.72) == 200 and scale_run.steps_to_reach(q, 0.7) == 100
    assert scale_run.steps_to_reach(q, 0.73) is None
    assert scale_run.steps_to_reach({"val_auc_by_epoch": [0.7, 0.72], "steps": 200, "epochs": 2}, 0.7) == 100
    assert scale_run.kept_epoch_auc({"val_auc_by_epoch": [0.6, 0.65]}) == 0.65  # no early stopping: the last


def test_peak_between_windows():
    samples = [(0.0, 10), (1.0, 50), (2.0, 20), (3.0, 30)]
    assert scale_run.peak_between(samples, 0.5, 2.5) == 50
    assert scale_run.peak_between(samples, 2.1, 2.2) == 30  # shorter than the interval: the neighbours
    assert scale_run.peak_between([], 0, 1) is None


def test_reset_serving_dir_keeps_only_earlier_days_versions(tmp_path):
    work = str(tmp_path)
    model_dir = os.path.join(scale_run.output_dir(work, "adam"), "serving", "ctr")
    for version in ("1001", "1002", "1003"):
        os.makedirs(os.path.join(model_dir, version))
    _write_parts(tmp_path, [_part(1, "adam"), _part(2, "adam"), _part(3, "adam")])
    assert scale_run.reset_serving_dir(work, 3, "adam") == ["1003"]  # a rerun of day 3: its own push goes
    os.makedirs(os.path.join(model_dir, "1003"))
    assert scale_run.reset_serving_dir(work, 2, "adam") == ["1002", "1003"]  # a rerun of day 2
    assert sorted(os.listdir(model_dir)) == ["1001"]
    moved = scale_run.set_aside_later_parts(work, 2, "adam")  # day 3 warm-started from the old day 2
    assert [os.path.basename(m) for m in moved] == ["day-3-adam.json"]
    assert os.path.exists(scale_run.part_path(work, 2, "adam")) and not os.path.exists(scale_run.part_path(work, 3, "adam"))
    assert scale_run.reset_serving_dir(work, 1, "adam") == ["1001"]  # day 1 is cold


def test_a_day_needs_the_previous_day_pushed(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        scale_run.main(["--day", "2", "--optimizer", "adam", "--work", str(tmp_path), "--rows", "100"])
    assert "run --day 1 --optimizer adam first" in str(e.value)
    _write_parts(tmp_path, [_part(1, "adam")])  # pushed, but with another row count
    with pytest.raises(SystemExit) as e:
        scale_run.main(["--day", "2", "--optimizer", "adam", "--work", str(tmp_path), "--rows", "100"])
    assert "10000000 rows, not 100" in str(e.value)


def test_day_config_fixes_data_and_optimizer_and_validates_overrides(tmp_path):
    from pipelines.config import ConfigError
    config = scale_run.day_config(str(tmp_path), 2, "adam", None, ["trainer.epochs=2", "gates.min_auc=0.5"])
    assert config.trainer.optimizer == "adam" and config.trainer.epochs == 2 and config.gates.min_auc == 0.5
    assert config.data.data_root == scale_run.data_dir(str(tmp_path), 2)
    assert config.data.input_pattern == "clicks-{SPAN:5}.tsv" and config.data.span_window == 1
    assert config.serving_dir == os.path.join(str(tmp_path), "adam", "serving")
    with pytest.raises(ConfigError, match="trainer.epochs"):
        scale_run.day_config(str(tmp_path), 1, "adam", None, ["trainer.epochs=0"])
    with pytest.raises(SystemExit):
        scale_run.parse_sets(["trainer.epochs"])


def test_count_vocabulary_counts_values_at_the_threshold(tmp_path):
    from pipelines import generator
    report = generator.generate(str(tmp_path / "data"), 5000, generator.preset_config("criteo-scale"), span=1)
    counted = scale_run.count_vocabulary(report["path"], threshold=10)
    fields = [line.rstrip("\n").split("\t")[14:] for line in open(report["path"])]
    for j, f in enumerate(generator.CAT_COLUMNS):
        values, counts = np.unique([r[j] for r in fields if r[j]], return_counts=True)
        assert counted["fields"][f]["distinct"] == len(values)
        assert counted["fields"][f]["at_threshold_file"] == int(np.sum(counts >= 10)), f
        assert counted["fields"][f]["at_threshold_train"] <= counted["fields"][f]["at_threshold_file"]
    assert counted["rows"] == 5000


# -- e2e: one real day, then the merge over it -------------------------------------------------------
ROWS = 2000
TINY = ["--set", "trainer.epochs=1", "--set", "trainer.jit_compile=false", "--set", "gates.min_auc=0.5",
        "--set", "serving_check.sample_rows=20", "--serving-requests", "20"]


def _cli(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_USE_LEGACY_KERAS="1")
    return subprocess.run([sys.executable, "-m", "benchmarks.scale_run", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.e2e
def test_one_day_end_to_end_then_merge(tmp_path):
    work, out = str(tmp_path / "work"), str(tmp_path / "results" / "scale_run")
    proc = _cli("--day", "1", "--optimizer", "group_adam", "--rows", str(ROWS), "--work", work, "--out", out, *TINY)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    part = json.load(open(scale_run.part_path(work, 1, "group_adam")))
    assert part["status"] == "succeeded" and part["rows"] == ROWS and part["data"]["rows"] == ROWS
    # Every pipeline node, the data and the measurements are stages with a wall time and a peak RSS.
    for stage in ("generate", "ClickLogExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator",
                  "ValidationGate", "Transform", "LatestPushedModel", "Trainer", "Evaluator", "SparsityGate",
                  "ServingCheck", "Pusher", "unpruned_export", "serving_measurement"):
        s = part["stages"].get(stage)
        assert s is not None, (stage, sorted(part["stages"]))
        assert s["wall_s"] >= 0 and s["peak_rss_bytes"] > 50e6, (stage, s)
    assert part["stages"]["Trainer"]["peak_rss_bytes"] > part["stages"]["generate"]["peak_rss_bytes"]
    assert 0 < part["pipeline"]["wall_s"] <= part["pipeline"]["process_wall_s"]
    q = part["quality"]
    assert 0.4 < q["eval_auc"] < 1 and 0.7 < q["bayes_auc"] < 0.9 and q["embedding_rows"] > 26
    assert 0 <= q["row_sparsity"] <= 1 and q["steps"] > 0 and len(q["val_auc_by_epoch"]) == 1
    assert q["warm_start"]["restored"] is False  # day 1 is cold
    push = part["push"]
    assert push["pushed"] and os.path.isfile(os.path.join(push["path"], "saved_model.pb"))
    assert push["pruned_bytes"] > 0 and push["parity_max_abs_error"] <= 1e-6 and push["warmup_requests"] > 0
    assert part["unpruned"]["saved_model_bytes"] > 0
    assert part["unpruned"]["warmup_requests"] == push["warmup_requests"]
    for label in ("pruned", "unpruned"):
        served = part["serving"][label]
        assert served["load_s"] > 0 and served["rss_bytes"] > 100e6 and served["peak_rss_bytes"] >= served["rss_bytes"]
        assert set(served["latency"]) == {"grpc/batch1", "grpc/batch64", "rest/batch1", "rest/batch64"}
        for cell in served["latency"].values():
            assert 0 < cell["p50_ms"] <= cell["p99_ms"] and cell["requests"] == 20

    # The two models served again (side by side, requests taking turns): the part's serving is new.
    proc = _cli("--day", "1", "--optimizer", "group_adam", "--remeasure-serving", "--work", work,
                "--serving-requests", "10")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    again = json.load(open(scale_run.part_path(work, 1, "group_adam")))
    assert again["serving"]["measured"] >= part["serving"]["measured"]
    for label in ("pruned", "unpruned"):
        assert {c["requests"] for c in again["serving"][label]["latency"].values()} == {10}
        assert again["serving"][label]["load_s"] > 0
    assert again["quality"] == part["quality"] and again["push"] == part["push"]

    # Pushed again by the Pusher's current code into a folder of its own, unpruned export redone, both
    # served again; the pipeline's own push is kept.
    proc = _cli("--day", "1", "--optimizer", "group_adam", "--repush", "--work", work, "--serving-requests", "5")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    repushed = json.load(open(scale_run.part_path(work, 1, "group_adam")))
    assert repushed["push_as_run"] == part["push"]
    new_push = repushed["push"]
    assert new_push["repushed"] and new_push["path"].startswith(scale_run.repush_dir(work, 1, "group_adam"))
    assert os.path.isfile(os.path.join(new_push["path"], "saved_model.pb"))
    assert new_push["pruned_bytes"] > 0 and new_push["parity_max_abs_error"] <= 1e-6
    assert new_push["embedding_bytes_before"] == part["push"]["embedding_bytes_before"]
    assert os.path.isdir(part["push"]["path"])  # the day's serving directory is untouched
    assert repushed["stages"]["repush"]["wall_s"] > 0
    assert {c["requests"] for c in repushed["serving"]["pruned"]["latency"].values()} == {5}
    assert repushed["serving"]["pruned"]["version_dir"] == new_push["path"]
    assert repushed["trained_model_dir"].endswith("Format-Serving")
    _write_parts(tmp_path / "work", [part])  # the rest of the test: the pipeline's own push

    proc = _cli("--merge", "--work", work, "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    merged = json.load(open(out + ".json"))
    assert merged["days"]["day1"]["group_adam"]["run_id"] == part["run_id"]
    assert merged["command"] == f"python -m benchmarks.scale_run --rows {ROWS}" + "".join(
        f" --set {value}" for value in TINY[1:8:2])
    assert len(merged["missing"]) == 5 and "day 1 adam" in merged["missing"]
    targets = _targets(merged)
    assert targets["parity"]["met"] is None  # days 2 and 3 are missing
    assert targets["group_adam_day_time_and_memory"]["values"]["day1"]["pipeline_s"] == part["pipeline"]["wall_s"]
    text = open(out + ".txt").read()
    assert "day1/group_adam" in text and "Targets (issue #22)" in text and "unpruned" in text

    # The merge over all six parts, the others made from this real one: every target is decided.
    parts = []
    for day in scale_run.DAYS:
        for optimizer in scale_run.OPTIMIZERS:
            other = copy.deepcopy(part)
            other.update(day=day, optimizer=optimizer)
            parts.append(other)
    _write_parts(work, parts[1:])
    result = scale_run.merge(work, out)
    assert not result["missing"]
    assert all(t["met"] in (True, False) for t in result["targets"]), [t for t in result["targets"] if t["met"] is None]


def test_merge_lists_each_parts_machine_probe_and_which_parts_have_none(tmp_path):
    probed = _part(1, "adam", machine={"cpus": 2, "memory_bandwidth": {"stream_gb_per_s": 23.85,
                                                                       "random_64b_rows_gb_per_s": 3.66}})
    _write_parts(tmp_path / "work", [probed, _part(1, "group_adam")])
    scale_run.merge(str(tmp_path / "work"), str(tmp_path / "out"))
    text = (tmp_path / "out.txt").read_text()
    assert "  day1/adam: 23.9 / 3.66" in text
    assert "not probed (run before the probe existed): day1/group_adam" in text


def test_machine_probe_measures_the_memory_bandwidth():
    found = scale_run.machine(probe=True)["memory_bandwidth"]
    assert found["stream_gb_per_s"] > 0.1 and found["random_64b_rows_gb_per_s"] > 0.01
    assert "memory_bandwidth" not in scale_run.machine()
