"""The CTR model zoo: DNN (Embedding+MLP), DeepFM, Wide&Deep and DCN-v2 over transformed features.

Every categorical field has its own embedding table ``embedding_<field>`` (one row per (field, value)
id), so the Group optimizers regularize exactly the rows of feature values. Integer fields arrive as
log1p floats and feed the dense part. Every model outputs the click probability, shape [batch].
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import tensorflow as tf
import tf_keras as keras

MODELS = ("dnn", "deepfm", "wide_deep", "dcn")


def embedding_layer_name(field: str) -> str:
    return f"embedding_{field}"


class RelativeEmbedding(keras.layers.Embedding):
    """A vocabulary field's table whose value rows are relative to its OOV row: the embedding of a
    known value is its row plus the OOV row; an unseen value (id ``oov_row``) gets the OOV row. A
    value whose row the Group optimizers set to zero then scores exactly like an unseen value, so
    the pruned export can drop it from the vocabulary as well (`pruned_pusher.pruning`); with
    absolute rows a zero row differs from an unseen value whenever the OOV row is non-zero -- and
    the OOV row, hit by every rare value, is the row l21 prunes last."""

    def __init__(self, input_dim, output_dim, oov_row: int = 0, **kwargs):
        super().__init__(input_dim, output_dim, **kwargs)
        self.oov_row = int(oov_row)

    def call(self, ids):
        rows = super().call(ids)
        # One extra id per batch in the table's gradient (the OOV row), not one per example.
        base = tf.nn.embedding_lookup(self.embeddings, tf.constant([self.oov_row], tf.int64))
        known = tf.cast(tf.not_equal(tf.cast(ids, tf.int64), self.oov_row), rows.dtype)
        return rows + known[..., None] * base[0]

    def get_config(self):
        return dict(super().get_config(), oov_row=self.oov_row)


def _inputs(int_fields: Sequence[str], cat_fields: Sequence[str]) -> Dict[str, keras.Input]:
    inputs = {f: keras.Input(shape=(), name=f, dtype=tf.float32) for f in int_fields}
    inputs.update({f: keras.Input(shape=(), name=f, dtype=tf.int64) for f in cat_fields})
    return inputs


def _mlp(x, hidden_units: Sequence[int], prefix: str):
    for i, units in enumerate(hidden_units):
        x = keras.layers.Dense(units, activation="relu", name=f"{prefix}_dense_{i}")(x)
    return x


def build_model(kind: str, int_fields: Sequence[str], cat_fields: Sequence[str],
                table_rows: Mapping[str, int], embedding_dim: int = 8,
                embedding_dims: Mapping[str, int] | None = None,
                hidden_units: Sequence[int] = (64, 32), cross_layers: int = 2,
                global_to_row=None, oov_rows: Mapping[str, int] | None = None,
                rows_relative_to_oov: bool = False) -> keras.Model:
    """A functional tf_keras model from transformed features to click probability.

    Args:
      kind: one of MODELS.
      int_fields / cat_fields: transformed feature names (float32 / int64 ids).
      table_rows: rows of each categorical field's table (vocab size + OOV ids, or hash buckets).
      embedding_dim: default width; embedding_dims overrides it per field (DeepFM needs one width).
      global_to_row / oov_rows: for fields whose inputs are Transform's global vocabulary ids
        (`components.vocabulary`), the id -> row map and each such field's OOV row.
    """
    if kind not in MODELS:
        raise ValueError(f"model {kind!r} not in {MODELS}")
    embedding_dims = dict(embedding_dims or {})
    if kind == "deepfm" and len({embedding_dims.get(f, embedding_dim) for f in cat_fields}) > 1:
        raise ValueError("deepfm needs one embedding width for all fields (its FM term takes dot products)")
    inputs = _inputs(int_fields, cat_fields)
    oov_rows = dict(oov_rows or {})
    field_rows = None
    if oov_rows:
        from components.vocabulary import FieldRows
        field_rows = FieldRows(global_to_row, name="field_rows")
    embedded = []
    for f in cat_fields:
        ids = field_rows(inputs[f], oov_row=oov_rows[f]) if f in oov_rows else inputs[f]
        table_kwargs = dict(embeddings_initializer=keras.initializers.RandomNormal(stddev=0.01),
                            name=embedding_layer_name(f))
        if rows_relative_to_oov and f in oov_rows:
            table = RelativeEmbedding(table_rows[f], embedding_dims.get(f, embedding_dim), oov_row=oov_rows[f],
                                      **table_kwargs)
        else:
            table = keras.layers.Embedding(table_rows[f], embedding_dims.get(f, embedding_dim), **table_kwargs)
        embedded.append(table(ids))  # [batch, d]
    dense = (tf.stack([inputs[f] for f in int_fields], axis=1) if int_fields
             else tf.zeros_like(embedded[0][:, :0]))
    flat = keras.layers.Concatenate(name="features")(embedded + [dense])

    if kind == "dnn":
        logit = keras.layers.Dense(1, name="logit")(_mlp(flat, hidden_units, "deep"))
    elif kind == "deepfm":
        stacked = tf.stack(embedded, axis=1)  # [batch, fields, d]
        square_of_sum = tf.square(tf.reduce_sum(stacked, axis=1))
        sum_of_square = tf.reduce_sum(tf.square(stacked), axis=1)
        fm = 0.5 * tf.reduce_sum(square_of_sum - sum_of_square, axis=1, keepdims=True)
        deep = keras.layers.Dense(1, name="deep_logit")(_mlp(flat, hidden_units, "deep"))
        linear = keras.layers.Dense(1, name="linear_logit")(flat)
        logit = keras.layers.Add(name="logit")([fm, deep, linear])
    elif kind == "wide_deep":
        wide = keras.layers.Dense(1, name="wide_logit")(flat)
        deep = keras.layers.Dense(1, name="deep_logit")(_mlp(flat, hidden_units, "deep"))
        logit = keras.layers.Add(name="logit")([wide, deep])
    else:  # dcn (DCN-v2: x_{l+1} = x0 * (W x_l + b) + x_l)
        x0 = flat
        x = flat
        width = flat.shape[-1]
        for i in range(cross_layers):
            x = x0 * keras.layers.Dense(width, name=f"cross_{i}")(x) + x
        deep = _mlp(flat, hidden_units, "deep")
        logit = keras.layers.Dense(1, name="logit")(keras.layers.Concatenate()([x, deep]))
    probability = keras.layers.Activation("sigmoid", name="probability")(tf.reshape(logit, [-1]))
    return keras.Model(inputs=inputs, outputs=probability, name=f"ctr_{kind}")


def embedding_tables(model: keras.Model) -> Dict[str, tf.Variable]:
    """field -> embedding table variable of a model built by build_model."""
    prefix = "embedding_"
    return {layer.name[len(prefix):]: layer.embeddings for layer in model.layers
            if isinstance(layer, keras.layers.Embedding) and layer.name.startswith(prefix)}
