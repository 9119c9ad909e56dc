"""optim.sparsity: fraction of all-zero rows per embedding table and overall."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import optim


def _table(rows, zero_rows, dim=3):
    value = np.ones((rows, dim), np.float32)
    value[list(zero_rows)] = 0.0
    return value


def test_model_embedding_layers_keyed_by_layer_name_including_nested_ones():
    inner = tf_keras.Sequential([tf_keras.layers.Embedding(6, 3, name="embedding_b")], name="tower")
    ids = tf_keras.Input((), dtype="int64")
    a = tf_keras.layers.Embedding(4, 3, name="embedding_a")(ids)
    out = tf_keras.layers.Dense(1)(tf_keras.layers.Concatenate()([a, inner(ids)]))
    model = tf_keras.Model(ids, out)
    model.get_layer("embedding_a").embeddings.assign(_table(4, [0, 2]))
    inner.get_layer("embedding_b").embeddings.assign(_table(6, [5]))
    model.layers[-1].kernel.assign(tf.zeros_like(model.layers[-1].kernel))  # not a table: ignored

    report = optim.sparsity(model)
    assert report["tables"] == {
        "embedding_a": {"rows": 4, "zero_rows": 2, "fraction": 0.5},
        "embedding_b": {"rows": 6, "zero_rows": 1, "fraction": pytest.approx(1 / 6)},
    }
    assert (report["rows"], report["zero_rows"]) == (10, 3)
    assert report["fraction"] == pytest.approx(0.3)


def test_variables_dicts_and_arrays():
    var = tf.Variable(_table(5, [1, 3]), name="emb_c")
    assert optim.sparsity([var])["tables"] == {"emb_c": {"rows": 5, "zero_rows": 2, "fraction": 0.4}}
    assert optim.sparsity(var)["zero_rows"] == 2
    report = optim.sparsity({"x": _table(2, [0, 1]), "y": _table(2, [])})
    assert report["tables"]["x"]["fraction"] == 1.0 and report["tables"]["y"]["fraction"] == 0.0
    assert report["fraction"] == 0.5


def test_a_row_with_one_nonzero_coordinate_is_not_a_zero_row():
    value = np.zeros((3, 4), np.float32)
    value[1, 2] = -1e-30
    assert optim.zero_rows(value) == 2


def test_no_tables_gives_zero_fraction():
    assert optim.sparsity([]) == {"tables": {}, "rows": 0, "zero_rows": 0, "fraction": 0.0}
