"""Embedding-pruned exports of a trained CTR model, for TF Serving (issue 7).

Group Adam leaves whole embedding rows at exactly zero. The pruned export keeps only the other rows:
each ``embedding_<field>`` layer becomes a `CompactEmbedding` that holds the kept rows in a compact
table and maps a row id to its compact row through an int32 variable (kept row -> its compact row,
any other row -> 0, the compact table's zero row: exactly what the unpruned table returns for a
zero row). Vocabulary fields lose the dropped values' vocabulary lines as well (`prune_vocabulary`).
Everything else (FieldRows, the dense layers, the Transform layer, the three signatures) is the
trained model's own: the Keras model inside the Model artifact is loaded, re-wired with
``clone_model`` (every layer but the embeddings is reused as is, weights included) and exported with
the trainer's own signature code (``components.export_signatures``). Only standard TF ops
(GatherV2, SelectV2, and Transform's own vocabulary lookup), so stock TF Serving loads it.

Steps, each a function so the Pusher and the tests share them:
``load_trained_model`` -> ``prune_model`` -> ``export_pruned`` -> ``parity_max_abs_error`` ->
``write_warmup_requests`` -> ``publish`` (atomic, versioned) -> ``write_models_config``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import socket
import tempfile
import time
import uuid
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
import tf_keras as keras

from components import push_defaults
from components.example_io import read_examples
from components.models import embedding_layer_name
from serving import file_lock
from serving.model_versions import (SAVED_MODEL_PB, copy_files, copy_tree, is_complete,
                                    is_version_name, manifest, saved_model_pb_last, versions)

EMBEDDING_PREFIX = embedding_layer_name("")
WARMUP_FILE = "tf_serving_warmup_requests"  # TF Serving reads <version>/assets.extra/<this>
TEMP_PREFIX = ".tmp-"  # TF Serving only loads all-digit version directories
SERVING_SIGNATURE = "serving_default"


class ParityError(RuntimeError):
    """The pruned model does not score like the trained one; nothing is pushed."""


class PushError(RuntimeError):
    """The push could not complete; the serving directory holds no partial version."""


# -- the compact embedding layer ----------------------------------------------------------------------
class CompactEmbedding(keras.layers.Layer):
    """An embedding table that stores only its kept (non-zero) rows.

    ``embeddings`` holds one zero row followed by the kept rows; ``compact_row`` (an int32 variable,
    one entry per row of the unpruned table) gives each row's index there, 0 for a dropped row. So a
    lookup is two gathers, and a dropped row gives the zero vector its all-zero row gave. Costs 4 bytes
    per unpruned row plus one row, and two graph ops per table. Input and output shapes are those of
    ``keras.layers.Embedding`` ([batch] int ids -> [batch, d]).
    """

    def __init__(self, kept_rows, output_dim: int, input_dim: int, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self._kept = np.asarray(kept_rows, dtype=np.int64)
        self.output_dim = int(output_dim)
        self.input_dim = int(input_dim)  # rows of the unpruned table
        if self.input_dim >= 2 ** 31:
            raise ValueError(f"{self.name}: {self.input_dim} rows do not fit int32 row indices")

    def build(self, input_shape):
        # Values are assigned after building (set_rows): as initializers they would also be stored
        # as graph constants in saved_model.pb.
        self.embeddings = self.add_weight(
            name="embeddings", shape=[len(self._kept) + 1, self.output_dim], dtype=tf.float32,
            initializer="zeros", trainable=False)
        self.compact_row = self.add_weight(name="compact_row", shape=[self.input_dim], dtype=tf.int32,
                                           initializer="zeros", trainable=False)
        super().build(input_shape)

    def set_rows(self, table: np.ndarray) -> None:
        """Copy the kept rows of the full `table` in."""
        compact_row = np.zeros([self.input_dim], np.int32)
        compact_row[self._kept] = np.arange(1, len(self._kept) + 1, dtype=np.int32)
        self.compact_row.assign(compact_row)
        self.embeddings.assign(np.concatenate([np.zeros([1, self.output_dim], table.dtype), table[self._kept]]))

    def call(self, ids):
        # Two gathers: these ops are traced into every signature of the SavedModel, for every table.
        return tf.gather(self.embeddings, tf.gather(self.compact_row, ids))

    def get_config(self):
        # Not the kept ids themselves: the export stores every Keras layer's config as JSON (in
        # keras_metadata.pb), where a list of row ids would cost ~10 bytes per kept row (they are in
        # the `kept_rows` variable already). The pushed model is served, not rebuilt from configs.
        return dict(super().get_config(), kept=len(self._kept), output_dim=self.output_dim,
                    input_dim=self.input_dim)


class VocabularyEmbedding(keras.layers.Layer):
    """A vocabulary field's table in an export whose Transform vocabulary is pruned too
    (`prune_vocabulary`): one zero row, then the field's kept rows, indexed by `PrunedFieldRows`;
    -1 (a value the pruned vocabulary does not hold) takes ``oov_row``, the field's OOV row here
    (the zero row when the OOV row is zero). No per-row map: a dropped value is gone from the
    vocabulary, its id and its row alike."""

    def __init__(self, rows: int, output_dim: int, oov_row: int, relative: bool = False, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.rows, self.output_dim, self.oov_row = int(rows), int(output_dim), int(oov_row)
        self.relative = bool(relative)  # rows relative to the OOV row (`models.RelativeEmbedding`)

    def build(self, input_shape):
        self.embeddings = self.add_weight(name="embeddings", shape=[self.rows, self.output_dim], dtype=tf.float32,
                                          initializer="zeros", trainable=False)
        super().build(input_shape)

    def call(self, ids):
        if self.relative:  # -1 -> the zero row, plus the OOV row for every id
            return tf.gather(self.embeddings, tf.maximum(ids, 0)) + tf.gather(self.embeddings, self.oov_row)
        return tf.gather(self.embeddings, tf.where(ids < 0, tf.constant(self.oov_row, ids.dtype), ids))

    def get_config(self):
        return dict(super().get_config(), rows=self.rows, output_dim=self.output_dim, oov_row=self.oov_row,
                    relative=self.relative)


class PrunedFieldRows(keras.layers.Layer):
    """`components.vocabulary.FieldRows` over a pruned vocabulary: a global id -> the row of its
    field's `VocabularyEmbedding`, -1 for an id the vocabulary does not hold (the embedding layer, one
    per field, knows its OOV row; this layer is shared by all fields). ``oov_row`` is accepted and
    ignored, so the trained model's calls are kept as they are."""

    def __init__(self, size: int, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.size = int(size)

    def build(self, input_shape):
        # Assigned after building: as an initializer the map would also be a graph constant.
        self.global_to_row = self.add_weight(name="global_to_row", shape=[max(self.size, 1)], dtype=tf.int64,
                                             initializer="zeros", trainable=False)
        super().build(input_shape)

    def call(self, ids, oov_row: int = 0):
        ids = tf.cast(ids, tf.int64)
        known = ids >= 0
        return tf.where(known, tf.gather(self.global_to_row, tf.where(known, ids, 0)), tf.constant(-1, tf.int64))

    def get_config(self):
        return dict(super().get_config(), size=self.size)


@dataclasses.dataclass
class PrunedVocabulary:
    """What `prune_vocabulary` keeps of Transform's vocabulary and of each vocabulary field's table."""
    keep_line: np.ndarray              # bool per line of the trained vocabulary
    global_to_row: np.ndarray          # per kept line: its row in its field's compact table
    kept_rows: Dict[str, np.ndarray]   # field -> the trained table's rows kept, in compact order (after row 0)
    oov_rows: Dict[str, int]           # field -> the compact row of its OOV row (0: the zero row)

    @property
    def lines_kept(self) -> int:
        return int(self.keep_line.sum())


def prune_vocabulary(lines: Sequence[bytes], tables: Dict[str, np.ndarray],
                     relative: Iterable[str] = ()) -> PrunedVocabulary:
    """Transform's vocabulary lines (``<field>\x1f<value>``, global id = line) and the trained tables
    of its fields -> what a pruned export keeps. A value whose row is zero scores like a value the
    vocabulary never had -- if the field's OOV row is zero as well: then its line goes. With a non-zero
    OOV row a dropped value must still be told from an unseen one, so its line stays (mapped to the
    zero row). In a `relative` field's table (`models.RelativeEmbedding`) a zero value row always
    scores like an unseen value: its line goes whatever the OOV row. Exact: every id gives the
    vector the trained model gives it."""
    relative = set(relative)
    from components.preprocessing import FIELD_SEPARATOR
    sep = FIELD_SEPARATOR.encode()
    fields = [line.split(sep, 1)[0].decode() for line in lines]
    missing = sorted(set(fields) - set(tables))
    if missing:
        raise ValueError(f"vocabulary fields {missing[:3]} have no embedding_<field> table")
    field_of = np.asarray(fields, dtype=object)
    keep_line = np.zeros(len(lines), bool)
    global_to_row = np.zeros(len(lines), np.int64)
    kept_rows: Dict[str, np.ndarray] = {}
    oov_rows: Dict[str, int] = {}
    for field in sorted(tables):  # a field may have no line (no value at the frequency threshold)
        lines_of = np.flatnonzero(field_of == field)  # the field's values, row = position
        table = tables[field]
        nonzero = np.any(table != 0, axis=1)
        oov = len(lines_of)
        oov_kept = bool(oov < len(table) and nonzero[oov])
        value_kept = nonzero[:oov]
        kept = np.flatnonzero(value_kept)
        kept_rows[field] = np.concatenate([kept, [oov]]) if oov_kept else kept
        compact = np.zeros(oov, np.int64)
        compact[kept] = np.arange(1, len(kept) + 1)
        oov_rows[field] = len(kept) + 1 if oov_kept else 0
        keep_line[lines_of] = value_kept if (field in relative or not oov_kept) else True
        global_to_row[lines_of] = compact
    if len(lines) and not keep_line.any():
        # TF cannot build a lookup table from an empty file; one line at the zero row scores as it
        # would unseen (its row is zero, and so is its OOV row, or its rows are relative to it).
        keep_line[0] = True
    return PrunedVocabulary(keep_line, global_to_row[keep_line], kept_rows, oov_rows)


# -- load, prune ---------------------------------------------------------------------------------------
def custom_objects() -> Dict[str, type]:
    from components.models import RelativeEmbedding
    from components.vocabulary import FieldRows
    return {"FieldRows": FieldRows, "CompactEmbedding": CompactEmbedding, "RelativeEmbedding": RelativeEmbedding}


def load_trained_model(saved_model_dir: str) -> keras.Model:
    """The Keras model of a Trainer's ``Format-Serving`` export (weights only, no optimizer)."""
    return keras.models.load_model(saved_model_dir, custom_objects=custom_objects(), compile=False)


@dataclasses.dataclass
class PruningReport:
    tables: Dict[str, Dict[str, int]]  # field -> rows, zero_rows, dim, compacted
    embedding_bytes_before: int        # the unpruned tables
    embedding_bytes_after: int         # the compact tables
    id_map_bytes: int                  # the row -> compact row maps (int32 per unpruned row)
    vocabulary: Optional[PrunedVocabulary] = None  # what is kept of Transform's vocabulary, if pruned
    vocabulary_lines: int = 0          # lines of the trained model's vocabulary

    @property
    def rows(self) -> int:
        return sum(t["rows"] for t in self.tables.values())

    @property
    def vocabulary_lines_kept(self) -> int:
        """Lines of the export's Transform vocabulary."""
        return self.vocabulary.lines_kept if self.vocabulary is not None else self.vocabulary_lines

    @property
    def zero_rows(self) -> int:
        return sum(t["zero_rows"] for t in self.tables.values())

    @property
    def dropped_rows(self) -> int:
        """Zero rows actually removed (those of the compacted tables)."""
        return sum(t["zero_rows"] for t in self.tables.values() if t["compacted"])

    @property
    def compacted_tables(self) -> int:
        return sum(1 for t in self.tables.values() if t["compacted"])

    @property
    def row_sparsity(self) -> float:
        return self.zero_rows / self.rows if self.rows else 0.0


MIN_COMPACT_BYTES = push_defaults.MIN_COMPACT_BYTES  # tables saving less stay whole (see push_defaults)


def _vocabulary_saving(lines: Sequence[bytes], pruned: PrunedVocabulary, tables: Dict[str, np.ndarray]) -> int:
    """Bytes a pruned vocabulary saves: the dropped lines, their 8-byte entries of the global id map,
    and the dropped rows of the vocabulary fields' tables."""
    dropped = ~pruned.keep_line
    line_bytes = sum(len(line) + 1 for line, drop in zip(lines, dropped) if drop)
    row_bytes = sum(table.nbytes - (len(pruned.kept_rows[f]) + 1) * table[:1].nbytes for f, table in tables.items())
    return line_bytes + 8 * int(dropped.sum()) + row_bytes


def _fed_by(layer: keras.layers.Layer, source: keras.layers.Layer) -> bool:
    """Whether `layer`'s input comes straight from `source` (a vocabulary field's table from FieldRows)."""
    for node in layer._inbound_nodes:  # pylint: disable=protected-access
        inbound = node.inbound_layers
        if any(l is source for l in (inbound if isinstance(inbound, (list, tuple)) else [inbound])):
            return True
    return False


def prune_model(model: keras.Model, prune: bool = True, min_compact_bytes: int = MIN_COMPACT_BYTES,
                vocabulary: Optional[Sequence[bytes]] = None) -> Tuple[keras.Model, PruningReport]:
    """A copy of `model` whose ``embedding_<field>`` tables keep only their non-zero rows.

    With the model's Transform `vocabulary` (its lines; the model maps global ids to rows with a
    `FieldRows` layer), the vocabulary fields are pruned with their vocabulary (`prune_vocabulary`):
    their tables become `VocabularyEmbedding` and FieldRows a `PrunedFieldRows` over the kept lines,
    when that saves at least `min_compact_bytes`; the report's ``vocabulary`` then says which lines
    the export's vocabulary keeps. Any other table is compacted when that saves at least
    `min_compact_bytes` (its zero rows, less its row map and the zero row) into a `CompactEmbedding`;
    a smaller one stays a full ``Embedding`` (same scores, fewer graph bytes). The other layers are
    copies with the same weights; the call arguments of every node (e.g. FieldRows' per-field
    ``oov_row``) are kept by ``clone_model``. ``prune=False`` makes the same copy with every table
    full (the like-for-like unpruned export).
    """
    from components.vocabulary import FieldRows
    replacements: Dict[int, keras.layers.Layer] = {}
    tables: Dict[str, Dict[str, int]] = {}
    before = after = id_map = 0
    embeddings = {layer.name[len(EMBEDDING_PREFIX):]: layer for layer in model.layers
                  if isinstance(layer, keras.layers.Embedding) and layer.name.startswith(EMBEDDING_PREFIX)}
    if not embeddings:
        raise ValueError(f"model {model.name!r} has no {EMBEDDING_PREFIX}<field> Embedding layers to prune")
    field_rows = [layer for layer in model.layers if isinstance(layer, FieldRows)]
    pruned_vocabulary = None
    if prune and vocabulary is not None and len(field_rows) == 1:
        vocabulary_tables = {f: layer.embeddings.numpy() for f, layer in embeddings.items()
                             if _fed_by(layer, field_rows[0])}
        from components.models import RelativeEmbedding
        relative = {f for f in vocabulary_tables if isinstance(embeddings[f], RelativeEmbedding)}
        candidate = prune_vocabulary(vocabulary, vocabulary_tables, relative)
        if _vocabulary_saving(vocabulary, candidate, vocabulary_tables) >= min_compact_bytes:
            pruned_vocabulary = candidate
            rows_layer = PrunedFieldRows(candidate.lines_kept, name=field_rows[0].name)
            rows_layer(tf.zeros([1], tf.int64))
            rows_layer.global_to_row.assign(candidate.global_to_row if candidate.lines_kept else np.zeros([1], np.int64))
            replacements[id(field_rows[0])] = rows_layer
            for field, table in vocabulary_tables.items():
                layer = embeddings[field]
                kept = candidate.kept_rows[field]
                compact = VocabularyEmbedding(len(kept) + 1, table.shape[1], candidate.oov_rows[field],
                                              relative=field in relative, name=layer.name)
                compact(tf.zeros([1], tf.int64))
                compact.embeddings.assign(np.concatenate([np.zeros([1, table.shape[1]], table.dtype), table[kept]]))
                replacements[id(layer)] = compact
                tables[field] = {"rows": int(len(table)), "zero_rows": int(np.sum(~np.any(table != 0, axis=1))),
                                 "dim": int(table.shape[1]), "compacted": True}
                before += table.nbytes
                after += (len(kept) + 1) * table[:1].nbytes
    for field, layer in embeddings.items():
        if id(layer) in replacements:
            continue
        table = layer.embeddings.numpy()
        kept = np.flatnonzero(np.any(table != 0, axis=1))
        rows, dim = table.shape
        row_bytes = table[:1].nbytes
        saved = (rows - len(kept)) * row_bytes - 4 * rows - row_bytes
        # A RelativeEmbedding's rows mean something only with its OOV row: compacted with the vocabulary only.
        compacted = prune and saved >= min_compact_bytes and type(layer) is keras.layers.Embedding
        tables[field] = {"rows": int(rows), "zero_rows": int(rows - len(kept)), "dim": int(dim),
                         "compacted": bool(compacted)}
        before += table.nbytes
        if not compacted:
            after += table.nbytes
            continue
        compact = CompactEmbedding(kept, dim, rows, name=layer.name)
        compact(tf.zeros([1], tf.int64))  # builds it under its name scope: variable embedding_<field>/embeddings
        compact.set_rows(table)
        replacements[id(layer)] = compact
        after += (len(kept) + 1) * row_bytes  # the kept rows and the shared zero row
        id_map += 4 * rows
    # The other layers are re-created from their configs with the trained weights. Reusing the
    # loaded layer objects would also work, but a revived layer carries its restored call graphs and
    # the SavedModel would store them again beside the new traces (+30% saved_model.pb on run6).
    def clone(layer):
        if id(layer) in replacements:
            return replacements[id(layer)]
        try:
            return layer.__class__.from_config(layer.get_config())
        except NotImplementedError:  # the revived Transform layer: no config, and not in the graph
            return layer

    pruned = keras.models.clone_model(model, clone_function=clone)
    originals = {layer.name: layer for layer in model.layers}
    new = {id(layer) for layer in replacements.values()}
    for layer in pruned.layers:
        if layer.weights and id(layer) not in new and layer is not originals[layer.name]:
            layer.set_weights(originals[layer.name].get_weights())
    return pruned, PruningReport(tables, before, after, id_map, pruned_vocabulary,
                                 len(vocabulary) if vocabulary is not None else 0)


def spec_from_saved_model(loaded, tft_output):
    """The DatasetSpec columns that the trainer's signatures need, read off the trained model.

    ``predict_raw`` has one input per raw feature (int64: int column, string: categorical column);
    the label is the one raw feature of the Transform schema that is not among them.
    """
    from components.dataset_spec import Column, DatasetSpec
    inputs = loaded.signatures["predict_raw"].structured_input_signature[1]
    raw = dict(tft_output.raw_feature_spec())
    labels = sorted(set(raw) - set(inputs))
    if len(labels) != 1:
        raise ValueError(f"cannot tell the label among raw features {labels} (predict_raw inputs: {sorted(inputs)})")
    columns = [Column(labels[0], "label")]
    columns += [Column(name, "int") for name in raw if name in inputs and inputs[name].dtype == tf.int64]
    columns += [Column(name, "categorical") for name in raw if name in inputs and inputs[name].dtype == tf.string]
    return DatasetSpec(name="trained-model", columns=tuple(columns))


def export_pruned(trained_model_dir: str, transform_graph_dir: str, export_dir: str,
                  prune: bool = True, min_compact_bytes: int = MIN_COMPACT_BYTES, spec=None) -> PruningReport:
    """Write the pruned SavedModel of `trained_model_dir` (a Trainer's Format-Serving) to `export_dir`.

    The signatures are the trainer's own (``components.export_signatures``) over the same Transform
    output, so their names, inputs and outputs are those of the trained model. ``prune=False`` writes
    the same export with the full tables: the like-for-like size to compare the pruned one with.
    `spec`: the trained model's `spec_from_saved_model`, when the caller has it
    (`trained_spec_and_scores`); otherwise read off the SavedModel here, which loads it once more.
    """
    import tensorflow_transform as tft

    from components import export_signatures
    from components.preprocessing import VOCABULARY_NAME
    tft_output = tft.TFTransformOutput(transform_graph_dir)
    if spec is None:
        spec = spec_from_saved_model(tf.saved_model.load(trained_model_dir), tft_output)
    vocabulary_path = _vocabulary_path(tft_output, VOCABULARY_NAME)
    lines = None
    if prune and vocabulary_path:
        with tf.io.gfile.GFile(vocabulary_path, "rb") as f:
            lines = f.read().split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
    trained = load_trained_model(trained_model_dir)
    if hasattr(trained, "tft_layer"):
        # The trained model's own Transform layer (revived with it, with the full vocabulary as its
        # asset): the clone would keep it and the export would store that vocabulary beside the
        # pruned one. The signatures below attach the export's own Transform layer.
        delattr(trained, "tft_layer")
    pruned, report = prune_model(trained, prune=prune, min_compact_bytes=min_compact_bytes, vocabulary=lines)
    with tempfile.TemporaryDirectory(prefix="pruned-transform-") as scratch:
        if report.vocabulary is not None:
            # The export's Transform graph: the trained one with only the kept vocabulary lines (the
            # lookup table is built from this file when the model loads; ids are line numbers).
            copy = os.path.join(scratch, "transform_graph")
            copy_tree(transform_graph_dir, copy)
            kept = [line for line, keep in zip(lines, report.vocabulary.keep_line) if keep]
            relative = os.path.relpath(vocabulary_path, transform_graph_dir.rstrip("/"))
            with open(os.path.join(copy, relative), "wb") as f:
                f.write(b"".join(line + b"\n" for line in kept))
            tft_output = tft.TFTransformOutput(copy)
        # Without traces: by default every Keras layer's call functions are saved beside the
        # signatures (198 functions instead of 20 for a 26-field DNN) and a server loading the
        # SavedModel revives them all: at 1.3M embedding rows that was 0.55 MB more saved_model.pb
        # and ~50 MB more memory per loaded version (benchmarks/scale_run.py). The pushed model is
        # served, never revived as Keras, so its signatures are all it needs; no optimizer state
        # (the trained model's Group Adam slots are 3x its tables).
        pruned.save(export_dir, save_format="tf", include_optimizer=False, save_traces=False,
                    signatures=export_signatures.signatures(pruned, tft_output, spec))
    return report


def _vocabulary_path(tft_output, name: str) -> Optional[str]:
    try:
        path = tft_output.vocabulary_file_by_name(name)
    except (ValueError, KeyError):  # a dataset without vocabulary fields
        return None
    return path if path and tf.io.gfile.exists(path) else None


# -- parity, warmup ------------------------------------------------------------------------------------
def score_examples(saved_model_dir: str, serialized: Sequence[bytes], batch_size: int = 256) -> np.ndarray:
    """``serving_default`` probabilities of a SavedModel for serialized raw tf.Examples."""
    return _scores(tf.saved_model.load(saved_model_dir), serialized, batch_size)


def trained_spec_and_scores(trained_model_dir: str, transform_graph_dir: str,
                            serialized: Sequence[bytes]) -> Tuple[Any, np.ndarray]:
    """What a push needs of the trained SavedModel besides its Keras model, from one load of it (each
    load reads every table: seconds at a million embedding rows): the `spec_from_saved_model` that
    `export_pruned` takes, and its `score_examples` of `serialized` (the parity reference)."""
    import tensorflow_transform as tft
    loaded = tf.saved_model.load(trained_model_dir)
    return spec_from_saved_model(loaded, tft.TFTransformOutput(transform_graph_dir)), _scores(loaded, serialized)


def _scores(loaded, serialized: Sequence[bytes], batch_size: int = 256) -> np.ndarray:
    signature = loaded.signatures[SERVING_SIGNATURE]
    out = [signature(examples=tf.constant(list(serialized[i:i + batch_size]), tf.string))["probability"].numpy()
           for i in range(0, len(serialized), batch_size)]
    return np.concatenate(out) if out else np.zeros([0], np.float32)


def parity_max_abs_error(trained_model_dir: str, pruned_dir: str, serialized: Sequence[bytes],
                         reference_scores: Optional[np.ndarray] = None) -> float:
    """`reference_scores`: the trained model's `score_examples` of `serialized`, when the caller has them."""
    if not serialized:
        raise ParityError("parity check needs eval rows; the examples' eval split is empty")
    before = score_examples(trained_model_dir, serialized) if reference_scores is None else reference_scores
    after = score_examples(pruned_dir, serialized)
    return float(np.max(np.abs(np.asarray(before, np.float64) - after.astype(np.float64))))


def check_parity(trained_model_dir: str, pruned_dir: str, serialized: Sequence[bytes], tolerance: float,
                 reference_scores: Optional[np.ndarray] = None) -> float:
    error = parity_max_abs_error(trained_model_dir, pruned_dir, serialized, reference_scores)
    if not error <= tolerance:  # also catches NaN
        raise ParityError(f"pruned model disagrees with the trained model: max |Δprobability| = {error:.3g} "
                          f"> tolerance {tolerance:g} on {len(serialized)} eval rows; not pushed")
    return error


def write_warmup_requests(saved_model_dir: str, serialized: Sequence[bytes], model_name: str,
                          max_requests: int = 1000) -> int:
    """``assets.extra/tf_serving_warmup_requests``: one PredictionLog (a ``serving_default``
    PredictRequest of one tf.Example) per row, at most `max_requests` (TF Serving's limit is 1000)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    rows = list(serialized)[:max(0, min(int(max_requests), 1000))]
    directory = os.path.join(saved_model_dir, "assets.extra")
    tf.io.gfile.makedirs(directory)
    with tf.io.TFRecordWriter(os.path.join(directory, WARMUP_FILE)) as writer:
        for row in rows:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=SERVING_SIGNATURE))
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto([row], dtype=tf.string))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return len(rows)


def read_split_examples(examples, split: str, limit: int) -> List[bytes]:
    """Up to `limit` serialized tf.Examples of `split` of an Examples artifact; a clear error before
    any work when its payload is not gzipped TFRecords of tf.Examples (e.g. TFX's Parquet payload):
    TF Serving's requests and the warmup file hold serialized tf.Examples."""
    from tfx.components.util import examples_utils
    from tfx.proto import example_gen_pb2
    from tfx.types import artifact_utils

    payload = examples_utils.get_payload_format(examples)
    file_format = examples_utils.get_file_format(examples)
    # TFX spells the TFRecord file format both ways.
    if (payload != example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE
            or file_format not in ("tfrecords_gzip", "FORMAT_TFRECORDS_GZIP")):
        raise ValueError(
            f"examples at {examples.uri} are {example_gen_pb2.PayloadFormat.Name(payload)} in {file_format} files; "
            "serving requests are built from tf.Examples in gzipped TFRecords (ClickLogExampleGen's output)")
    split_uri = artifact_utils.get_split_uri([examples], split)
    return read_examples([os.path.join(split_uri, "*")], limit)


# -- sizes ---------------------------------------------------------------------------------------------
def dir_size(path: str, exclude: Sequence[str] = ()) -> int:
    """Bytes of all files under `path` (any tf.io.gfile filesystem), minus top-level `exclude` dirs."""
    total = 0
    root = path.rstrip("/")
    for directory, _, files in tf.io.gfile.walk(root):
        relative = os.path.relpath(directory, root)
        if relative.split(os.sep)[0] in exclude:
            continue
        total += sum(tf.io.gfile.stat(os.path.join(directory, name)).length for name in files)
    return total


# -- atomic, versioned push ----------------------------------------------------------------------------
# What a push writes and who may remove it (issue #15):
# * Local filesystems: the whole push holds an exclusive flock on ``<model_dir>/.push.lock``
#   (serving.file_lock; a second pusher waits up to `lock_timeout_s`, then fails naming the holder).
#   Object stores have no atomic create-if-absent through tf.io.gfile, so there the push takes no
#   lock: one pusher per model directory at a time is the orchestrator's job (one Pusher per run).
# * An in-flight folder (local ``.tmp-*``; on object stores the numbered version until its
#   saved_model.pb is written) holds an owner record, OWNER_FILE. A later push removes such a folder
#   only if its owner is gone: the pid is dead on this host, or -- owner on another host -- the record
#   is older than STALE_AGE_S. A folder without the record was left by an older pusher, or by a
#   push that died just before writing it or after removing it (locally under the lock): removed.
# * Copied files are checked against the source's manifest (every file, its size) before the version
#   becomes visible: a rename locally, writing saved_model.pb on object stores.
# * Versions pinned in models.config (a ``specific`` policy, ``version_labels``) survive retention.
OWNER_FILE = ".push-owner"
LOCK_FILE = ".push.lock"
STALE_AGE_S = 24 * 3600  # an in-flight push on another host is never this old
FILE_MODE, DIR_MODE = 0o644, 0o755  # readable by a model server running as another user
DEFAULT_LOCK_TIMEOUT_S = float(push_defaults.LOCK_TIMEOUT_SECONDS)


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def existing_versions(model_dir: str) -> List[int]:
    """The numbered version directories TF Serving would consider, complete or not, ascending."""
    return versions(model_dir, tf.io.gfile, complete=False)


def next_version(model_dir: str, now: Optional[float] = None) -> int:
    """A Unix-timestamp version, bumped past every existing version (never overwrite one)."""
    versions = existing_versions(model_dir)
    return max([int(now if now is not None else time.time())] + [v + 1 for v in versions])


def _check_manifest(root: str, expected: Dict[str, int], listing: bool = True) -> None:
    """Raise PushError unless `root` holds exactly the `expected` files and sizes. Without `listing`
    (object stores, whose listings may lag or, on TF's ram://, match by prefix) each expected file
    is checked by itself and extra files are not looked for."""
    if listing:
        actual = manifest(root)
    else:
        actual = {}
        for name in expected:
            try:
                actual[name] = tf.io.gfile.stat(os.path.join(root, name)).length
            except tf.errors.NotFoundError:
                pass
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    resized = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])
    if missing or extra or resized:
        raise PushError(f"{root} does not match the files pushed ({len(expected)}): {len(missing)} missing "
                        f"{missing[:3]}, {len(extra)} unexpected {extra[:3]}, {len(resized)} of another size "
                        f"{resized[:3]}; nothing was published")


