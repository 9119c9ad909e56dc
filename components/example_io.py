"""Reading ExampleGen's tf.Examples into Arrow RecordBatches in bulk, for TF Transform.

TFX's Transform reads its input through tfx_bsl's ``TFExampleRecord.BeamSource``: Beam's
``ReadFromTFRecord`` (one Beam element per record), ``BatchElements`` (batches of at most 1,000)
and tfx_bsl's ``ExamplesToRecordBatchDecoder``. On the 2-core development machine that costs
~40 us per row before any transformation (the decoder alone 15-60 us for a 40-feature Criteo row,
profiled), several times what the whole ExampleGen now spends on a row.

``BulkTFExampleRecord`` is that TFXIO with another ``BeamSource``: one Beam element per file;
``tf.data`` reads the file's records in batches (C++, gzip included) and ``tf.io.parse_example``
decodes each batch (C++, ~4 us per row); the parsed sparse tensors become Arrow ``large_list``
columns with exactly the TFXIO's ``ArrowSchema()``, so everything after the source (TensorAdapter,
TFT) is unchanged. A feature that is absent from an example is a null list, as in tfx_bsl's
decoder; a feature present with no values is also a null list here (tfx_bsl: an empty list); both
give the same VarLen tensors, and ClickLogExampleGen never writes an empty feature.

Anything this source does not cover (a schema with other than INT/FLOAT/BYTES features or
sequence features, raw-record columns) falls back to tfx_bsl's own ``BeamSource``.
"""
from __future__ import annotations

import functools
import os
from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from tfx_bsl.tfxio import tensor_representation_util
from tfx_bsl.tfxio.tf_example_record import TFExampleRecord

from tensorflow_metadata.proto.v0 import schema_pb2

# Rows per RecordBatch. TF Transform runs its graphs once per batch: bigger batches amortise the
# per-call cost and TFT hands Beam fewer (token, count) pairs of per-batch vocabulary counts
# (~25k distinct tokens a batch on the generated Criteo data); smaller ones bound memory.
DEFAULT_BATCH_SIZE = 65536
_TYPES = {schema_pb2.INT: "int64", schema_pb2.FLOAT: "float32", schema_pb2.BYTES: "string"}


def _compression(path: str) -> str:
    return "GZIP" if path.endswith(".gz") else ""


def read_examples(file_patterns: Iterable[str], limit: int) -> List[bytes]:
    """Up to `limit` serialized tf.Examples from (gzipped) TFRecord files, as ExampleGen writes them:
    the files of each pattern in name order."""
    import tensorflow as tf

    rows: List[bytes] = []
    for pattern in file_patterns:
        for path in sorted(tf.io.gfile.glob(pattern)):
            for record in tf.data.TFRecordDataset(path, compression_type=_compression(path)):
                rows.append(record.numpy())
                if len(rows) >= limit:
                    return rows
    return rows


class _ReadFileFn(beam.DoFn):
    """A TFRecord file of tf.Examples -> RecordBatches of ``batch_size`` rows.

    Counts the records in tfx_bsl's own counter (``<descriptors>.io`` /
    ``tf_example-tfrecords_gzip-num_raw_records``), which progress displays read."""

    def __init__(self, schema: schema_pb2.Schema, arrow_schema: pa.Schema, batch_size: int,
                 telemetry_descriptors: Optional[List[str]] = None, physical_format: str = "tfrecords_gzip"):
        self._schema = schema
        self._arrow_schema = arrow_schema
        self._batch_size = batch_size
        from tfx_bsl.telemetry import util as telemetry_util
        from tfx_bsl.tfxio import telemetry

        namespace = telemetry_util.MakeTfxNamespace(
            list(telemetry_descriptors or telemetry._UNKNOWN_TELEMETRY_DESCRIPTORS) + ["io"])  # pylint: disable=protected-access
        name = telemetry._GetMetricNamer("tf_example", physical_format)("num_raw_records")  # pylint: disable=protected-access
        self._records = beam.metrics.Metrics.counter(namespace, name)

    def setup(self):
        import tensorflow as tf

        self._tf = tf
        dtypes = {f.name: f.type for f in self._schema.feature}
        self._parse = _parse_function(tuple((field.name, _TYPES[dtypes[field.name]]) for field in self._arrow_schema))

    def process(self, path: str):
        tf = self._tf
        dataset = tf.data.TFRecordDataset(path, compression_type=_compression(path), buffer_size=1 << 22)
        dataset = dataset.batch(self._batch_size).prefetch(1)
        for serialized in dataset:
            n = int(serialized.shape[0])
            self._records.inc(n)
            yield self._to_record_batch(self._parse(serialized), n)

    def _to_record_batch(self, parsed, n: int) -> pa.RecordBatch:
        arrays = []
        for field in self._arrow_schema:
            rows, *values = parsed[field.name]
            rows = rows.numpy()
            counts = np.bincount(rows, minlength=n) if len(rows) else np.zeros(n, np.int64)
            offsets = np.zeros(n + 1, np.int64)
            np.cumsum(counts, out=offsets[1:])
            item_type = field.type.value_type
            if len(values) == 2:
                value_array = _binary_array(item_type, values[0].numpy(), values[1].numpy())
            else:
                value_array = pa.array(values[0].numpy(), item_type)
            mask = None if counts.all() else pa.array(counts == 0)
            arrays.append(pa.LargeListArray.from_arrays(pa.array(offsets), value_array, mask=mask))
        return pa.RecordBatch.from_arrays(arrays, schema=self._arrow_schema)


