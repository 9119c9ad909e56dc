"""One sparse update of an embedding table vs table size: Group Adam (lambdas > 0 and = 0) against
tf_keras Adam, whole step and op by op, XLA off and on, next to the machine's memory bandwidth.

Issue #3's specification: a table of 1e4, 1e5, 1e6 rows x 16 float32, one update from a batch of
1024 examples x 26 Zipf-distributed ids (26,624 ids with duplicates). Targets on a 2-core machine:
Group Adam's step time grows <= 2x from 1e4 to 1e6 rows; it is >= 5x faster than tf_keras Adam (which
updates every row for a sparse gradient) at 1e6 rows; compiled (XLA) is <= 1.1x uncompiled.

    TF_USE_LEGACY_KERAS=1 PYTHONPATH=. .venv/bin/python benchmarks/optim_step.py [--quick] [--out DIR]

Writes <out>/optim_step_<device>.json and .txt (tables and target verdicts). Keep the machine otherwise
idle; calls go round-robin over table sizes so that outside load biases no size.

The ids: 26,624 Zipf(1.1) ranks bounded at the smallest table's size (so every table size gets the
same multiset of ids and the same number of unique rows: the work is identical, only the table grows),
mapped to rows through a random permutation of the whole table (popular ids are scattered over all its
rows, as hashed feature ids are, so the step's reads and writes miss the cache more on larger tables).
"""

import argparse
import json
import os
import platform
import time

import numpy as np
import tensorflow as tf
import tf_keras

import optim
from optim import group_step as gs

DIM = 16
EXAMPLES, FIELDS = 1024, 26
BATCH_IDS = EXAMPLES * FIELDS  # 26,624 ids per step
ZIPF_EXPONENT = 1.1
FLOAT_BYTES, ID_BYTES = 4, 8
LAMBDAS = {"l1": 1e-5, "l2": 1e-5, "l21": 1e-4}  # "l's > 0"; the other Group Adam case has all 0


def _zipf_ranks(n, bound, seed=0):
    """n ranks in [0, bound) with P(rank k) proportional to (k + 1)^-ZIPF_EXPONENT."""
    weights = np.arange(1, bound + 1, dtype=np.float64) ** -ZIPF_EXPONENT
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return np.minimum(np.searchsorted(cdf, np.random.RandomState(seed).rand(n)), bound - 1)


def _problem(rows, rank_bound):
    ranks = _zipf_ranks(BATCH_IDS, rank_bound)
    row_of_rank = np.random.RandomState(rows).permutation(rows)  # spread over the whole table
    ids = row_of_rank[ranks].astype(np.int64)
    values = np.random.RandomState(1).randn(BATCH_IDS, DIM).astype(np.float32)
    return tf.constant(ids), tf.constant(values), int(len(np.unique(ids)))


def _table(rows, name="embeddings"):
    return tf.Variable(tf.random.normal([rows, DIM], stddev=0.01, seed=1), name=name)