def _makedirs_readable(path: str) -> None:
    """`os.makedirs`, with every directory it creates DIR_MODE whatever the umask."""
    missing = []
    while path and not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path.rstrip("/"))
    for directory in reversed(missing):
        try:
            os.mkdir(directory)
        except FileExistsError:
            continue
        os.chmod(directory, DIR_MODE)


def _make_readable(root: str) -> None:
    for directory, _, names in os.walk(root):
        os.chmod(directory, DIR_MODE)
        for name in names:
            os.chmod(os.path.join(directory, name), FILE_MODE)


def _write_owner(path: str) -> None:
    with tf.io.gfile.GFile(os.path.join(path, OWNER_FILE), "w") as f:
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _owner_gone(path: str, now: float) -> bool:
    """Whether the push that was writing `path` is over (see the notes above OWNER_FILE)."""
    try:
        with tf.io.gfile.GFile(os.path.join(path, OWNER_FILE)) as f:
            owner = json.loads(f.read())
        pid, host, started = int(owner["pid"]), str(owner["host"]), float(owner["started"])
    except (tf.errors.NotFoundError, ValueError, KeyError, TypeError):
        return True  # no (readable) record: an older pusher's leftover
    if host == socket.gethostname():
        return not _pid_alive(pid)
    return now - started > STALE_AGE_S


