"""From Transform's one categorical vocabulary to per-field embedding rows.

Transform gives every (field, value) token a global id (its line in the ``categorical`` vocabulary
file, ``<field>\\x1f<value>``) or -1 when the value is under the frequency threshold or unseen. Each
field has its own embedding table, whose rows are the field's values in vocabulary order followed by
the field's OOV rows. `FieldVocabulary` reads the file once; `FieldRows` is the model layer that maps
global ids to a field's rows with one gather.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components.dataset_spec import DatasetSpec
from components.preprocessing import FIELD_SEPARATOR, VOCABULARY_NAME, bucket_fields, vocab_fields


class FieldVocabulary:
    """Per-field values and the global-id -> field-row map of one Transform output."""

    def __init__(self, spec: DatasetSpec, tft_output=None, vocabulary_path: Optional[str] = None):
        """From a Transform output, or from a copy of its vocabulary file (`vocabulary_path`)."""
        self.spec = spec
        self.fields = vocab_fields(spec)
        self.values: Dict[str, List[bytes]] = {f: [] for f in self.fields}
        global_to_row: List[int] = []
        self.path = vocabulary_path
        if self.fields and self.path is None:
            self.path = tft_output.vocabulary_file_by_name(VOCABULARY_NAME)
        if self.fields:
            path = self.path
            with tf.io.gfile.GFile(path, "rb") as f:
                lines = f.read().split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            sep = FIELD_SEPARATOR.encode()
            for line in lines:
                field, value = line.split(sep, 1)
                rows = self.values.setdefault(field.decode(), [])
                global_to_row.append(len(rows))
                rows.append(value)
        self.global_to_row = np.asarray(global_to_row, dtype=np.int64)

    @property
    def embedded_fields(self) -> List[str]:
        """Every transformed feature that gets an embedding table, in model input order."""
        return list(self.spec.categorical_columns) + bucket_fields(self.spec)

    def rows(self, field: str) -> int:
        """Rows of `field`'s embedding table (values + OOV rows, hash or quantile buckets)."""
        if field in bucket_fields(self.spec):
            return self.spec.quantile_buckets
        column = self.spec.column(field)
        if column.encoding == "hash":
            return column.hash_buckets
        return len(self.values[field]) + max(self.spec.num_oov_buckets, 1)

    def oov_row(self, field: str) -> int:
        return len(self.values[field])

    def table_rows(self) -> Dict[str, int]:
        return {f: self.rows(f) for f in self.embedded_fields}


class FieldRows(keras.layers.Layer):
    """Global vocabulary ids -> rows of each field's table (-1 -> the field's OOV row).

    One instance holds the map (a non-trainable weight, saved with the model) and serves all
    fields: ``rows = layer(ids, oov_row=k)``.
    """

    def __init__(self, global_to_row=None, size: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self._initial = None if global_to_row is None else np.asarray(global_to_row, dtype=np.int64)
        self.size = len(self._initial) if self._initial is not None else int(size or 0)

    def build(self, input_shape):
        initializer = "zeros"
        if self._initial is not None and len(self._initial):
            initializer = keras.initializers.Constant(self._initial)
        self.global_to_row = self.add_weight(
            name="global_to_row", shape=[max(self.size, 1)], dtype=tf.int64, trainable=False,
            initializer=initializer)
        super().build(input_shape)

    def call(self, ids, oov_row: int = 0):
        ids = tf.cast(ids, tf.int64)
        known = ids >= 0
        return tf.where(known, tf.gather(self.global_to_row, tf.where(known, ids, 0)),
                        tf.constant(oov_row, tf.int64))

    def get_config(self):
        # The size, not the map: a saved model stores every layer's config as JSON (~8 bytes per
        # vocabulary line here); the map itself is a weight, restored with the others.
        return dict(super().get_config(), size=self.size)