@functools.lru_cache(maxsize=None)
def _parse_function(features):
    """The traced parser of serialized tf.Examples with these (name, tf dtype name) features.

    One per feature list and process: every DoFn instance of a pipeline (each read of each split)
    shares it, so it is traced once, not once per instance (which also made TF warn of retracing).
    """
    import tensorflow as tf

    spec = {name: tf.io.VarLenFeature(getattr(tf, dtype)) for name, dtype in features}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def parse(serialized):
        parsed = tf.io.parse_example(serialized, spec)
        # Per feature: the row ids of the values (dense indices' first column) and the values;
        # strings as their byte lengths and one joined buffer, the layout of an Arrow binary
        # array (a numpy array of bytes objects costs a Python object per value to convert).
        return {name: (st.indices[:, 0], tf.strings.length(st.values), tf.strings.reduce_join(st.values))
                if st.values.dtype == tf.string else (st.indices[:, 0], st.values)
                for name, st in parsed.items()}

    return parse


def _binary_array(item_type: pa.DataType, lengths: np.ndarray, joined: bytes) -> pa.Array:
    """An Arrow (large_)binary array from its values' byte lengths and their concatenation."""
    large = pa.types.is_large_binary(item_type) or pa.types.is_large_string(item_type)
    offsets = np.zeros(len(lengths) + 1, np.int64 if large else np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.Array.from_buffers(item_type, len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(joined)])


def _match(patterns: List[str]) -> List[str]:
    paths = set()
    for result in FileSystems.match(list(patterns)):
        paths.update(m.path for m in result.metadata_list)
    return sorted(paths)


class BulkTFExampleRecord(TFExampleRecord):
    """``TFExampleRecord`` whose ``BeamSource`` reads whole files in bulk (module docstring)."""

    def __init__(self, file_pattern, schema: Optional[schema_pb2.Schema] = None,
                 raw_record_column_name: Optional[str] = None,
                 telemetry_descriptors: Optional[List[str]] = None,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(file_pattern=file_pattern, schema=schema, raw_record_column_name=raw_record_column_name,
                         telemetry_descriptors=telemetry_descriptors)
        self._bulk_batch_size = batch_size

    @classmethod
    def from_tfxio(cls, source: TFExampleRecord, batch_size: int = DEFAULT_BATCH_SIZE) -> "BulkTFExampleRecord":
        return cls(source._file_pattern, schema=source._schema,  # pylint: disable=protected-access
                   raw_record_column_name=source.raw_record_column_name,
                   telemetry_descriptors=source.telemetry_descriptors, batch_size=batch_size)

    def _ProjectImpl(self, tensor_names: List[str]):
        projected = tensor_representation_util.ProjectTensorRepresentationsInSchema(self._schema, tensor_names)
        return BulkTFExampleRecord(self._file_pattern, schema=projected,
                                   raw_record_column_name=self.raw_record_column_name,
                                   telemetry_descriptors=self.telemetry_descriptors,
                                   batch_size=self._bulk_batch_size)

    def supports_bulk(self) -> bool:
        schema = self._schema
        return (schema is not None and self.raw_record_column_name is None
                and self._schema_for_decoding is None
                and all(f.type in _TYPES for f in schema.feature)
                and not any(f.type == schema_pb2.STRUCT for f in schema.feature))

    def BeamSource(self, batch_size: Optional[int] = None) -> beam.PTransform:
        if not self.supports_bulk():
            return super().BeamSource(batch_size)
        schema, arrow_schema = self._schema, self.ArrowSchema()
        patterns = list(self._file_pattern)
        size = batch_size or self._bulk_batch_size
        descriptors = self.telemetry_descriptors

        @beam.ptransform_fn
        @beam.typehints.with_input_types(beam.Pipeline)
        @beam.typehints.with_output_types(pa.RecordBatch)
        def _BulkRead(pipeline):  # pylint: disable=invalid-name
            return (pipeline
                    | "Files" >> beam.Create(_match(patterns))
                    # one element per file: spread the files over the workers
                    | "Spread" >> beam.Reshuffle()
                    | "ReadAndDecode" >> beam.ParDo(_ReadFileFn(schema, arrow_schema, size, descriptors)))

        return _BulkRead()  # pylint: disable=no-value-for-parameter


# ------------------------------------------------------------------------------------------------
# RecordBatch -> serialized tf.Examples, vectorised (Transform's materialization)
# ------------------------------------------------------------------------------------------------
def _entries_fixed(prefix: bytes, values: np.ndarray) -> pa.Array:
    """One map entry per row: ``prefix`` then the value's little-endian bytes (fixed width)."""
    width = values.dtype.itemsize
    n = len(values)
    matrix = np.empty((n, len(prefix) + width), np.uint8)
    matrix[:, :len(prefix)] = np.frombuffer(prefix, np.uint8)
    matrix[:, len(prefix):] = np.ascontiguousarray(values).view(np.uint8).reshape(n, width)
    offsets = np.arange(0, (n + 1) * matrix.shape[1], matrix.shape[1], dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(matrix.reshape(-1))])