def remove_stale_temp_dirs(model_dir: str, now: Optional[float] = None) -> List[str]:
    """Remove what interrupted pushes left: temp directories and, on object stores, numbered versions
    without ``saved_model.pb`` (never loadable) -- only those whose pusher is gone. Returns them."""
    now = time.time() if now is None else now
    removed = []
    if tf.io.gfile.isdir(model_dir):
        for name in tf.io.gfile.listdir(model_dir):
            name = name.rstrip("/")
            path = os.path.join(model_dir, name)
            incomplete = is_version_name(name) and not is_complete(path, tf.io.gfile)
            if (name.startswith(TEMP_PREFIX) or incomplete) and _owner_gone(path, now):
                tf.io.gfile.rmtree(path)
                removed.append(path)
    return removed


def push_lock(model_dir: str, timeout_s: float = DEFAULT_LOCK_TIMEOUT_S):
    """The exclusive lock a push holds on a local model directory (created if missing); on object
    stores no lock (see the notes above OWNER_FILE). Re-entrant within a thread."""
    if not _is_local(model_dir):
        return contextlib.nullcontext()
    local = _local(model_dir)
    _makedirs_readable(local)
    return file_lock.exclusive(os.path.join(local, LOCK_FILE), timeout_s, what="push lock")


def _models_config_lock(base_dir: str, timeout_s: float):
    from serving import tf_serving_config
    if not _is_local(base_dir):
        return contextlib.nullcontext()
    return tf_serving_config.model_config_lock(
        os.path.join(_local(base_dir), tf_serving_config.MODEL_CONFIG_FILE), timeout_s)


