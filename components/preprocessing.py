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


def _dense(x, default):
    """Sparse/ragged (VarLen, possibly empty) feature -> dense [batch] tensor with `default` for missing."""
    if isinstance(x, tf.sparse.SparseTensor):
        x = tf.sparse.to_dense(
            tf.SparseTensor(x.indices, x.values, [x.dense_shape[0], 1]), default_value=default)
    elif isinstance(x, tf.RaggedTensor):
        x = x.to_tensor(default_value=default, shape=[None, 1])
    return tf.reshape(x, [-1])


def transform_features(inputs, spec: DatasetSpec):
    outputs = {}
    for name in spec.int_columns:
        raw = tf.cast(_dense(inputs[name], tf.constant(0, inputs[name].dtype)), tf.float32)
        # Criteo's integer fields hold a few negatives: clip them (ExampleGen counts them per field).
        outputs[name] = tf.math.log1p(tf.maximum(raw, 0.0))
    if bucket_fields(spec):
        # elementwise: per-field boundaries from one quantiles analyzer over all int fields.
        stacked = tf.stack([outputs[name] for name in spec.int_columns], axis=1)
        buckets = tft.bucketize(stacked, spec.quantile_buckets, elementwise=True)
        for j, name in enumerate(bucket_fields(spec)):
            outputs[name] = tf.cast(buckets[:, j], tf.int64)
    for name in spec.categorical_columns:
        col = spec.column(name)
        if col.encoding == "hash":
            outputs[name] = tf.strings.to_hash_bucket_fast(_dense(inputs[name], MISSING_TOKEN), col.hash_buckets)
    fields = vocab_fields(spec)
    if fields:
        values = [(f + FIELD_SEPARATOR, _dense(inputs[f], MISSING_TOKEN)) for f in fields]
        tokens = tf.stack([tf.constant(prefix) + v for prefix, v in values], axis=1)
        if spec.vocabulary_counter == "numpy":
            # Counted field by field: the analysis builds no token per row.
            vocabulary = frequent_values.vocabulary_of_fields(values, spec.frequency_threshold, VOCABULARY_NAME)
        else:
            # Unit weights: the same counts, vocabulary and ids as without weights, but TFT then
            # counts each batch's distinct tokens in the graph (unique_with_counts) and hands Beam
            # one (token, count) pair per distinct token and batch; without weights it hands Beam
            # every token of every row, one element each (26 per Criteo row).
            vocabulary = tft.vocabulary(tokens, frequency_threshold=spec.frequency_threshold,
                                        vocab_filename=VOCABULARY_NAME, weights=tf.ones_like(tokens, dtype=tf.float32))
        ids = tft.apply_vocabulary(tokens, vocabulary, default_value=-1)
        for j, name in enumerate(fields):
            outputs[name] = ids[:, j]
    outputs[LABEL_KEY] = tf.cast(_dense(inputs[spec.label], tf.constant(0, tf.int64)), tf.int64)
    return outputs


def preprocessing_fn(inputs, custom_config):
    """TFX Transform entry point."""
    spec = DatasetSpec.from_json(custom_config["dataset_spec"])
    return transform_features(inputs, spec)
