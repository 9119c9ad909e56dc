"""A small real CTR SavedModel with the pushed model's contract (docs/contracts.md), built once.

The model is the project's own: ``components.models.build_model("dnn", ...)`` over the Criteo spec's
fields, exported with the trainer's own signature code (``components.export_signatures``) and
``tf.saved_model.save``. Only Transform is replaced: instead of a TF Transform graph (which
needs a Beam analysis run, too slow for these tests) a small ``tf.Module`` applies the same
transform as ``components/preprocessing.py`` -- log1p of clipped integers, a vocabulary lookup with
one OOV id per categorical field -- with ``tf.lookup`` tables, and offers the two methods of
``tft.TFTransformOutput`` that the signatures call.
"""
from __future__ import annotations

import os

import pytest

MODEL_NAME = "ctr"
# Each categorical field's vocabulary in the fixture model: v0..v4, then one OOV id.
VOCABULARY = [f"v{i}" for i in range(5)]


def _transform_output(spec):
    import tensorflow as tf

    from components.preprocessing import LABEL_KEY, MISSING_TOKEN, _dense

    class VocabularyTransform(tf.Module):
        """``components.preprocessing.transform_features`` with fixed vocabularies (no Beam analysis)."""

        def __init__(self):
            super().__init__(name="transform")
            keys = tf.constant([MISSING_TOKEN.decode()] + VOCABULARY)
            self.tables = {
                name: tf.lookup.StaticHashTable(
                    tf.lookup.KeyValueTensorInitializer(keys, tf.range(tf.size(keys, out_type=tf.int64))),
                    default_value=len(VOCABULARY) + 1)  # the one OOV id
                for name in spec.categorical_columns}

        def __call__(self, inputs):
            outputs = {}
            for name in spec.int_columns:
                raw = tf.cast(_dense(inputs[name], tf.constant(0, tf.int64)), tf.float32)
                outputs[name] = tf.math.log1p(tf.maximum(raw, 0.0))
            for name in spec.categorical_columns:
                outputs[name] = self.tables[name].lookup(_dense(inputs[name], MISSING_TOKEN))
            if spec.label in inputs:
                outputs[LABEL_KEY] = tf.cast(_dense(inputs[spec.label], tf.constant(0, tf.int64)), tf.int64)
            return outputs

    class VocabularyTransformOutput:
        """The part of ``tft.TFTransformOutput`` that the trainer's signatures use."""

        def __init__(self):
            self._layer = VocabularyTransform()

        def transform_features_layer(self):
            return self._layer

        def raw_feature_spec(self):
            raw = {name: tf.io.VarLenFeature(tf.int64) for name in spec.int_columns}
            raw.update({name: tf.io.VarLenFeature(tf.string) for name in spec.categorical_columns})
            raw[spec.label] = tf.io.VarLenFeature(tf.int64)
            return raw

    return VocabularyTransformOutput()


def save_ctr_model(serving_dir: str, version: int, seed: int = 1) -> str:
    """Export a fixture model to ``<serving_dir>/ctr/<version>``; another seed gives other scores."""
    import tensorflow as tf
    import tf_keras as keras

    from components import models
    from components.dataset_spec import load_spec
    from components.export_signatures import signatures as _signatures

    spec = load_spec("criteo")
    keras.utils.set_random_seed(seed)
    rows = len(VOCABULARY) + 2  # missing token + vocabulary + OOV
    model = models.build_model("dnn", spec.int_columns, spec.categorical_columns,
                               {f: rows for f in spec.categorical_columns}, embedding_dim=4, hidden_units=[8])
    # Untrained embeddings are ~N(0, 0.01) and would give every row ~0.5: widen them so that
    # different rows get visibly different scores (the parity tests compare them).
    for layer in model.layers:
        if isinstance(layer, keras.layers.Embedding):
            layer.embeddings.assign(layer.embeddings * 100.0)
    path = os.path.join(serving_dir, MODEL_NAME, str(version))
    signatures = _signatures(model, _transform_output(spec), spec)
    # tf.saved_model.save of a plain tf.Module holding the variables, not model.save: Keras's saver
    # traces every layer's call (minutes on a busy 2-core machine); the signatures are the same.
    root = tf.Module()
    root.model_variables = list(model.variables)
    root.tft_layer = model.tft_layer
    tf.saved_model.save(root, path, signatures=signatures)
    return path


def criteo_rows(n: int, offset: int = 0):
    """``n`` raw rows for ``predict_raw`` (JSON-friendly), varied so their scores differ."""
    from components.dataset_spec import load_spec

    spec = load_spec("criteo")
    rows = []
    for r in range(offset, offset + n):
        row = {name: (r * (i + 3)) % 50 - 2 for i, name in enumerate(spec.int_columns)}
        for i, name in enumerate(spec.categorical_columns):
            k = (r + i) % (len(VOCABULARY) + 2)
            row[name] = "" if k == len(VOCABULARY) else ("unseen" if k > len(VOCABULARY) else VOCABULARY[k])
        rows.append(row)
    return rows


def to_example(row) -> bytes:
    """A raw row as the serialized tf.Example that ExampleGen would emit (empty/absent = missing)."""
    import tensorflow as tf

    feature = {}
    for name, value in row.items():
        if isinstance(value, str):
            if value:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value.encode()]))
        else:
            feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    # deterministic: map entries in key order, the same bytes in every process (tests cut them)
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


@pytest.fixture(scope="session")
def serving_base(tmp_path_factory):
    """``<tmp>/serving`` holding ``ctr/1``: a serving base directory as the Pusher leaves it."""
    base = tmp_path_factory.mktemp("serving_base")
    save_ctr_model(str(base), 1)
    return str(base)
