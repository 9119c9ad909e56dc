"""TF Transform module file: raw click-log features -> model features.

* Integer fields: ``log(1 + max(x, 0))`` as float32; a missing value becomes 0.0 (what log1p(0)
  gives). ExampleGen counts the clipped negatives per field.
* Categorical fields: one id per (field, value). ``vocab`` fields get a vocabulary (named after the
  field) with the spec's frequency threshold; values under it and unseen values share the OOV ids.
  Missing values are the explicit token ``__MISSING__`` so they get their own id when frequent.
  ``hash`` fields are hashed into ``hash_buckets`` buckets.
* The label passes through as int64 under ``label``.

The dataset spec arrives as ``custom_config["dataset_spec"]`` (JSON), so this one module serves
every layout.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf  # noqa: E402
import tensorflow_transform as tft  # noqa: E402

from components.dataset_spec import DatasetSpec  # noqa: E402

LABEL_KEY = "label"
MISSING_TOKEN = b"__MISSING__"


def vocabulary_name(field: str) -> str:
    return f"vocab_{field}"


def embedding_rows(spec: DatasetSpec, tf_transform_output, field: str) -> int:
    """Rows of `field`'s embedding table: its id range after Transform."""
    col = spec.column(field)
    if col.encoding == "hash":
        return col.hash_buckets
    return tf_transform_output.vocabulary_size_by_name(vocabulary_name(field)) + spec.num_oov_buckets


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
    for name in spec.categorical_columns:
        col = spec.column(name)
        raw = _dense(inputs[name], MISSING_TOKEN)
        if col.encoding == "hash":
            outputs[name] = tf.strings.to_hash_bucket_fast(raw, col.hash_buckets)
        else:
            outputs[name] = tft.compute_and_apply_vocabulary(
                raw,
                frequency_threshold=spec.frequency_threshold,
                num_oov_buckets=spec.num_oov_buckets,
                vocab_filename=vocabulary_name(name),
            )
    outputs[LABEL_KEY] = tf.cast(_dense(inputs[spec.label], tf.constant(0, tf.int64)), tf.int64)
    return outputs


def preprocessing_fn(inputs, custom_config):
    """TFX Transform entry point."""
    spec = DatasetSpec.from_json(custom_config["dataset_spec"])
    return transform_features(inputs, spec)