def build_cases(rows, jit, rank_bound):
    """(name -> compiled function: the step and its parts on a `rows`-row table, state kept; unique ids)."""
    ids, values, unique_ids = _problem(rows, rank_bound)
    dense_shape = tf.constant([rows, DIM], tf.int64)
    cases = {}

    def timed(name, body):
        cases[name] = tf.function(body, jit_compile=jit)
        for _ in range(3):  # trace, compile, build the optimizer, warm up
            cases[name]()

    def sparse_gradient():
        return tf.IndexedSlices(values, ids, dense_shape)

    # The whole Group Adam step (apply_gradients: dedup, gather, math, scatter, iteration += 1),
    # with lambdas > 0 and with all lambdas = 0 (the same code path; the lambdas are constants).
    table = _table(rows)
    group_adam = optim.GroupAdam(1e-3, **LAMBDAS)
    timed("group_adam_step", lambda: group_adam.apply_gradients([(sparse_gradient(), table)]))
    table_l0 = _table(rows, "embeddings_l0")
    group_adam_l0 = optim.GroupAdam(1e-3)
    timed(
        "group_adam_l0_step", lambda: group_adam_l0.apply_gradients([(sparse_gradient(), table_l0)])
    )

    # The parts of the step (lambdas > 0), on the same variables (state: w, z, m, v).
    index = group_adam._index_dict[group_adam._var_key(table)]
    m = group_adam._slot_variables["m"][index]
    v = group_adam._slot_variables["v"][index]
    z = group_adam._duals[group_adam._dual_index[group_adam._var_key(table)]]
    tables = (table, z, m, v)
    sorted_ids, summed = gs.sum_duplicate_rows(values, ids)
    rows_state = [tf.gather(t, sorted_ids) for t in tables]

    timed("sum_duplicate_rows", lambda: gs.sum_duplicate_rows(values, ids))
    timed("gather_4_tables", lambda: [tf.gather(t, sorted_ids) for t in tables])

    def math_only():
        w_rows, z_rows, m_rows, v_rows = rows_state
        m_new, v_new = gs.adam_moments(m_rows, v_rows, summed, 1 - 0.9, 1 - 0.999)
        return gs.group_lasso_step(
            w_rows, z_rows, m_new * 1e-3, tf.sqrt(v_rows) + 1e-7, tf.sqrt(v_new) + 1e-7,
            1e-8, 1e-8, 4e-7,
        )

    timed("group_step_math", math_only)

    def scatter_only():
        for t, r in zip(tables, rows_state):
            t.scatter_update(tf.IndexedSlices(r, sorted_ids))

    timed("scatter_update_4_tables", scatter_only)

    # A whole training step as the Trainer runs it: embedding lookup (reads the table), a Dense
    # head, gradients, Group Adam. Under XLA the table is both read and scatter-updated in one
    # cluster: a hidden copy of the table would show here as growth with the table size.
    tf_keras.utils.set_random_seed(0)
    embedding = tf_keras.layers.Embedding(rows, DIM, name="embedding_bench")
    head = tf_keras.layers.Dense(1)
    labels = tf.constant(np.random.RandomState(1).rand(BATCH_IDS) < 0.5, tf.float32)
    head(embedding(ids[:1]))
    train_variables = embedding.trainable_variables + head.trainable_variables
    train_optimizer = optim.GroupAdam(1e-3, **LAMBDAS)

    def train_step():
        with tf.GradientTape() as tape:
            logits = head(embedding(ids))[:, 0]
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits))
        gradients = tape.gradient(loss, train_variables)
        train_optimizer.apply_gradients(zip(gradients, train_variables))

    timed("train_step_group_adam", train_step)

    # Contrast: tf_keras Adam on the same sparse gradient (touches every row: m, v decay, var update).
    adam_table = _table(rows, "adam_embeddings")
    adam = tf_keras.optimizers.Adam(1e-3)
    timed("keras_adam_step", lambda: adam.apply_gradients([(sparse_gradient(), adam_table)]))
    return cases, unique_ids


def measure(rows_list, jit, steps):
    """({rows: {name: median ms}}, {rows: unique ids}). Calls go round-robin over table sizes and
    cases, so that load from other processes hits every size alike instead of whichever ran last."""
    built = {rows: build_cases(rows, jit, rank_bound=rows_list[0]) for rows in rows_list}
    cases = {rows: c for rows, (c, _) in built.items()}
    times = {rows: {name: [] for name in cases[rows]} for rows in rows_list}
    for _ in range(steps):
        for rows in rows_list:
            for name, fn in cases[rows].items():
                start = time.perf_counter()
                fn()
                times[rows][name].append(time.perf_counter() - start)
    results = {
        str(rows): {name: float(np.median(t) * 1e3) for name, t in by_name.items()}
        for rows, by_name in times.items()
    }
    return results, {str(rows): unique for rows, (_, unique) in built.items()}


def memory_bandwidth(repeats=5):
    """GB/s (1e9 bytes/s, bytes read + bytes written), best of `repeats`, measured with NumPy:

    stream: np.copyto of a 512 MiB float64 array (sequential read + write);
    random_rows: np.take of 2**20 random 64-byte rows (= one table row of 16 float32, one cache line)
      from a 256 MiB table into a contiguous buffer: what a gather/scatter of table rows can hope for.
    """
    src = np.ones(64 * 2**20)  # 512 MiB
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    stream = 2 * src.nbytes / best / 1e9
    del src, dst
    table = np.ones((2**22, DIM), np.float32)  # 256 MiB, far larger than the caches
    ids = np.random.RandomState(0).randint(0, len(table), 2**20)
    out = np.empty((len(ids), DIM), np.float32)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.take(table, ids, axis=0, out=out)
        best = min(best, time.perf_counter() - start)
    random_rows = 2 * out.nbytes / best / 1e9
    return {"stream_gb_per_s": stream, "random_64b_rows_gb_per_s": random_rows}


def bytes_per_step(rows, unique_ids):
    """What one step must move at least (bytes), for Group Adam and for tf_keras Adam.

    Group Adam: each touched row of w, m, v and z is read and written once (unique ids x 16 x 4 bytes
    x 2 x 4 tables), and the batch's gradient rows and ids are read once (26,624 x 16 x 4 + 26,624 x 8).
    tf_keras Adam: every row of var, m and v is read and written (rows x 16 x 4 x 2 x 3), plus the same
    gradient and ids. The duplicate sum (a sort) and the intermediates are not counted: this is the
    floor set by the state that must change, not what the implementation happens to move.
    """
    row_bytes = DIM * FLOAT_BYTES
    batch = BATCH_IDS * (row_bytes + ID_BYTES)
    return {
        "group_adam": unique_ids * row_bytes * 2 * 4 + batch,
        "keras_adam": rows * row_bytes * 2 * 3 + batch,
    }


