"""TFX's StatisticsGen with bulk input; the same statistics.

``StatisticsGen`` is ``tfx.components.StatisticsGen`` (same spec, inputs, outputs, node id) with this
module's ``Executor``: TFX's own executor, whose examples are read by ``example_io.BulkTFExampleRecord``
(one Beam element per file, ``tf.data`` + ``tf.io.parse_example`` in batches) instead of tfx_bsl's
per-record ``ReadFromTFRecord`` + schema-less ``ExamplesToRecordBatchDecoder``: on three eval files of
a scale-run day that read and decode were about three quarters of StatisticsGen's time
(``benchmarks/statistics_bench.py``).

The bulk reader needs each feature's type, which a schema-less read infers: the component's ``schema``
input (the curated schema) gives them, for decoding only. TFX's executor would also hand that schema
to TFDV's options; this one does not, so the statistics are computed exactly as without a schema.
They equal TFX's up to the order in which the approximate sketches (top values, quantiles) and the
float sums see the values. The bulk read is used only where it cannot change what is read: the
schema must describe every feature of the first example of each split with its type (a feature the
schema lacks, or another type, would otherwise be dropped or fail to parse instead of showing up as an
anomaly); otherwise, or without a schema, TFX's own read.
"""
from __future__ import annotations

import threading
from typing import Optional

import tensorflow as tf
from tfx.components.statistics_gen import component as statistics_gen_component
from tfx.components.statistics_gen import executor as tfx_executor
from tfx.components.util import tfxio_utils
from tfx.dsl.components.base import executor_spec
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import io_utils
from tfx_bsl.tfxio.tf_example_record import TFExampleRecord

from tensorflow_metadata.proto.v0 import schema_pb2

from components.beam_dependencies import NoSdistOnDirectRunner
from components.example_io import BulkTFExampleRecord, read_examples

_PATCH_LOCK = threading.Lock()
_KINDS = {schema_pb2.INT: "int64_list", schema_pb2.FLOAT: "float_list", schema_pb2.BYTES: "bytes_list"}


def schema_describes(schema: schema_pb2.Schema, example: tf.train.Example) -> bool:
    """Whether every feature of `example` is in `schema` with its type (values of that kind)."""
    types = {f.name: f.type for f in schema.feature}
    for name, feature in example.features.feature.items():
        kind = feature.WhichOneof("kind")
        if name not in types or (kind is not None and _KINDS.get(types[name]) != kind):
            return False
    return True


def _first_example(source: TFExampleRecord) -> Optional[tf.train.Example]:
    patterns = source._file_pattern  # pylint: disable=protected-access
    records = read_examples([patterns] if isinstance(patterns, str) else patterns, 1)
    return tf.train.Example.FromString(records[0]) if records else None


class _BulkSplitTFXIO:
    """What TFX's StatisticsGen executor calls as ``tfxio_utils``: its ``get_split_tfxio`` gives the
    bulk reader with the decoding schema where it applies (module docstring), TFX's otherwise."""

    def __init__(self, decoding_schema: schema_pb2.Schema):
        self._schema = decoding_schema

    def get_split_tfxio(self, examples, split, telemetry_descriptors, schema=None):
        source = tfxio_utils.get_split_tfxio(examples=examples, split=split,
                                             telemetry_descriptors=telemetry_descriptors, schema=schema)
        if schema is not None or type(source) is not TFExampleRecord:
            return source
        bulk = BulkTFExampleRecord(source._file_pattern, schema=self._schema,  # pylint: disable=protected-access
                                   telemetry_descriptors=source.telemetry_descriptors)
        first = _first_example(source)
        if first is None or not bulk.supports_bulk() or not schema_describes(self._schema, first):
            return source
        return bulk

    def __getattr__(self, name):
        return getattr(tfxio_utils, name)


class Executor(NoSdistOnDirectRunner, tfx_executor.Executor):
    """TFX's StatisticsGen executor reading its examples in bulk (module docstring)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        input_dict = dict(input_dict)
        schemas = input_dict.pop(standard_component_specs.SCHEMA_KEY, None)
        if not schemas:
            super().Do(input_dict, output_dict, exec_properties)
            return
        schema = io_utils.SchemaReader().read(
            io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(schemas)))
        with _PATCH_LOCK:
            tfx_executor.tfxio_utils = _BulkSplitTFXIO(schema)
            try:
                super().Do(input_dict, output_dict, exec_properties)
            finally:
                tfx_executor.tfxio_utils = tfxio_utils


class StatisticsGen(statistics_gen_component.StatisticsGen):
    """``tfx.components.StatisticsGen`` with the bulk ``Executor``; same arguments and outputs. Its
    ``schema`` serves to decode the examples, not as TFDV's schema (module docstring)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