def _float_entry_prefix(key_prefix: bytes) -> bytes:
    # Feature{float_list (field 2): FloatList{value (field 1, packed): [one float]}}
    feature = b"\x12\x06\x0a\x04"
    from components.click_log_example_gen.line_parser import _varint

    entry_len = len(key_prefix) + 2 + 2 + 6
    return b"\x0a" + _varint(entry_len) + key_prefix + b"\x12\x08" + feature


def encode_examples(record_batch: pa.RecordBatch) -> Optional[pa.Array]:
    """Serialized tf.Examples (binary array) of a RecordBatch whose columns are ``large_list`` or
    ``list`` of float32 / int64 / binary with one value per row (null: the feature is absent) --
    what Transform outputs for scalar features; features in name order. None for anything else
    (the caller then uses tfx_bsl's encoder). Each row parses to the Example tfx_bsl's
    ``RecordBatchToExamplesEncoder`` writes (a test compares them), in about 40% of its time (5.0-5.5
    against 11.3-13.4 us a row for Criteo's 40 transformed columns, 65,536 rows, ad hoc)."""
    import pyarrow.compute as pc

    from components.click_log_example_gen import block_parsing, line_parser

    n = record_batch.num_rows
    pieces: List[pa.Array] = []
    for name in sorted(record_batch.schema.names, key=lambda s: s.encode("utf-8")):
        column = record_batch.column(record_batch.schema.get_field_index(name))
        if pa.types.is_large_list(column.type):
            offset_type = np.int64
        elif pa.types.is_list(column.type):
            offset_type = np.int32
        else:
            return None
        offsets = np.frombuffer(column.buffers()[1], offset_type, n + 1, column.offset)
        present = np.asarray(column.is_valid().to_numpy(zero_copy_only=False), bool)
        counts = np.diff(offsets)
        if not np.all(counts[present] == 1):
            return None
        values = column.flatten()  # the valid rows' values, in order (null rows' extents skipped)
        if values.null_count or len(values) != int(present.sum()):
            return None
        key = line_parser._key_prefix(name)
        if pa.types.is_float32(values.type):
            full = np.zeros(n, "<f4")
            full[present] = values.to_numpy(zero_copy_only=False)
            feature = [_entries_fixed(_float_entry_prefix(key), full)]
        elif pa.types.is_int64(values.type):
            full = np.zeros(n, np.int64)
            full[present] = values.to_numpy(zero_copy_only=False)
            varint, lengths = block_parsing.varints(full.astype(np.uint64))  # two's complement
            prefixes = pa.array([block_parsing._int_entry_prefix(key, k) for k in range(11)], pa.binary())
            feature = [pc.take(prefixes, pa.array(lengths)), varint]
        elif (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)) and present.all():
            raw = values.cast(pa.binary())
            table = block_parsing._PrefixTable(lambda k, key=key: block_parsing._bytes_entry_prefix(key, k))
            feature = [table.take(pc.binary_length(raw)), raw]
        else:
            return None
        if not present.all():
            absent = pa.array(~present)
            feature = [pc.if_else(absent, pa.scalar(None, pa.binary()), f) for f in feature]
        pieces.extend(feature)
    if not pieces:
        return None
    empty = pa.scalar(b"", pa.binary())
    features = pc.binary_join_element_wise(*pieces, empty, null_handling="skip")
    lengths = np.asarray(pc.binary_length(features).to_numpy(zero_copy_only=False), np.uint64)
    length_varints, _ = block_parsing.varints(lengths)
    return pc.binary_join_element_wise(pa.scalar(b"\x0a", pa.binary()), length_varints, features, empty)
