"""Where a Group optimizer's per-table state could live: the row reads and writes of one Trainer step
in four layouts, XLA off (the Trainer's default on CPU), at the Trainer benchmark's two table sizes.

Issue #17 asks Group Adam to train at least as fast as tf_keras Adam on small tables and 10x faster on
large ones. Uncompiled, its step on the trainer benchmark's model (26 tables, batch 256) is one
dedupe and one row math over all the tables, and then, per table, a gather and a scatter of each of
w, m, v and z: 208 kernel launches. This measures only that part (the row math replaced by one
multiply-add per state, the same for every layout) in:

  per_table       today's: w, m, v, z each a [rows, d] variable per table (26 x 4 gathers and scatters)
  fused_slots     per table w and one [rows, 3d] variable holding m, v and z side by side (26 x 2)
  joined_slots    per table w; m, v and z each one [26 rows, d] variable for all the tables, a table's
                  rows at its offset (26 + 3 gathers and scatters)
  joined_fused    per table w; one [26 rows, 3d] variable for m, v and z of all the tables (26 + 1)

Every layout reads and writes the same rows and values: the benchmark checks that they hold the same
state at the end. The ids: one batch of `trainer_bench.synthetic_data` (Zipf rows per field) per
step, 8 batches in turn, each table's distinct ids in order of first appearance (as the real step's
one tf.unique gives them).

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python -m benchmarks.slot_layout [--quick] [--out DIR]

Writes <out>/slot_layout.json and .txt. Calls go round-robin over sizes and layouts; each layout's
median over --repeats runs of --steps calls.
"""
import argparse
import os
import platform
import statistics
import time

import numpy as np
import tensorflow as tf

from benchmarks import results_files, trainer_bench

LAYOUTS = ("per_table", "fused_slots", "joined_slots", "joined_fused")
STATE = ("m", "v", "z")
BATCHES = 8
BATCH_SIZE = 256  # trainer_bench's default --batch-size


def _distinct_in_order(ids):
    """The distinct values of `ids` in order of first appearance (what tf.unique gives)."""
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)].astype(np.int64)


def _batches(rows_per_field, batch_size):
    """[batch][table] -> the table's distinct ids in that batch, as the step's dedupe orders them."""
    features, _, _ = trainer_bench.synthetic_data(batch_size * BATCHES, rows_per_field)
    return [[_distinct_in_order(features[field][b * batch_size:(b + 1) * batch_size])
             for field in trainer_bench.CAT_FIELDS] for b in range(BATCHES)]


def _update(x):
    return x * 0.999 + 0.001


class Layout:
    """The variables of one layout and its step: gather the batch's rows, update, scatter them back."""

    def __init__(self, name, tables, rows, dim):
        self.name, self.tables, self.rows, self.dim = name, tables, rows, dim
        zeros = lambda shape: tf.Variable(tf.zeros(shape))  # noqa: E731
        self.w = [zeros([rows, dim]) for _ in range(tables)]
        if name == "per_table":
            self.state = [{s: zeros([rows, dim]) for s in STATE} for _ in range(tables)]
        elif name == "fused_slots":
            self.state = [zeros([rows, 3 * dim]) for _ in range(tables)]
        elif name == "joined_slots":
            self.state = {s: zeros([tables * rows, dim]) for s in STATE}
        else:
            self.state = zeros([tables * rows, 3 * dim])
        # One trace for every batch: a batch's distinct ids per table vary in number.
        self.step = tf.function(self._step, input_signature=[[tf.TensorSpec([None], tf.int64)] * tables])

    def _step(self, ids):
        for t, i in enumerate(ids):
            self.w[t].scatter_update(tf.IndexedSlices(_update(tf.gather(self.w[t], i)), i))
        if self.name == "per_table":
            for t, i in enumerate(ids):
                for v in self.state[t].values():
                    v.scatter_update(tf.IndexedSlices(_update(tf.gather(v, i)), i))
        elif self.name == "fused_slots":
            for t, i in enumerate(ids):
                self.state[t].scatter_update(tf.IndexedSlices(_update(tf.gather(self.state[t], i)), i))
        else:
            joined = tf.concat([i + t * self.rows for t, i in enumerate(ids)], 0)
            for v in (self.state.values() if self.name == "joined_slots" else [self.state]):
                v.scatter_update(tf.IndexedSlices(_update(tf.gather(v, joined)), joined))

    def state_of(self, table):
        """{m, v, z: [rows, dim] array} of one table."""
        if self.name == "per_table":
            return {s: v.numpy() for s, v in self.state[table].items()}
        if self.name == "fused_slots":
            return dict(zip(STATE, np.split(self.state[table].numpy(), 3, axis=1)))
        rows = slice(table * self.rows, (table + 1) * self.rows)
        if self.name == "joined_slots":
            return {s: v.numpy()[rows] for s, v in self.state.items()}
        return dict(zip(STATE, np.split(self.state.numpy()[rows], 3, axis=1)))