def evaluate(record):
    """Bandwidth bounds and the three targets, from the measured medians."""
    rows_list = record["rows"]
    first, last = str(rows_list[0]), str(rows_list[-1])
    results = record["results"]
    stream = record["bandwidth"]["stream_gb_per_s"] * 1e9
    random_rows = record["bandwidth"]["random_64b_rows_gb_per_s"] * 1e9
    bounds = {}
    for rows in map(str, rows_list):
        moved = bytes_per_step(int(rows), record["unique_ids"][rows])
        bounds[rows] = {
            "group_adam_bytes": moved["group_adam"],
            "keras_adam_bytes": moved["keras_adam"],
            # Best case: all bytes at streaming bandwidth. The touched rows are scattered, so the
            # random-row bandwidth is the realistic floor for their part (the batch is sequential).
            "group_adam_bound_stream_ms": moved["group_adam"] / stream * 1e3,
            "group_adam_bound_random_rows_ms": (
                (moved["group_adam"] - BATCH_IDS * (DIM * FLOAT_BYTES + ID_BYTES)) / random_rows
                + BATCH_IDS * (DIM * FLOAT_BYTES + ID_BYTES) / stream
            ) * 1e3,
            "keras_adam_bound_stream_ms": moved["keras_adam"] / stream * 1e3,
        }
        for jit in ("xla_off", "xla_on"):
            measured = results[jit][rows]
            bounds[rows][f"group_adam_{jit}_x_stream_bound"] = (
                measured["group_adam_step"] / bounds[rows]["group_adam_bound_stream_ms"]
            )
            bounds[rows][f"keras_adam_{jit}_x_stream_bound"] = (
                measured["keras_adam_step"] / bounds[rows]["keras_adam_bound_stream_ms"]
            )
    targets = {}
    for step in ("group_adam_step", "group_adam_l0_step"):
        for jit in ("xla_off", "xla_on"):
            growth = results[jit][last][step] / results[jit][first][step]
            targets[f"{step} growth {first}->{last} rows, {jit}"] = {
                "value": growth, "limit": "<= 2", "met": growth <= 2.0,
            }
            speedup = results[jit][last]["keras_adam_step"] / results[jit][last][step]
            targets[f"{step} speed-up over keras Adam at {last} rows, {jit}"] = {
                "value": speedup, "limit": ">= 5", "met": speedup >= 5.0,
            }
        for rows in map(str, rows_list):
            ratio = results["xla_on"][rows][step] / results["xla_off"][rows][step]
            targets[f"{step} compiled / uncompiled at {rows} rows"] = {
                "value": ratio, "limit": "<= 1.1", "met": ratio <= 1.1,
            }
    return bounds, targets


