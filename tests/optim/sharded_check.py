"""The coordinator (chief) of tests/optim/test_sharded_optimizer.py's localhost cluster.

    TF_CONFIG=... python -m tests.optim.sharded_check OUT.json

Builds an embedding table split over the cluster's parameter servers (ParameterServerStrategy with
components.distributed's TablePartitioner), applies a fixed sequence of sparse gradients with a Group
optimizer -- each step a function that ClusterCoordinator runs on a worker -- and the same sequence
to an unsharded copy of the table with the same optimizer in this process (no strategy, the step
compiled as in single-process training). Writes what the test compares to OUT.json.
"""
import json
import os
import sys
import tempfile
import types

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

import optim  # noqa: E402
from components import distributed, warm_start  # noqa: E402
from optim import sharded  # noqa: E402

ROWS, DIM, STEPS, BATCH = 1001, 4, 12, 48
HYPER = dict(learning_rate=0.05, l1=1e-3, l2=1e-3, l21=0.05)  # prunes about half the rows stepped


def gradient_sequence(seed=0):
    """(ids, upstream) per step: duplicate ids, rows on both shards, rows first seen late."""
    rng = np.random.default_rng(seed)
    steps = []
    for step in range(STEPS):
        # Later steps reach further into the table: rows whose first update comes at step > 1.
        high = min(ROWS, 150 + step * 80)
        ids = rng.integers(0, high, BATCH)
        ids[:6] = ids[6:12]  # duplicates in every batch
        ids[-1] = ROWS - 1 - step  # a row of the last shard
        steps.append((ids.astype(np.int64), rng.normal(0, 1, [BATCH, DIM]).astype(np.float32)))
    return steps


def tiny_model(table_layer):
    ids = keras.Input(shape=(), dtype=tf.int64, name="C1")
    return keras.Model(ids, tf.reduce_sum(table_layer(ids), axis=1))


def slots(optimizer, variable):
    """name -> the optimizer's per-row state for `variable` (m, v, ... and the dual z), as arrays."""
    return optimizer.split_row_state(optimizer.row_state(variable), variable.shape.rank)


