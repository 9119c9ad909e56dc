"""TF Transform module file: raw click-log features -> model features.

* Integer fields: ``log(1 + max(x, 0))`` as float32; a missing value becomes 0.0 (what log1p(0)
  gives). ExampleGen counts the clipped negatives per field.
* Categorical ``vocab`` fields: one vocabulary over all of them, of ``<field>\x1f<value>`` tokens
  with the spec's frequency threshold, so every id is exactly one (field, value) pair and a single
  analyzer pass serves every field instead of one analyzer per field. It is counted by the spec's
  ``vocabulary_counter``: ``numpy`` (`components.frequent_values`) or ``tft.vocabulary``; the same
  file either way, each batch's distinct values counted in the graph. Values
  under the threshold and unseen values get -1; the model maps ids to per-field embedding rows
  (`components.vocabulary.FieldRows`), -1 to the field's OOV row. Missing values are the explicit
  token ``__MISSING__`` so they get their own id when frequent.
* ``hash`` fields are hashed into ``hash_buckets`` buckets: their ids are rows already.
* With ``quantile_buckets: N`` in the spec, every int field also yields ``<field>_bucket``, its
  quantile bucket (``tft.bucketize``), embedded like a categorical field.
* The label passes through as int64 under ``label``.

The dataset spec arrives as ``custom_config["dataset_spec"]`` (JSON), so this one module serves
every layout.
"""
from __future__ import annotations

import tensorflow as tf
import tensorflow_transform as tft

from components import frequent_values
from components.dataset_spec import DatasetSpec

LABEL_KEY = "label"
MISSING_TOKEN = b"__MISSING__"


VOCABULARY_NAME = "categorical"
FIELD_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in a line-based click-log field


def bucket_fields(spec: DatasetSpec):
    """Quantile-bucket id features derived from the int fields (none unless the spec asks)."""
    return [f"{name}_bucket" for name in spec.int_columns] if spec.quantile_buckets > 0 else []


def vocab_fields(spec: DatasetSpec):
    return [f for f in spec.categorical_columns if spec.column(f).encoding == "vocab"]


def _dense_columns(features, default, flat=True):
    """Scalar features of one dtype (VarLen: at most one value a row) -> a dense [batch] tensor each
    ([batch, 1] with ``flat=False``), `default` where a value is missing. A sparse feature costs
    three ops (its [batch, 1] shape, a SparseToDense, which rejects a row with a second value, and
    the reshape) and none copies the values. TF Transform traces this graph seven times a run,
    saves it twice and loads it three times, and it runs in every serving request: its op count is
    much of Transform's fixed cost."""
    default = tf.convert_to_tensor(default, features[0].dtype) if features else None
    width_index, one, batch = tf.constant([[1]]), tf.constant([1], tf.int64), tf.constant([-1])
    columns = []
    for x in features:
        if isinstance(x, tf.sparse.SparseTensor):
            # The feature's own batch size: a serving request whose features differ in length
            # must fail, not be padded to one of them.
            shape = tf.tensor_scatter_nd_update(x.dense_shape, width_index, one)  # [batch, 1]
            x = tf.raw_ops.SparseToDense(sparse_indices=x.indices, output_shape=shape, sparse_values=x.values,
                                         default_value=default, validate_indices=True)
        elif isinstance(x, tf.RaggedTensor):
            x = x.to_tensor(default_value=default, shape=[None, 1])
        else:
            x = tf.reshape(x, [-1, 1])
        columns.append(tf.reshape(x, batch) if flat else x)
    return columns


def _dense(x, default):
    """One sparse/ragged (VarLen, possibly empty) feature -> dense [batch], `default` for missing."""
    return _dense_columns([x], default)[0]


def transform_features(inputs, spec: DatasetSpec):
    outputs = {}
    zero = tf.constant(0.0)
    for name, raw in zip(spec.int_columns, _dense_columns([inputs[n] for n in spec.int_columns], 0)):
        # Criteo's integer fields hold a few negatives: clip them (ExampleGen counts them per field).
        outputs[name] = tf.math.log1p(tf.maximum(tf.cast(raw, tf.float32), zero))
    if bucket_fields(spec):
        # elementwise: per-field boundaries from one quantiles analyzer over all int fields.
        stacked = tf.stack([outputs[name] for name in spec.int_columns], axis=1)
        buckets = tft.bucketize(stacked, spec.quantile_buckets, elementwise=True)
        for j, name in enumerate(bucket_fields(spec)):
            outputs[name] = tf.cast(buckets[:, j], tf.int64)
    hashed = [name for name in spec.categorical_columns if spec.column(name).encoding == "hash"]
    for name, value in zip(hashed, _dense_columns([inputs[n] for n in hashed], MISSING_TOKEN)):
        outputs[name] = tf.strings.to_hash_bucket_fast(value, spec.column(name).hash_buckets)
    fields = vocab_fields(spec)
    if fields:
        prefixes = [f + FIELD_SEPARATOR for f in fields]
        columns = _dense_columns([inputs[f] for f in fields], MISSING_TOKEN, flat=False)
        # A prefix per column: adding a scalar is TensorFlow's fast path, broadcasting a row of
        # prefixes over the matrix costs ~10% of the transform graph's time.
        tokens = tf.concat([tf.constant(prefix) + column for prefix, column in zip(prefixes, columns)], axis=1)
        if spec.vocabulary_counter == "numpy":
            # Counted field by field: the analysis builds no token per row.
            batch = tf.constant([-1])
            values = [tf.reshape(column, batch) for column in columns]
            vocabulary = frequent_values.vocabulary_of_fields(
                list(zip(prefixes, values)), spec.frequency_threshold, VOCABULARY_NAME)
        else:
            # Unit weights: the same counts, vocabulary and ids as without weights, but TFT then
            # counts each batch's distinct tokens in the graph (unique_with_counts) and hands Beam
            # one (token, count) pair per distinct token and batch; without weights it hands Beam
            # every token of every row, one element each (26 per Criteo row).
            vocabulary = tft.vocabulary(tokens, frequency_threshold=spec.frequency_threshold,
                                        vocab_filename=VOCABULARY_NAME, weights=tf.ones_like(tokens, dtype=tf.float32))
        ids = tft.apply_vocabulary(tokens, vocabulary, default_value=-1)
        outputs.update(zip(fields, tf.unstack(ids, num=len(fields), axis=1)))
    outputs[LABEL_KEY] = tf.cast(_dense(inputs[spec.label], 0), tf.int64)
    return outputs


def preprocessing_fn(inputs, custom_config):
    """TFX Transform entry point."""
    spec = DatasetSpec.from_json(custom_config["dataset_spec"])
    return transform_features(inputs, spec)