def _table_text(record):
    lines = []
    row_keys = [str(r) for r in record["rows"]]
    for jit in ("xla_off", "xla_on"):
        by_rows = record["results"][jit]
        names = list(by_rows[row_keys[0]])
        header = f"{'ms/step (' + jit + ')':<26}" + "".join(f"{int(r):>12,d}" for r in row_keys)
        header += f"{'last/first':>12}"
        lines += [header, "-" * len(header)]
        for name in names:
            cells = [by_rows[r][name] for r in row_keys]
            ratio = cells[-1] / cells[0] if cells[0] > 0 else float("nan")
            lines.append(f"{name:<26}" + "".join(f"{c:>12.3f}" for c in cells) + f"{ratio:>12.2f}")
        lines.append("")
    header = f"{'off->on (xla_on/xla_off)':<26}" + "".join(f"{int(r):>12,d}" for r in row_keys)
    lines += [header, "-" * len(header)]
    for name in record["results"]["xla_off"][row_keys[0]]:
        cells = [
            record["results"]["xla_on"][r][name] / record["results"]["xla_off"][r][name]
            for r in row_keys
        ]
        lines.append(f"{name:<26}" + "".join(f"{c:>12.2f}" for c in cells))
    lines.append("")

    bandwidth = record["bandwidth"]
    lines.append(
        f"memory bandwidth (NumPy, read+write): stream copy {bandwidth['stream_gb_per_s']:.1f} GB/s, "
        f"random 64-byte rows {bandwidth['random_64b_rows_gb_per_s']:.1f} GB/s"
    )
    header = f"{'bytes and bounds':<26}" + "".join(f"{int(r):>12,d}" for r in row_keys)
    lines += [header, "-" * len(header)]
    bounds = record["bounds"]
    table_rows = [
        ("unique ids in the batch", [record["unique_ids"][r] for r in row_keys], "{:>12,d}"),
        ("Group Adam MB moved", [bounds[r]["group_adam_bytes"] / 1e6 for r in row_keys], "{:>12.2f}"),
        ("  bound, stream ms", [bounds[r]["group_adam_bound_stream_ms"] for r in row_keys], "{:>12.3f}"),
        ("  bound, random rows ms",
         [bounds[r]["group_adam_bound_random_rows_ms"] for r in row_keys], "{:>12.3f}"),
        ("  measured/stream, off",
         [bounds[r]["group_adam_xla_off_x_stream_bound"] for r in row_keys], "{:>12.1f}"),
        ("  measured/stream, on",
         [bounds[r]["group_adam_xla_on_x_stream_bound"] for r in row_keys], "{:>12.1f}"),
        ("keras Adam MB moved", [bounds[r]["keras_adam_bytes"] / 1e6 for r in row_keys], "{:>12.2f}"),
        ("  bound, stream ms", [bounds[r]["keras_adam_bound_stream_ms"] for r in row_keys], "{:>12.3f}"),
        ("  measured/stream, off",
         [bounds[r]["keras_adam_xla_off_x_stream_bound"] for r in row_keys], "{:>12.1f}"),
        ("  measured/stream, on",
         [bounds[r]["keras_adam_xla_on_x_stream_bound"] for r in row_keys], "{:>12.1f}"),
    ]
    for label, cells, fmt in table_rows:
        lines.append(f"{label:<26}" + "".join(fmt.format(c) for c in cells))
    lines.append("")

    lines.append(
        f"rows x {record['dim']} float32 table; {record['examples']} examples x {record['fields']} ids "
        f"= {record['batch_ids']:,d} ids per step (Zipf({record['zipf_exponent']}) ranks bounded at "
        f"{record['rows'][0]:,d}, scattered over the table: the same unique ids at every size); "
        f"median of {record['steps']} steps; device {record['device']} ({record['machine']}); "
        f"TF {record['tensorflow']}; 1-min load average {record['load_average_at_start']:.1f} at "
        f"start, {record['load_average_at_end']:.1f} at end"
    )
    lines.append(
        "group_adam_step: l1=l2=1e-5, l21=1e-4; group_adam_l0_step: all lambdas 0; keras_adam_step: "
        "tf_keras Adam, which updates every row of the table. The parts (sum_duplicate_rows .. "
        "scatter_update_4_tables) are those of group_adam_step, each its own tf.function call "
        "(~0.2-0.5 ms dispatch each), so they do not add up to the step exactly."
    )
    lines.append(
        "bytes moved = unique ids x 16 x 4 B x 2 (read+write) x 4 (w, m, v, z) + 26,624 x (16 x 4 B "
        "gradient + 8 B id); keras Adam: rows x 16 x 4 B x 2 x 3 (var, m, v) + the same batch. "
        "bound = bytes / bandwidth; measured/stream = how many times slower than the streaming bound."
    )
    lines.append("targets:")
    for name, target in record["targets"].items():
        lines.append(
            f"  {name}: {target['value']:.2f} ({target['limit']}: "
            f"{'met' if target['met'] else 'NOT met'})"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="rows 1e3,1e4 and 5 steps (smoke test)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    rows_list = [1000, 10000] if args.quick else [int(r) for r in args.rows.split(",")]
    steps = 5 if args.quick else args.steps
    device = "gpu" if tf.config.list_physical_devices("GPU") else "cpu"

    record = {
        "benchmark": "optim_step",
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "tensorflow": tf.__version__,
        "dim": DIM,
        "examples": EXAMPLES,
        "fields": FIELDS,
        "batch_ids": BATCH_IDS,
        "zipf_exponent": ZIPF_EXPONENT,
        "lambdas": LAMBDAS,
        "steps": steps,
        "unit": "ms per call (median)",
        "load_average_at_start": os.getloadavg()[0],
        "rows": rows_list,
        "bandwidth": memory_bandwidth(),
        "results": {"xla_off": {}, "xla_on": {}},
    }
    print("bandwidth", json.dumps(record["bandwidth"]), flush=True)
    for jit, key in ((False, "xla_off"), (True, "xla_on")):
        record["results"][key], record["unique_ids"] = measure(rows_list, jit, steps)
        print(key, json.dumps(record["results"][key]), flush=True)
    record["load_average_at_end"] = os.getloadavg()[0]
    record["bounds"], record["targets"] = evaluate(record)
    # Kept for readers of the earlier JSON: the first target, per XLA mode.
    record["group_adam_ratio"] = {
        key: record["results"][key][str(rows_list[-1])]["group_adam_step"]
        / record["results"][key][str(rows_list[0])]["group_adam_step"]
        for key in ("xla_off", "xla_on")
    }
    text = _table_text(record)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"optim_step_{device}.json"), "w") as f:
        json.dump(record, f, indent=2)
    with open(os.path.join(args.out, f"optim_step_{device}.txt"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