def main(out_path):
    strategy = distributed.parameter_server_strategy()
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    num_ps = strategy.extended._num_ps
    with strategy.scope(), distributed.sharded_tables(strategy):
        layer = keras.layers.Embedding(ROWS, DIM, name="embedding_C1",
                                       embeddings_initializer=keras.initializers.RandomNormal(stddev=0.1, seed=3))
        model = tiny_model(layer)
        optimizer = optim.GroupAdam(**HYPER)
    table = layer.embeddings
    shards = layer.trainable_weights

    @tf.function
    def sharded_step(ids, upstream):
        def replica(ids, upstream):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(ids) * upstream)
            grads = tape.gradient(loss, shards)
            optimizer.apply_gradients(zip(grads, shards))
            return tf.constant([isinstance(g, tf.IndexedSlices) for g in grads])
        return strategy.run(replica, args=(ids, upstream))

    initial = table.numpy()
    sequence = gradient_sequence()
    sparse = None
    for ids, upstream in sequence:
        result = coordinator.schedule(sharded_step, args=(tf.constant(ids), tf.constant(upstream)))
        coordinator.join()  # one step at a time: the reference applies them in this order
        sparse = result.fetch()

    # The unsharded reference: same initial rows, same gradients, this process, no strategy.
    reference_layer = keras.layers.Embedding(ROWS, DIM, name="embedding_C1")
    reference_model = tiny_model(reference_layer)
    reference_layer.embeddings.assign(initial)
    reference = optim.GroupAdam(**HYPER)
    variable = reference_layer.embeddings

    @tf.function
    def reference_step(ids, upstream):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.embedding_lookup(variable, ids) * upstream)
        reference.apply_gradients([(tape.gradient(loss, variable), variable)])

    for ids, upstream in sequence:
        reference_step(tf.constant(ids), tf.constant(upstream))

    touched = np.unique(np.concatenate([ids for ids, _ in sequence]))
    sharded_state = {name: np.concatenate([slots(optimizer, shard)[name].numpy() for shard in shards])
                     for name in ("m", "v", "z")}
    reference_state = {name: value.numpy() for name, value in slots(reference, variable).items()}
    # m, v and z of a shard's rows live in its row_state slot.
    devices = [{"shard": shard.device, **{name: optimizer.row_state(shard).device for name in ("m", "v", "z")}}
               for shard in shards]

    # Warm start: the sharded model's state restores into an unsharded model, and into the sharded one.
    state = tempfile.mkdtemp(prefix="sharded-state-")
    warm_start.save(state, model, optimizer, None, {"model": "tiny", "optimizer": "group_adam"})
    saved = tf.train.load_checkpoint(os.path.join(state, warm_start.STATE_PREFIX))
    no_vocabulary = types.SimpleNamespace(values={})
    fresh_layer = keras.layers.Embedding(ROWS, DIM, name="embedding_C1")
    fresh_model = tiny_model(fresh_layer)
    fresh_optimizer = optim.GroupAdam(**HYPER)
    unsharded_restore = warm_start.restore(state, fresh_model, fresh_optimizer, no_vocabulary, "tiny", "group_adam")
    fresh_state = {name: value.numpy() for name, value in slots(fresh_optimizer, fresh_layer.embeddings).items()}
    with strategy.scope(), distributed.sharded_tables(strategy):
        again_layer = keras.layers.Embedding(ROWS, DIM, name="embedding_C1")
        again_model = tiny_model(again_layer)
        again_optimizer = optim.GroupAdam(**HYPER)
    sharded_restore = warm_start.restore(state, again_model, again_optimizer, no_vocabulary, "tiny", "group_adam")
    again_state = {name: np.concatenate([slots(again_optimizer, s)[name].numpy() for s in again_layer.trainable_weights])
                   for name in ("m", "v", "z")}

    # KeepBestEpoch's snapshot round trip on the sharded model.
    prefix = os.path.join(state, "snapshot")
    warm_start.snapshot(prefix, model, optimizer)
    before = table.numpy()
    for shard in shards:
        shard.assign(tf.zeros_like(shard))
    warm_start.restore_snapshot(prefix, model, optimizer)

    result = {
        "num_ps": num_ps,
        "shard_rows": [int(s.shape[0]) for s in shards],
        "table_type": type(table).__name__,
        "table_name": sharded.name(table),
        "gradients_sparse": [bool(x) for x in np.asarray(sparse)],
        "iterations": int(optimizer.iterations.numpy()),
        "touched": int(len(touched)),
        "max_abs_diff": {
            "w": float(np.max(np.abs(table.numpy() - variable.numpy()))),
            **{name: float(np.max(np.abs(sharded_state[name] - reference_state[name]))) for name in ("m", "v", "z")},
        },
        "zero_rows": {"sharded": optim.zero_rows(table), "reference": optim.zero_rows(variable)},
        "untouched_rows_unchanged": bool(np.array_equal(np.delete(table.numpy(), touched, axis=0),
                                                        np.delete(initial, touched, axis=0))),
        "devices": devices,
        "warm_start": {
            "saved_keys": sorted(saved.get_variable_to_shape_map()),
            "saved_table_shape": saved.get_variable_to_shape_map()["embedding_C1/embeddings"],
            "unsharded_restored": unsharded_restore["restored"] and unsharded_restore["optimizer_state"],
            "sharded_restored": sharded_restore["restored"] and sharded_restore["optimizer_state"],
            "unsharded_max_abs_diff": max(
                float(np.max(np.abs(fresh_layer.embeddings.numpy() - table.numpy()))),
                *(float(np.max(np.abs(fresh_state[n] - sharded_state[n]))) for n in ("m", "v", "z"))),
            "sharded_max_abs_diff": max(
                float(np.max(np.abs(again_layer.embeddings.numpy() - table.numpy()))),
                *(float(np.max(np.abs(again_state[n] - sharded_state[n]))) for n in ("m", "v", "z"))),
            "iterations_restored": int(fresh_optimizer.iterations.numpy()),
        },
        "snapshot_round_trip": bool(np.array_equal(table.numpy(), before)),
    }
    with open(out_path, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # the cluster's servers are stopped by the test, not waited for
