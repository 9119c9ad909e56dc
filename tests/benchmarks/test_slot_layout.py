"""benchmarks/slot_layout.py: every layout writes the same state, and the committed run shows it."""
import json
import os

import numpy as np
import tensorflow as tf

from benchmarks import slot_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_distinct_ids_keep_their_first_appearance_order():
    assert slot_layout._distinct_in_order(np.array([5, 3, 5, 9, 3, 1])).tolist() == [5, 3, 9, 1]


def test_every_layout_reads_and_writes_the_same_rows():
    results, same = slot_layout.measure(["1e4"], steps=3, repeats=1)
    assert same == {"1e4": True}
    assert sorted(results["1e4"]) == sorted(slot_layout.LAYOUTS)
    assert all(ms > 0 for ms in results["1e4"].values())


def test_a_layout_that_writes_other_rows_is_caught():
    layouts = [slot_layout.Layout(name, tables=2, rows=5, dim=2) for name in ("per_table", "joined_slots")]
    ids = [np.array([0, 3], np.int64), np.array([4], np.int64)]
    for layout in layouts:
        layout.step(ids)
    assert slot_layout._same_state(layouts)
    # Row 1 of table 1 in the joined variable (5 rows a table), a row the step did not touch.
    layouts[1].state["m"].scatter_update(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([6], tf.int64)))
    assert not slot_layout._same_state(layouts)


def test_committed_run_covers_every_size_and_layout():
    with open(os.path.join(ROOT, "benchmarks", "results", "slot_layout.json")) as f:
        record = json.load(f)
    assert record["sizes"] == list(slot_layout.trainer_bench.SIZES)
    for size in record["sizes"]:
        assert sorted(record["results"][size]) == sorted(slot_layout.LAYOUTS)
        assert record["same_state"][size] is True
