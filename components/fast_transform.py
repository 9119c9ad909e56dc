"""TFX's Transform component with bulk input and output (issue #18); the same transform.

``Transform`` is ``tfx.components.Transform`` (same spec, inputs, outputs, node id "Transform")
with this module's ``Executor``: TFX's own executor, with two steps of its ``TransformProcessor``
replaced where TFX does per-row Beam work:

* input (``_CreateTFXIO``): tf.Example TFRecords are read by ``example_io.BulkTFExampleRecord``
  (one Beam element per file, ``tf.data`` + ``tf.io.parse_example`` in batches) instead of
  tfx_bsl's per-record ``ReadFromTFRecord`` + ``ExamplesToRecordBatchDecoder``; the RecordBatches
  are equal (tests), so the analysis and the transform see the same data. Other payloads (e.g.
  Parquet) keep TFX's own TFXIO.
* materialization (``_EncodeAndWrite``): each transformed RecordBatch is encoded
  in bulk (``example_io.encode_examples`` for scalar features, which parse to what tfx_bsl's
  encoder writes; tfx_bsl's encoder otherwise) and written, a batch at a time, to one gzipped TFRecord
  file per bundle instead of one Beam element per example through ``WriteToTFRecord``; a last
  step renames the committed bundles' files to ``Split-<name>/transformed_examples-NNNNN-of-
  NNNNN.gz`` (and deletes those of retried bundles). The Trainer reads ``Split-<name>/*``.

  TFX materializes in the input's file format (Parquet input: Parquet output, one pandas row at a
  time) but never records that format on the ``transformed_examples`` artifact, which every reader
  (the Trainer's, TFX's ``tfxio_utils``) then takes for gzipped TFRecords of tf.Examples; this
  executor writes exactly that whatever it reads, so the artifact says what its files hold.

Everything else (analysis, cache, statistics, the transform graph and its outputs) is TFX's code.
TFX's executor builds its ``TransformProcessor`` inside ``Do``; this executor has it build the
subclass instead for the duration of ``Do`` (under a lock).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import uuid
from typing import Iterable, Tuple

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindows
from tfx.components.transform import component as transform_component
from tfx.components.transform import executor as tfx_executor
from tfx.dsl.components.base import executor_spec
from tfx_bsl.coders import example_coder
from tfx_bsl.tfxio.tf_example_record import TFExampleRecord

from components.beam_dependencies import NoSdistOnDirectRunner
from components.example_io import BulkTFExampleRecord, encode_examples

_PATCH_LOCK = threading.Lock()
_INTERNAL_KEY = tfx_executor._TRANSFORM_INTERNAL_FEATURE_FOR_KEY  # pylint: disable=protected-access


class _WriteTransformedFn(beam.DoFn):
    """(RecordBatch, unary pass-through features) -> tf.Examples appended to one gzipped TFRecord
    file per bundle, a batch at a time; outputs the file's (temporary) path when the bundle ends.

    A batch is encoded and framed on one thread and compressed on another (numpy, Arrow and zlib
    release the GIL), while this one goes on to the next batch's TensorFlow work: at most one batch
    waits at each, and a failure there is raised here, at the next batch or when the bundle ends."""

    def __init__(self, schema, output_prefix: str):
        self._schema = schema
        self._prefix = output_prefix

    def setup(self):
        from components.click_log_example_gen import writing

        self._writing = writing
        self._encoder = example_coder.RecordBatchToExamplesEncoder(self._schema)
        self._encode_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transform_encode")
        self._gzip_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="transform_gzip")

    def teardown(self):
        self._encode_pool.shutdown(wait=True)
        self._gzip_pool.shutdown(wait=True)

    def start_bundle(self):
        self._writer = None
        self._path = None
        self._pending = None

    def _encode_and_write(self, record_batch: pa.RecordBatch) -> None:
        examples = encode_examples(record_batch)  # scalar features: vectorised
        if examples is None:
            examples = pa.array(self._encoder.encode(record_batch), pa.binary())
        self._writer.write(examples)

    def process(self, element: Tuple[pa.RecordBatch, dict]) -> Iterable[str]:
        record_batch, _ = element
        if not record_batch.num_rows:
            return
        if self._writer is None:
            self._path = f"{self._prefix}{_BUNDLE_MARKER}{uuid.uuid4().hex}.gz"
            self._writer = self._writing.SplitWriter([self._path], [1], self._gzip_pool)
        self._wait_or_abort()
        self._pending = self._encode_pool.submit(self._encode_and_write, record_batch)
        return
        yield  # pylint: disable=unreachable

    def _wait_or_abort(self):
        """Waits for the batch in flight; if it failed, removes the bundle's file and raises."""
        pending, self._pending = self._pending, None
        try:
            if pending is not None:
                pending.result()
        except BaseException:
            self._writer.abort()
            self._writer = None
            raise

    def finish_bundle(self):
        if self._writer is not None:
            self._wait_or_abort()
            self._writer.close()
            self._writer = None
            yield GlobalWindows.windowed_value(self._path)


