"""Row sparsity of embedding tables: the fraction of rows that are entirely zero (pruned features)."""

import numpy as np
import tf_keras


def zero_rows(table):
    """Number of rows (slices along the first axis) of `table` whose entries are all exactly zero.

    A table sharded by rows (a ShardedVariable) is read one shard at a time."""
    from optim import sharded
    if sharded.is_sharded(table):
        return sharded.zero_rows(table)
    value = np.asarray(table.numpy() if hasattr(table, "numpy") else table)
    if value.ndim == 0:
        return int(value == 0)
    flat = value.reshape(value.shape[0], -1)
    return int(value.shape[0] - np.count_nonzero(np.any(flat != 0, axis=1)))


def _tables(model_or_variables):
    """name -> table for a Keras model/layer (its Embedding layers), a dict, or a list of variables."""
    if isinstance(model_or_variables, tf_keras.layers.Layer):
        layers = [model_or_variables] + list(model_or_variables._flatten_layers(include_self=False))
        return {
            layer.name: layer.embeddings
            for layer in layers
            if isinstance(layer, tf_keras.layers.Embedding) and layer.built
        }
    if isinstance(model_or_variables, dict):
        return dict(model_or_variables)
    if hasattr(model_or_variables, "shape") and hasattr(model_or_variables, "name"):
        model_or_variables = [model_or_variables]
    return {variable.name.split(":")[0]: variable for variable in model_or_variables}


def sparsity(model_or_variables):
    """Row sparsity of the embedding tables of a Keras model, or of the given variables.

    Args:
      model_or_variables: a tf_keras Model or Layer (its `Embedding` layers' tables, keyed by layer
        name, e.g. `embedding_<field>`), a dict name -> variable/array, or a list of variables (keyed
        by variable name without ":0").

    Returns:
      {"tables": {name: {"rows", "zero_rows", "fraction"}}, "rows", "zero_rows", "fraction"}, where a
      fraction is zero_rows / rows (0.0 when there are no rows).
    """
    tables = {}
    for name, table in _tables(model_or_variables).items():
        shape = tuple(table.shape)
        rows = int(shape[0]) if shape else 1
        zeros = zero_rows(table)
        tables[name] = {"rows": rows, "zero_rows": zeros, "fraction": zeros / rows if rows else 0.0}
    rows = sum(t["rows"] for t in tables.values())
    zeros = sum(t["zero_rows"] for t in tables.values())
    return {
        "tables": tables,
        "rows": rows,
        "zero_rows": zeros,
        "fraction": zeros / rows if rows else 0.0,
    }