def _read_models_config(base_dir: str):
    from serving import tf_serving_config
    path = os.path.join(base_dir, tf_serving_config.MODEL_CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        return tf_serving_config.model_server_config([])
    with tf.io.gfile.GFile(path) as f:
        return tf_serving_config.parse_model_config(f.read(), source=path)


def publish(export_dir: str, base_dir: str, model_name: str, keep_versions: int = 3,
            now: Optional[float] = None, lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Tuple[str, int]:
    """Copy `export_dir` to ``<base_dir>/<model_name>/<version>/`` all at once; return (path, version).

    Local filesystems: under the model directory's push lock, copy into
    ``<model_dir>/.tmp-<version>-<uuid>/`` (ignored by TF Serving), check it against the source's
    manifest, make it readable (files 0644, directories 0755), then one ``rename`` -- atomic -- to the
    numbered directory. Object stores (gs://, s3://, ...) have no atomic directory rename, so the
    files go straight to the numbered directory with ``saved_model.pb`` last, after the check (TF
    Serving does not load a version without it). Then only the newest `keep_versions` versions are
    kept, and any version models.config pins for this model.
    """
    if keep_versions < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
    model_dir = os.path.join(base_dir, model_name)
    expected = manifest(export_dir)
    if SAVED_MODEL_PB not in expected:
        raise PushError(f"{export_dir} has no {SAVED_MODEL_PB}; nothing was published")
    with push_lock(model_dir, lock_timeout_s):
        tf.io.gfile.makedirs(model_dir)
        remove_stale_temp_dirs(model_dir)
        version = next_version(model_dir, now)
        final = os.path.join(model_dir, str(version))
        if tf.io.gfile.exists(final):  # next_version never picks one, but an unlocked pusher could
            raise PushError(f"version directory {final} already exists; refusing to overwrite it")
        # Local: a temp folder renamed in one step. Object stores: the version folder itself.
        writing = (os.path.join(model_dir, f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex}")
                   if _is_local(model_dir) else final)
        try:
            tf.io.gfile.makedirs(writing)
            _write_owner(writing)
            if _is_local(model_dir):
                copy_files(export_dir, writing, saved_model_pb_last(expected))
                tf.io.gfile.remove(os.path.join(writing, OWNER_FILE))
                _check_manifest(writing, expected)
                _make_readable(_local(writing))
                os.rename(_local(writing), _local(final))  # fails (rather than replaces) if final now exists
            else:
                rest = {k: v for k, v in expected.items() if k != SAVED_MODEL_PB}
                copy_files(export_dir, writing, sorted(rest))
                _check_manifest(writing, rest, listing=False)  # before saved_model.pb makes it loadable
                copy_files(export_dir, writing, [SAVED_MODEL_PB])
                tf.io.gfile.remove(os.path.join(writing, OWNER_FILE))
        except BaseException:
            try:
                if tf.io.gfile.exists(writing):
                    tf.io.gfile.rmtree(writing)
            except tf.errors.OpError as e:  # the push's own error is the one to report
                logging.warning("could not remove %s after a failed push: %s", writing, e)
            raise
        # Pins are read and honoured under the models.config lock: an operator pinning a version
        # right now either sees it deleted first or has it kept.
        with _models_config_lock(base_dir, lock_timeout_s):
            from serving import tf_serving_config
            pinned = tf_serving_config.pinned_versions(
                _read_models_config(base_dir), model_name,
                base_paths=[model_dir, os.path.abspath(_local(model_dir))] if _is_local(model_dir) else [model_dir])
            for old in existing_versions(model_dir)[:-keep_versions]:
                if old not in pinned:
                    tf.io.gfile.rmtree(os.path.join(model_dir, str(old)))
    return final, version


def write_models_config(base_dir: str, model_name: str, model_base_path: Optional[str] = None,
                        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> str:
    """Point ``model_name``'s entry of ``<base_dir>/models.config`` at ``<base_dir>/<model_name>`` (or
    `model_base_path`), adding it (newest version served) if missing. Other models' entries, and this
    model's version policy and labels -- an operator's pin or rollback -- are kept."""
    from serving import tf_serving_config
    if _is_local(base_dir):
        local = _local(base_dir)
        base_path = model_base_path or os.path.join(os.path.abspath(local), model_name)
        _makedirs_readable(local)
        path = os.path.join(local, tf_serving_config.MODEL_CONFIG_FILE)
        config = tf_serving_config.update_model_config(
            path, lambda old: tf_serving_config.set_model_entry(old, model_name, base_path), lock_timeout_s)
    else:
        # tf_serving_config writes through the local filesystem; for object stores write the same text
        # proto through tf.io.gfile, as a new object renamed over the old one: readers see the old or
        # the new file (and filesystems whose "w" appends, like TF's ram://, get the new one too).
        base_path = model_base_path or os.path.join(base_dir, model_name)
        config = tf_serving_config.set_model_entry(_read_models_config(base_dir), model_name, base_path)
        path = os.path.join(base_dir, tf_serving_config.MODEL_CONFIG_FILE)
        temp = os.path.join(base_dir, f"{TEMP_PREFIX}{tf_serving_config.MODEL_CONFIG_FILE}-{uuid.uuid4().hex}")
        with tf.io.gfile.GFile(temp, "w") as f:
            f.write(tf_serving_config.model_config_text(config))
        tf.io.gfile.rename(temp, path, overwrite=True)
    for entry in config.model_config_list.config:
        if entry.name == model_name and entry.model_version_policy.HasField("specific"):
            logging.warning("%s pins model %r to versions %s: the pushed version is published but not served "
                            "until that pin is changed", path, model_name,
                            list(entry.model_version_policy.specific.versions))
    return path


@dataclasses.dataclass
class PushResult:
    path: str
    version: int
    report: PruningReport
    size_before_bytes: int
    size_after_bytes: int
    parity_max_abs_error: float
    warmup_requests: int
    models_config: str


def prune_and_push(trained_model_dir: str, transform_graph_dir: str, eval_examples: Sequence[bytes],
                   base_dir: str, model_name: str = push_defaults.MODEL_NAME,
                   keep_versions: int = push_defaults.KEEP_VERSIONS,
                   parity_tolerance: float = push_defaults.PARITY_TOLERANCE,
                   parity_examples: int = push_defaults.PARITY_EXAMPLES,
                   warmup_requests: int = push_defaults.WARMUP_REQUESTS,
                   staging_dir: Optional[str] = None, model_base_path: Optional[str] = None,
                   carry_dirs: Optional[Dict[str, str]] = None,
                   min_compact_bytes: int = MIN_COMPACT_BYTES,
                   lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> PushResult:
    """Prune, check parity, add warmup, publish and update models.config -- the whole push.

    `carry_dirs` ({name: source dir}) are copied into the version directory as ``<version>/<name>/``
    before it is published (the Trainer's warm-start state goes along with the model it belongs to;
    TF Serving reads only the SavedModel files and ignores them). Publishing and the models.config
    update hold the model directory's push lock together (waiting up to `lock_timeout_s`).
    """
    own_staging = staging_dir is None
    staging_dir = staging_dir or tempfile.mkdtemp(prefix="pruned-export-")
    try:
        parity_rows = list(eval_examples)[:parity_examples]
        spec, reference = trained_spec_and_scores(trained_model_dir, transform_graph_dir, parity_rows)
        report = export_pruned(trained_model_dir, transform_graph_dir, staging_dir, min_compact_bytes=min_compact_bytes,
                               spec=spec)
        error = check_parity(trained_model_dir, staging_dir, parity_rows, parity_tolerance, reference)
        size_after = dir_size(staging_dir)  # the SavedModel, before assets.extra is added
        warmups = write_warmup_requests(staging_dir, eval_examples, model_name, warmup_requests)
        path, version, config = push_export(staging_dir, base_dir, model_name, keep_versions, model_base_path,
                                            carry_dirs, lock_timeout_s)
        return PushResult(path, version, report, dir_size(trained_model_dir), size_after, error, warmups, config)
    finally:
        if own_staging:
            shutil.rmtree(staging_dir, ignore_errors=True)


def push_export(staging_dir: str, base_dir: str, model_name: str = push_defaults.MODEL_NAME,
                keep_versions: int = push_defaults.KEEP_VERSIONS,
                model_base_path: Optional[str] = None, carry_dirs: Optional[Dict[str, str]] = None,
                lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S) -> Tuple[str, int, str]:
    """Publish a prepared export (`staging_dir`, a local folder that may be written to) and update
    models.config; returns (version path, version, models.config path). `carry_dirs` as in
    `prune_and_push`."""
    for name, source in (carry_dirs or {}).items():
        copy_tree(source, os.path.join(staging_dir, name))
    with push_lock(os.path.join(base_dir, model_name), lock_timeout_s):
        path, version = publish(staging_dir, base_dir, model_name, keep_versions, lock_timeout_s=lock_timeout_s)
        config = write_models_config(base_dir, model_name, model_base_path, lock_timeout_s=lock_timeout_s)
    return path, version, config
