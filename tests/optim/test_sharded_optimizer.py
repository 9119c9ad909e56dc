"""Group optimizers on embedding tables split into row shards (optim.sharded; issue #21).

On a localhost cluster (1 chief + 2 workers + 2 parameter servers, each a process with its own
TF_CONFIG): Group Adam on a table sharded over both parameter servers, stepped by workers through
ClusterCoordinator, equals the unsharded optimizer on the same gradient sequence to 1e-6 (weights,
m, v, z), its slots live with their shards, rows outside the batches are untouched bit for bit, and
the warm-start state of the sharded model restores into an unsharded one and into a sharded one.
The same math without a cluster (shards as local variables) runs in every test pass.
"""
import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf


def _local_sharded(value, parts):
    from tensorflow.python.distribute import sharded_variable
    bounds = np.linspace(0, len(value), parts + 1).astype(int)
    shards = [tf.Variable(value[a:b], name=f"embedding_C1/embeddings/part_{k}")
              for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    return sharded_variable.ShardedVariable(shards, name="embeddings")


def test_sharded_helpers_read_and_write_shard_by_shard(tmp_path):
    from optim import row_sparsity, sharded
    value = np.arange(30, dtype=np.float32).reshape(10, 3)
    value[[0, 4, 9]] = 0
    table = _local_sharded(value, 3)
    assert sharded.is_sharded(table) and not sharded.is_sharded(table.variables[0])
    assert sharded.row_offsets(table) == [0, 3, 6] and sharded.name(table) == "embedding_C1/embeddings"
    assert sharded.logical(list(table.variables) + [table.variables[0]]) == [table]
    assert sharded.zero_rows(table) == 3 == row_sparsity.zero_rows(table)
    sharded.assign_rows(table, np.array([1, 7, 8]), np.full([3, 3], -1.0, np.float32))
    expected = value.copy()
    expected[[1, 7, 8]] = -1
    np.testing.assert_array_equal(table.numpy(), expected)
    # One checkpoint entry written slice by slice, read back whole.
    pairs = sharded.checkpoint_slices(table)
    assert [spec for _, spec in pairs] == ["10 3 0,3:-", "10 3 3,3:-", "10 3 6,4:-"]
    prefix = str(tmp_path / "state")
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=["t"] * 3, shape_and_slices=[s for _, s in pairs],
                      tensors=[v.read_value() for v, _ in pairs])
    np.testing.assert_array_equal(tf.train.load_checkpoint(prefix).get_tensor("t"), expected)


def test_group_adam_on_local_shards_equals_one_table():
    """The step is row-wise: per-shard IndexedSlices (local row numbers) give the table's step."""
    import optim
    rng = np.random.default_rng(0)
    initial = rng.normal(0, 0.1, [101, 4]).astype(np.float32)
    table = _local_sharded(initial, 2)
    whole = tf.Variable(initial, name="embedding_C1/embeddings")
    hyper = dict(learning_rate=0.05, l1=1e-3, l2=1e-3, l21=0.1)
    on_shards, on_whole = optim.GroupAdam(**hyper), optim.GroupAdam(**hyper)
    for step in range(8):
        ids = tf.constant(rng.integers(0, 30 + 10 * step, 24), tf.int64)
        upstream = tf.constant(rng.normal(0, 1, [24, 4]).astype(np.float32))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.embedding_lookup(table, ids) * upstream)
        grads = tape.gradient(loss, table.variables)
        assert all(isinstance(g, tf.IndexedSlices) for g in grads)
        on_shards.apply_gradients(zip(grads, table.variables))
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.nn.embedding_lookup(whole, ids) * upstream)
        on_whole.apply_gradients([(tape.gradient(loss, whole), whole)])
    np.testing.assert_allclose(table.numpy(), whole.numpy(), atol=1e-6)
    assert 0 < optim.zero_rows(table) == optim.zero_rows(whole) < 80


@pytest.mark.e2e
def test_group_adam_on_parameter_servers_equals_unsharded(tmp_path):
    from components.local_cluster import LocalCluster, python_module
    out = tmp_path / "result.json"
    with LocalCluster(workers=2, ps=2, chief=True, log_dir=str(tmp_path)) as cluster:
        for role in ("ps", "worker"):
            for index in range(2):
                cluster.start(role, index, python_module("components.distributed"))
        cluster.start("chief", 0, [sys.executable, "-m", "tests.optim.sharded_check", str(out)])
        code = cluster.wait("chief", 0, timeout=420)
        assert code == 0, cluster.output("chief", 0)[-4000:]
    result = json.loads(out.read_text())
    # Two parameter servers, the table split by rows across them ("div": 501 + 500).
    assert result["num_ps"] == 2 and result["shard_rows"] == [501, 500]
    assert result["table_type"] == "ShardedVariable" and result["table_name"] == "embedding_C1/embeddings"
    assert result["gradients_sparse"] == [True, True] and result["iterations"] == 12
    # Same weights and optimizer state as the unsharded optimizer on the same gradients.
    for name, diff in result["max_abs_diff"].items():
        assert diff <= 1e-6, (name, diff)
    # l21 pruned some of the rows stepped, not all: the comparison covers kept rows too.
    assert 0 < result["zero_rows"]["sharded"] == result["zero_rows"]["reference"] < result["touched"]
    assert result["untouched_rows_unchanged"]
    # Each slot lives on its shard's parameter server.
    devices = result["devices"]
    assert [d["shard"] for d in devices] == ["/job:ps/replica:0/task:0/device:CPU:0",
                                             "/job:ps/replica:0/task:1/device:CPU:0"]
    for d in devices:
        assert d["m"] == d["v"] == d["z"] == d["shard"]
    # The warm-start state keys the table by its unsharded name and restores into either layout.
    warm = result["warm_start"]
    assert {"embedding_C1/embeddings", "m/embedding_C1/embeddings", "v/embedding_C1/embeddings",
            "z/embedding_C1/embeddings", "iteration"} <= set(warm["saved_keys"])
    assert not any("part_" in key for key in warm["saved_keys"])
    assert warm["saved_table_shape"] == [1001, 4]
    assert warm["unsharded_restored"] and warm["sharded_restored"] and warm["iterations_restored"] == 12
    assert warm["unsharded_max_abs_diff"] == 0 and warm["sharded_max_abs_diff"] == 0
    assert result["snapshot_round_trip"]
