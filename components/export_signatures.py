"""The three signatures of an exported CTR model, shared by the Trainer and the Pusher.

The Trainer exports the trained model with them (``trainer_module.run_fn``) and the Pusher rebuilds
them over the pruned copy (``pruned_pusher.pruning.export_pruned``), so both SavedModels answer
with the same names, inputs and outputs (docs/contracts.md):

* ``serving_default``: serialized raw tf.Examples (input ``examples``) -> ``probability``;
* ``predict_raw``: one typed raw tensor per feature (JSON-friendly for TF Serving's REST API);
* ``transform_features``: serialized raw tf.Examples -> Transform's features (for TFMA).
"""
from __future__ import annotations

from typing import Any, Dict

import tensorflow as tf

from components.dataset_spec import DatasetSpec
from components.preprocessing import LABEL_KEY


def raw_feature_spec(tft_output, spec: DatasetSpec) -> Dict[str, Any]:
    """Transform's raw feature spec less the label: what a request carries."""
    raw = dict(tft_output.raw_feature_spec())
    raw.pop(spec.label, None)
    return raw


def signatures(model, tft_output, spec: DatasetSpec) -> Dict[str, Any]:
    """{name: tf.function} of `model` behind the Transform graph of `tft_output`, for ``signatures=``
    of ``model.save`` / ``tf.saved_model.save``. Tracks the Transform layer on `model` (as
    ``model.tft_layer``) so that it is saved with it."""
    # autograph=False: every branch and loop below is decided while tracing (Python values, no
    # tensors), so there is nothing to convert; converting them, and with them the model's and the
    # Transform layer's calls, was most of the time of saving a model.
    tft_layer = tft_output.transform_features_layer()
    model.tft_layer = tft_layer  # tracked, so the transform graph is saved with the model
    raw_spec = raw_feature_spec(tft_output, spec)
    all_raw_spec = dict(tft_output.raw_feature_spec())

    def score(raw_features):
        transformed = tft_layer(raw_features)
        transformed.pop(LABEL_KEY, None)
        return {"probability": model(transformed)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def serving_default(examples):
        return score(tf.io.parse_example(examples, raw_spec))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")], autograph=False)
    def transform_features(examples):
        return tft_layer(tf.io.parse_example(examples, all_raw_spec))

    raw_inputs = {}
    for name in spec.int_columns:
        raw_inputs[name] = tf.TensorSpec([None], tf.int64, name=name)
    for name in spec.categorical_columns:
        raw_inputs[name] = tf.TensorSpec([None], tf.string, name=name)

    @tf.function(input_signature=[raw_inputs], autograph=False)
    def predict_raw(features):
        # "" means a missing categorical value (absent from a tf.Example); integers are always
        # present here: 0 for a missing one, which Transform maps like a missing value.
        raw = {}
        for name, feature_spec in raw_spec.items():
            values = features[name]
            if isinstance(feature_spec, tf.io.FixedLenFeature):
                raw[name] = tf.reshape(values, [-1] + list(feature_spec.shape))
                continue
            present = tf.not_equal(values, "") if values.dtype == tf.string else tf.ones_like(values, tf.bool)
            rows = tf.cast(tf.where(present)[:, 0], tf.int64)
            raw[name] = tf.SparseTensor(
                indices=tf.stack([rows, tf.zeros_like(rows)], axis=1),
                values=tf.boolean_mask(values, present),
                dense_shape=tf.stack([tf.shape(values, out_type=tf.int64)[0], tf.constant(1, tf.int64)]))
        return score(raw)

    return {"serving_default": serving_default, "transform_features": transform_features,
            "predict_raw": predict_raw}
