"""benchmarks/trainer_bench.py (issue #17): the committed run covers every cell and the Trainer's
input pipeline, its targets are derived from its cells, its text is the JSON's; the input-pipeline
child reads real TFRecords through TFX's data accessor and the Trainer's input_dataset."""
import json
import os

import pytest

from benchmarks import trainer_bench

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(REPO, "benchmarks", "results", "trainer_cpu")


@pytest.fixture(scope="module")
def record():
    with open(RESULTS + ".json") as f:
        return json.load(f)


def test_committed_run_covers_every_cell_and_the_input_pipeline(record):
    assert sorted(record["cells"]) == sorted(trainer_bench.cell_name(**c) for c in trainer_bench.all_cells())
    assert not [r for r in record["runs"] if "error" in r]
    assert not record["quick"] and not record["eager"]
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


def test_input_pipeline_child_reads_every_example(capsys):
    trainer_bench.input_child_main(trainer_bench.argparse.Namespace(examples=700, batch_size=256))
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["examples"] == 512  # whole batches of 256 written, all read back (partial batch kept)
    assert result["examples_per_s"] > 0