_BUNDLE_MARKER = "-bundle-"


def _finalize(paths, output_prefix: str) -> int:
    """Renames the committed bundles' files to ``<prefix>-NNNNN-of-NNNNN.gz`` and deletes any
    other bundle file (of a retried bundle); an empty output gets one empty file, as Beam's sink."""
    from components.click_log_example_gen import writing

    paths = sorted(paths)
    stale = [m.path for r in FileSystems.match([f"{output_prefix}{_BUNDLE_MARKER}*"]) for m in r.metadata_list
             if m.path not in set(paths)]
    if stale:
        FileSystems.delete(stale)
    if not paths:
        empty = writing.SplitWriter([f"{output_prefix}-00000-of-00001.gz"], [1])
        empty.close()
        return 0
    final = [f"{output_prefix}-{i:05d}-of-{len(paths):05d}.gz" for i in range(len(paths))]
    FileSystems.rename(paths, final)
    return len(final)


class BulkTransformProcessor(tfx_executor.TransformProcessor):
    """TFX's TransformProcessor with bulk input and TFRecord output (module docstring)."""

    def _CreateTFXIO(self, dataset, schema):
        source = super()._CreateTFXIO(dataset, schema)
        if type(source) is TFExampleRecord:  # pylint: disable=unidiomatic-typecheck
            bulk = BulkTFExampleRecord.from_tfxio(source)
            if bulk.supports_bulk():
                return bulk
        return source

    @staticmethod
    @beam.ptransform_fn
    def _EncodeAndWrite(pcoll, schema, file_format: str, output_path: str):
        del file_format  # always gzipped TFRecords of tf.Examples (module docstring)
        return (pcoll
                | "CheckNoKeys" >> beam.Map(_no_internal_keys)
                | "EncodeAndWriteBatches" >> beam.ParDo(_WriteTransformedFn(schema, output_path))
                | "BundleFiles" >> beam.combiners.ToList()
                | "Finalize" >> beam.Map(_finalize, output_path))


def _no_internal_keys(element):
    record_batch, unary = element
    if _INTERNAL_KEY in record_batch.schema.names or (unary and _INTERNAL_KEY in unary):
        # TFX keys its output examples by the pass-through key only for its own cache tests.
        raise ValueError("fast_transform: pass-through keys are not supported by the bulk writer")
    return element


@contextlib.contextmanager
def _processor(cls):
    with _PATCH_LOCK:
        original = tfx_executor.TransformProcessor
        tfx_executor.TransformProcessor = cls
        try:
            yield
        finally:
            tfx_executor.TransformProcessor = original


class Executor(NoSdistOnDirectRunner, tfx_executor.Executor):
    """TFX's Transform executor running ``BulkTransformProcessor``."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:
        with _processor(BulkTransformProcessor):
            super().Do(input_dict, output_dict, exec_properties)


class Transform(transform_component.Transform):
    """``tfx.components.Transform`` with the bulk ``Executor``; same arguments and outputs."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)