def _same_state(layouts):
    first = layouts[0]
    for layout in layouts[1:]:
        for t in range(first.tables):
            if not np.array_equal(first.w[t].numpy(), layout.w[t].numpy()):
                return False
            ours, theirs = first.state_of(t), layout.state_of(t)
            if any(not np.array_equal(ours[s], theirs[s]) for s in STATE):
                return False
    return True


def measure(sizes, steps, repeats):
    """{size: {layout: ms per step (median)}}, {size: all layouts hold the same state}."""
    dim, tables = trainer_bench.EMBEDDING_DIM, trainer_bench.FIELDS
    setups = {}
    for size in sizes:
        rows = trainer_bench.SIZES[size]
        batches = [[tf.constant(i) for i in batch] for batch in _batches(rows, BATCH_SIZE)]
        layouts = [Layout(name, tables, rows, dim) for name in LAYOUTS]
        for layout in layouts:
            layout.step(batches[0])  # trace
            layout.step(batches[1])
        setups[size] = (batches, layouts)
    times = {size: {name: [] for name in LAYOUTS} for size in sizes}
    for _ in range(repeats):
        for size in sizes:
            batches, layouts = setups[size]
            for layout in layouts:
                started = time.perf_counter()
                for step in range(steps):
                    layout.step(batches[step % BATCHES])
                times[size][layout.name].append(1e3 * (time.perf_counter() - started) / steps)
    # Every layout ran the same steps on the same batches: its state must be the same.
    same = {size: _same_state(setups[size][1]) for size in sizes}
    return {size: {name: statistics.median(t) for name, t in by_layout.items()}
            for size, by_layout in times.items()}, same


def table_text(record):
    sizes = record["sizes"]
    lines = [
        "Row reads and writes of one Group optimizer step in four layouts of its state"
        " (benchmarks/slot_layout.py), XLA off",
        f"{record['machine']}, TF {record['tensorflow']}; 1-min load {record['load_average_at_start']:.2f}"
        f" at start, {record['load_average_at_end']:.2f} at end",
        f"{trainer_bench.FIELDS} tables x {trainer_bench.EMBEDDING_DIM} wide, batch {BATCH_SIZE}"
        f" (trainer_bench's model and data); ms per step = median of {record['repeats']} runs of"
        f" {record['steps']} steps, round-robin",
        "",
        f"{'ms/step':<16}" + "".join(f"{size + ' rows':>14}" for size in sizes),
    ]
    for name in LAYOUTS:
        lines.append(f"{name:<16}" + "".join(f"{record['results'][s][name]:>14.3f}" for s in sizes))
    lines += ["", f"{'x per_table':<16}" + "".join(f"{size + ' rows':>14}" for size in sizes)]
    for name in LAYOUTS[1:]:
        lines.append(f"{name:<16}" + "".join(
            f"{record['results'][s][name] / record['results'][s]['per_table']:>14.2f}" for s in sizes))
    lines += ["", "same state in every layout after the run: "
              + ", ".join(f"{s} rows {record['same_state'][s]}" for s in sizes)]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 run (smoke test)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    steps, repeats = (3, 1) if args.quick else (args.steps, args.repeats)
    sizes = list(trainer_bench.SIZES)
    record = {"benchmark": "slot_layout", "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
              "tensorflow": tf.__version__, "sizes": sizes, "steps": steps, "repeats": repeats,
              "load_average_at_start": os.getloadavg()[0]}
    record["results"], record["same_state"] = measure(sizes, steps, repeats)
    record["load_average_at_end"] = os.getloadavg()[0]
    results_files.write(os.path.join(args.out, "slot_layout"), record, table_text(record))


if __name__ == "__main__":
    main()
