"""The committed Trainer throughput benchmark (benchmarks/trainer_bench.py) covers its 16 cells (DNN and
DeepFM x Group Adam and tf_keras Adam x XLA off and on x ~1e4 and ~1e6 embedding rows) with positive,
finite throughputs, and the ratios and targets in its table follow from the cells; the input-pipeline
child reads real TFRecords through TFX's data accessor; plus one quick cell end to end."""

import json
import math
import os
import re
import subprocess
import sys

import pytest

from benchmarks import trainer_bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "benchmarks", "results", "trainer_cpu")


@pytest.fixture(scope="module")
def record():
    with open(RESULTS + ".json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def text():
    with open(RESULTS + ".txt") as f:
        return f.read()


def test_committed_results_cover_every_cell(record):
    assert not record["quick"] and not record["eager"]
    assert record["batch_size"] == 256 and record["fields"] == 26 and record["int_features"] == 13
    assert not [r for r in record["runs"] if "error" in r]
    machine = record["machine"]
    assert machine["cpus"] >= 1 and machine["tensorflow"]
    assert len(machine["load_average_before"]) == 3 and len(machine["load_average_after"]) == 3
    expected = {trainer_bench.cell_name(**c) for c in trainer_bench.all_cells()}
    assert len(expected) == 16
    assert set(record["cells"]) == expected
    for name, cell in record["cells"].items():
        model, optimizer, xla, size = name.split("-")
        assert (cell["model"], cell["optimizer"], cell["xla"], cell["size"]) == (model, optimizer, xla, size)
        assert {"1e4": 5_000 <= cell["total_rows"] <= 20_000,
                "1e6": 500_000 <= cell["total_rows"] <= 2_000_000}[size], name
        assert cell["timed_steps"] > 0 and cell["runs"] >= 1, name
        for key in ("examples_per_s", "ms_per_step", "first_epoch_s", "peak_rss_mib"):
            assert math.isfinite(cell[key]) and cell[key] > 0, (name, key)
        if cell["runs"] % 2:  # (an odd number of runs: both medians are the same run's)
            # examples/s and ms/step are the same measurement
            assert cell["examples_per_s"] * cell["ms_per_step"] / 1e3 == pytest.approx(record["batch_size"], rel=1e-6)
        assert math.isfinite(cell["loss_last"]) and 0.0 <= cell["auc_last"] <= 1.0, name


def test_committed_run_trained_as_the_trainer_does(record):
    from components.trainer_config import TrainerConfig
    assert record["steps_per_execution"] == TrainerConfig().steps_per_execution > 1


def test_recorded_ratios_follow_from_the_cells(record):
    recomputed = trainer_bench.ratios(record["cells"])
    assert set(recomputed) == set(record["ratios"])
    for kind, by_key in recomputed.items():
        assert set(by_key) == set(record["ratios"][kind]), kind
        assert len(by_key) == 8, kind  # every ratio of the 16 cells
        for key, value in by_key.items():
            assert record["ratios"][kind][key] == pytest.approx(value, rel=1e-9), (kind, key)


def test_text_table_agrees_with_the_json(record, text):
    for name, cell in record["cells"].items():
        line = next(l for l in text.splitlines() if l.startswith(name + " "))
        assert f"{cell['examples_per_s']:.1f}" in line.split(), name
    for kind, by_key in record["ratios"].items():
        for key, value in by_key.items():
            match = re.search(rf"^\s+{re.escape(key)}\s+(\S+)$", text.split(
                {"group_adam_over_adam": "Group Adam / Adam", "xla_on_over_off": "XLA on / XLA off",
                 "1e6_over_1e4": "1e6 rows / 1e4 rows"}[kind], 1)[1], re.M)
            assert match, (kind, key)
            assert float(match.group(1)) == pytest.approx(value, abs=0.006), (kind, key)
    # the ratio printed in the text is the one computed from the printed throughputs
    ga = record["cells"]["dnn-group_adam-xla_off-1e6"]["examples_per_s"]
    adam = record["cells"]["dnn-adam-xla_off-1e6"]["examples_per_s"]
    assert record["ratios"]["group_adam_over_adam"]["dnn-xla_off-1e6"] == pytest.approx(ga / adam)


def test_quick_run_of_one_cell(tmp_path):
    cell = "dnn-group_adam-xla_off-1e4"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.trainer_bench", "--quick", "--eager", "--cells", cell,
         "--out", str(tmp_path)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # a loaded shared machine: minutes, not seconds
    assert proc.returncode == 0, proc.stderr[-2000:]
    [json_path] = tmp_path.glob("trainer_*_quick.json")  # trainer_cpu_quick.json on a CPU-only machine
    quick = json.loads(json_path.read_text())
    assert quick["quick"] and list(quick["cells"]) == [cell]
    assert quick["cells"][cell]["examples_per_s"] > 0 and quick["cells"][cell]["total_rows"] == 10_010
    assert all(not by_key for by_key in quick["ratios"].values())  # one cell: no pairs
    lines = json_path.with_suffix(".txt").read_text().splitlines()
    assert sum(line.startswith(cell + " ") for line in lines) == 1  # its row in the table
    assert quick["input_pipeline"]["examples_per_s"] > 0
    assert [t["name"] for t in quick["targets"]] == [f"first-epoch overhead s, {cell}"]


def test_committed_run_measured_the_input_pipeline(record):
    assert record["input_pipeline"]["examples_per_s"] > 0


def test_committed_targets_are_the_cells_verdicts(record):
    assert record["targets"] == json.loads(json.dumps(trainer_bench.targets(record["cells"], record["ratios"])))
    with open(RESULTS + ".txt") as f:
        assert f.read() == trainer_bench.format_text(record)


def test_targets_check_ratios_throughput_and_first_epoch():
    cells = {
        "dnn-group_adam-xla_off-1e6": {"examples_per_s": 40_000.0, "compile_s_est": 3.0},
        "dnn-group_adam-xla_on-1e6": {"examples_per_s": 30_000.0, "compile_s_est": 12.0},
    }
    ratios = {"group_adam_over_adam": {"dnn-xla_off-1e4": 1.1, "dnn-xla_on-1e4": 0.9,
                                       "dnn-xla_off-1e6": 10.5}}
    verdicts = {t["name"]: t["met"] for t in trainer_bench.targets(cells, ratios)}
    assert verdicts == {
        "Group Adam / Adam examples/s, dnn-xla_off-1e4": True,
        "Group Adam / Adam examples/s, dnn-xla_on-1e4": False,
        "Group Adam / Adam examples/s, dnn-xla_off-1e6": True,
        "examples/s, dnn-group_adam-xla_off-1e6": True,
        "examples/s, dnn-group_adam-xla_on-1e6": False,
        "first-epoch overhead s, dnn-group_adam-xla_off-1e6": True,
        "first-epoch overhead s, dnn-group_adam-xla_on-1e6": False,
    }


def test_input_pipeline_child_reads_every_example_with_both_readers(capsys):
    trainer_bench.input_child_main(trainer_bench.argparse.Namespace(
        examples=700, batch_size=256, transform_output=None, input_batches=0, fit_steps=0))
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["examples"] == 512  # whole batches of 256 written, all read back (partial batch kept)
    assert result["examples_per_s"] > 0 and result["tfx_bsl_reader_examples_per_s"] > 0
    assert result["speedup_over_tfx_bsl_reader"] == result["examples_per_s"] / result["tfx_bsl_reader_examples_per_s"]
    assert result["fits"] is None
    text = "\n".join(trainer_bench.format_input_pipeline(result, 256))
    assert "components.training.input_dataset" in text and "tfx_bsl's reader" in text


def test_committed_input_pipeline_results_back_the_readme():
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read()
    for name in ("trainer_input", "trainer_input_transform_output"):
        with open(os.path.join(REPO, "benchmarks", "results", name + ".json")) as f:
            pipeline = json.load(f)["input_pipeline"]
        assert pipeline["examples_per_s"] > pipeline["tfx_bsl_reader_examples_per_s"]
        assert f"{pipeline['speedup_over_tfx_bsl_reader']:.2f}x" in readme, name
    fits = pipeline["fits"]  # the scale day's Transform output: the Trainer's model fitted with each reader
    assert set(fits) == {"group_adam", "adam"}
    group_adam = fits["group_adam"]["input_dataset"] / fits["group_adam"]["tfx_bsl_reader"]
    assert f"{group_adam:.2f}x" in readme
