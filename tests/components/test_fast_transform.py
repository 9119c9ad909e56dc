"""Bulk Transform input and output (components/example_io.py, components/fast_transform.py) against
what TFX does per row: the same RecordBatches, the same transform graph, the same transformed rows."""
import glob
import json
import os

import pytest
import tensorflow as tf

from components.dataset_spec import load_spec
from components.example_io import BulkTFExampleRecord, _ReadFileFn
from components.schema import curated_schema

SAMPLES = {"criteo": "criteo/wide-resdnn/dev.csv", "avazu": "avazu/wide-resdnn/dev.csv"}


@pytest.fixture(scope="module")
def example_gen_outputs(tmp_path_factory):
    """ClickLogExampleGen outputs of two real samples (criteo TSV, avazu CSV with header)."""
    from tests.conftest import SHARED_DATA
    from tests.components.test_click_log_example_gen import run_example_gen

    if not os.path.isdir(SHARED_DATA):
        pytest.skip(f"real click-log samples not found at {SHARED_DATA}")
    outputs = {}
    for fmt, sample in SAMPLES.items():
        root = tmp_path_factory.mktemp(fmt)
        (root / "data").mkdir()
        with open(os.path.join(SHARED_DATA, sample), "rb") as f:
            (root / "data" / "part.csv").write_bytes(f.read())
        examples, error = run_example_gen(root / "examples", input_base=str(root / "data"), dataset_spec=fmt)
        assert error is None
        outputs[fmt] = examples
    return outputs


def _tfx_bsl_batches(schema, path, batch_size):
    from tfx_bsl.coders import example_coder

    records = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    decoder = example_coder.ExamplesToRecordBatchDecoder(schema.SerializeToString())
    return [decoder.DecodeBatch(records[i:i + batch_size]) for i in range(0, len(records), batch_size)]


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_bulk_read_equals_tfx_bsl_decoder(fmt, example_gen_outputs):
    schema = curated_schema(load_spec(fmt))
    source = BulkTFExampleRecord(os.path.join(example_gen_outputs[fmt].uri, "Split-*", "*"), schema=schema)
    assert source.supports_bulk()
    parsers = set()
    for path in sorted(glob.glob(os.path.join(example_gen_outputs[fmt].uri, "Split-*", "*"))):
        for batch_size in (100, 4096):
            fn = _ReadFileFn(schema, source.ArrowSchema(), batch_size)
            fn.setup()
            ours = list(fn.process(path))
            parsers.add(fn._parse)
            theirs = _tfx_bsl_batches(schema, path, batch_size)
            assert [b.num_rows for b in ours] == [b.num_rows for b in theirs]
            for a, b in zip(ours, theirs):
                assert a.schema.equals(b.schema) and a.equals(b)
    # Every DoFn instance with these features shares one parser, traced once (no retracing warnings).
    (parse,) = parsers
    assert parse.experimental_get_tracing_count() == 1
    # a projection is bulk too, with the projected schema
    projected = source.Project(["label", "I1"] if fmt == "criteo" else ["click", "hour_of_day"])
    assert isinstance(projected.projected, BulkTFExampleRecord) and len(projected.ArrowSchema()) == 2


def test_bulk_beam_source_reads_every_row_once(example_gen_outputs):
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to

    examples = example_gen_outputs["criteo"]
    schema = curated_schema(load_spec("criteo"))
    source = BulkTFExampleRecord(os.path.join(examples.uri, "Split-*", "*"), schema=schema, batch_size=300)
    expected = []
    for path in sorted(glob.glob(os.path.join(examples.uri, "Split-*", "*"))):
        for b in _tfx_bsl_batches(schema, path, 1000):
            expected.extend(json.dumps(r, sort_keys=True, default=str) for r in b.to_pylist())
    p = beam.Pipeline()
    rows = (p | "TFXIOReadAndDecode[AnalysisIndex0]" >> source.BeamSource()
            | beam.FlatMap(lambda b: [json.dumps(r, sort_keys=True, default=str) for r in b.to_pylist()]))
    assert_that(rows, equal_to(expected))
    result = p.run()
    result.wait_until_finish()
    # tfx_bsl's record counter, which the progress display reads, counts every row
    from pipelines.progress import describe_counters

    counters = {(r.key.metric.namespace, r.key.metric.name, r.key.step): r.committed
                for r in result.metrics().query()["counters"]}
    assert sum(v for k, v in counters.items() if k[1].endswith("-num_raw_records")) == len(expected)
    assert f"rows analyzed {len(expected)}" in describe_counters("Transform", counters, 1.0).replace(",", "")


def _run_transform(executor_cls, examples, schema_dir, out):
    from tfx.types import standard_artifacts

    from components.dataset_spec import load_spec as _load

    schema = standard_artifacts.Schema()
    schema.uri = schema_dir
    graph = standard_artifacts.TransformGraph()
    graph.uri = os.path.join(out, "transform_graph")
    transformed = standard_artifacts.Examples()
    transformed.uri = os.path.join(out, "transformed_examples")
    spec = _load("criteo")
    executor_cls().Do(
        {"examples": [examples], "schema": [schema]},
        {"transform_graph": [graph], "transformed_examples": [transformed]},
        {"preprocessing_fn": "components.preprocessing.preprocessing_fn",
         "custom_config": json.dumps({"dataset_spec": spec.to_json()}), "disable_statistics": 1,
         "force_tf_compat_v1": 0})
    return graph.uri, transformed.uri


def _rows(split_dir):
    """The transformed examples as dicts, sorted by their values rounded to 5 digits."""
    files = sorted(glob.glob(os.path.join(split_dir, "*")))
    rows = []
    for r in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        ex = tf.train.Example.FromString(r.numpy())
        rows.append({k: list(getattr(f, f.WhichOneof("kind")).value) for k, f in ex.features.feature.items()})
    return sorted(rows, key=lambda row: json.dumps({k: [round(x, 5) for x in v] for k, v in row.items()},
                                                   sort_keys=True)), files


def assert_same_rows(ours, theirs):
    """Ids and labels exactly; floats to 1e-6 relative: TF's float32 log1p differs in the last bit
    between the vectorised and the scalar code path, i.e. with a row's place in its batch, and
    TFX batches rows differently (at most 1,000 a batch) from the bulk source."""
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key][0], float):
                assert a[key] == pytest.approx(b[key], rel=1e-6, abs=0), key
            else:
                assert a[key] == b[key], key


@pytest.fixture(scope="module")
def criteo_schema_dir(tmp_path_factory):
    from components.schema import schema_text

    schema_dir = tmp_path_factory.mktemp("schema")
    (schema_dir / "schema.pbtxt").write_text(schema_text(load_spec("criteo")))
    return str(schema_dir)


@pytest.fixture(scope="module")
def bulk_transform_outputs(example_gen_outputs, criteo_schema_dir, tmp_path_factory):
    """This executor's (transform graph uri, transformed examples uri) on the criteo output."""
    from components import fast_transform

    return _run_transform(fast_transform.Executor, example_gen_outputs["criteo"], criteo_schema_dir,
                          str(tmp_path_factory.mktemp("ours")))


def _vocabulary(graph_uri):
    import tensorflow_transform as tft

    from components import preprocessing

    with open(tft.TFTransformOutput(graph_uri).vocabulary_file_by_name(preprocessing.VOCABULARY_NAME), "rb") as f:
        return f.read()


def test_bulk_transform_executor_equals_tfx_executor(example_gen_outputs, criteo_schema_dir,
                                                     bulk_transform_outputs, tmp_path):
    """The whole TFX Transform executor, TFX's vs this one, on ClickLogExampleGen's criteo output:
    the same vocabulary and transform graph outputs, the same transformed examples per split."""
    import tensorflow_transform as tft
    from tfx.components.transform import executor as tfx_executor

    from components import fast_transform

    examples = example_gen_outputs["criteo"]
    ours = bulk_transform_outputs
    theirs = _run_transform(tfx_executor.Executor, examples, criteo_schema_dir, str(tmp_path / "tfx"))
    assert tfx_executor.TransformProcessor is not fast_transform.BulkTransformProcessor  # restored

    assert _vocabulary(ours[0]) == _vocabulary(theirs[0])
    assert (tft.TFTransformOutput(ours[0]).transformed_feature_spec()
            == tft.TFTransformOutput(theirs[0]).transformed_feature_spec())
    for split in ("train", "eval"):
        our_rows, our_files = _rows(os.path.join(ours[1], f"Split-{split}"))
        their_rows, _ = _rows(os.path.join(theirs[1], f"Split-{split}"))
        assert len(our_rows) > 50
        assert_same_rows(our_rows, their_rows)
        assert [os.path.basename(f) for f in our_files] == ["transformed_examples-00000-of-00001.gz"]


def _as_parquet_examples(examples, out_dir):
    """The same examples as TFX's Parquet payload (what a ParquetExampleGen or an ImportExampleGen
    of Parquet files hands on), written by the Transform benchmark's converter."""
    from tfx.components.util import examples_utils
    from tfx.proto import example_gen_pb2
    from tfx.types import standard_artifacts

    from benchmarks.transform_profile import to_parquet

    sizes = to_parquet(examples.uri, out_dir)
    assert sizes["parquet_bytes"] > 0 and sizes["tfrecord_bytes"] > 0
    parquet = standard_artifacts.Examples()
    parquet.uri = out_dir
    parquet.split_names = examples.split_names
    examples_utils.set_payload_format(parquet, example_gen_pb2.PayloadFormat.FORMAT_PARQUET)
    examples_utils.set_file_format(parquet, example_gen_pb2.FileFormat.Name(
        example_gen_pb2.FileFormat.FILE_FORMAT_PARQUET))
    return parquet


def test_parquet_examples_are_transformed_to_the_tfrecords_the_artifact_declares(
        example_gen_outputs, criteo_schema_dir, bulk_transform_outputs, tmp_path):
    """Parquet input goes through TFX's own TFXIO; the output is gzipped TFRecords of tf.Examples
    (what the transformed_examples artifact, which records no format, is read as), equal to the
    output of the same examples as tf.Example TFRecords. TFX's path would write Parquet here."""
    from components import fast_transform

    parquet = _as_parquet_examples(example_gen_outputs["criteo"], str(tmp_path / "parquet"))
    graph_uri, transformed_uri = _run_transform(fast_transform.Executor, parquet, criteo_schema_dir,
                                                str(tmp_path / "out"))
    assert _vocabulary(graph_uri) == _vocabulary(bulk_transform_outputs[0])
    for split in ("train", "eval"):
        rows, files = _rows(os.path.join(transformed_uri, f"Split-{split}"))
        expected, _ = _rows(os.path.join(bulk_transform_outputs[1], f"Split-{split}"))
        assert len(rows) > 50
        assert_same_rows(rows, expected)
        assert [os.path.basename(f) for f in files] == ["transformed_examples-00000-of-00001.gz"]


def test_transform_component_is_tfx_transform_with_the_bulk_executor():
    from tfx.components import Transform as TFXTransform
    from tfx.types import Channel, standard_artifacts

    from components import fast_transform

    component = fast_transform.Transform(
        examples=Channel(type=standard_artifacts.Examples), schema=Channel(type=standard_artifacts.Schema),
        preprocessing_fn="components.preprocessing.preprocessing_fn", disable_statistics=True)
    assert isinstance(component, TFXTransform)
    assert component.executor_spec.executor_class is fast_transform.Executor
    assert component.id == "Transform"
    assert set(component.outputs) == set(TFXTransform(
        examples=Channel(type=standard_artifacts.Examples), schema=Channel(type=standard_artifacts.Schema),
        preprocessing_fn="components.preprocessing.preprocessing_fn", disable_statistics=True).outputs)


def _parsed(serialized):
    ex = tf.train.Example.FromString(serialized)
    return {k: list(getattr(f, f.WhichOneof("kind")).value) for k, f in ex.features.feature.items()
            if f.WhichOneof("kind") and len(getattr(f, f.WhichOneof("kind")).value)}


def test_vectorised_encoder_parses_to_tfx_bsl_encoders_examples():
    import numpy as np
    import pyarrow as pa
    from tfx_bsl.coders import example_coder

    from components.example_io import encode_examples

    n = 3000
    rng = np.random.default_rng(0)

    def column(values, mask=None, large=True):
        offsets = np.arange(n + 1, dtype=np.int64 if large else np.int32)
        cls = pa.LargeListArray if large else pa.ListArray
        return cls.from_arrays(pa.array(offsets), pa.array(values), mask=None if mask is None else pa.array(mask))

    batch = pa.RecordBatch.from_arrays([
        column(rng.random(n).astype(np.float32) * 100 - 50),
        column(np.array([np.inf, -0.0, np.nan, 1e-40] * (n // 4), np.float32)),
        column(rng.integers(-1, 300000, n)),
        column(rng.integers(-(1 << 63), (1 << 63) - 1, n, dtype=np.int64), mask=rng.random(n) < 0.3),
        column(rng.integers(0, 2, n), large=False),
        column(np.array([b"ab", b"", b"\xff" * 200] * (n // 3), object)),
    ], ["f", "g", "C1", "neg", "label", "s"])
    ours = encode_examples(batch).to_pylist()
    theirs = example_coder.RecordBatchToExamplesEncoder().encode(batch)
    assert len(ours) == len(theirs) == n
    for a, b in zip(ours, theirs):
        pa_, pb = _parsed(a), _parsed(b)
        assert pa_.keys() == pb.keys()
        for key in pa_:
            if isinstance(pa_[key][0], float):
                assert np.array_equal(np.array(pa_[key]), np.array(pb[key]), equal_nan=True), key
            else:
                assert pa_[key] == pb[key], key
        assert tf.train.Example.FromString(a).SerializeToString(deterministic=True) == a
    # not one value per row: left to tfx_bsl
    ragged = pa.LargeListArray.from_arrays(pa.array(np.array([0, 2, 2, 3], np.int64)), pa.array([1, 2, 3]))
    assert encode_examples(pa.RecordBatch.from_arrays([ragged], ["x"])) is None


def _scalar_batch(first, n):
    import numpy as np
    import pyarrow as pa

    offsets = pa.array(np.arange(n + 1, dtype=np.int64))
    ids = np.arange(first, first + n, dtype=np.int64)
    return pa.RecordBatch.from_arrays([pa.LargeListArray.from_arrays(offsets, pa.array(ids)),
                                       pa.LargeListArray.from_arrays(offsets, pa.array(ids.astype(np.float32)))],
                                      ["id", "x"])


def _bundle(fn, batches):
    fn.start_bundle()
    for batch in batches:
        assert list(fn.process((batch, {})) or []) == []
    return [value.value for value in fn.finish_bundle()]


def test_transformed_writer_keeps_the_order_of_batches_encoded_on_its_threads(tmp_path):
    """Batches are encoded and compressed on the writer's threads; the bundle's one file holds every
    row of every batch, in the order the batches came."""
    from components import fast_transform

    fn = fast_transform._WriteTransformedFn(None, str(tmp_path / "out"))
    fn.setup()
    try:
        paths = _bundle(fn, [_scalar_batch(k * 1000, 1000) for k in range(7)])
    finally:
        fn.teardown()
    assert len(paths) == 1 and os.listdir(tmp_path) == [os.path.basename(paths[0])]
    ids = [tf.train.Example.FromString(r.numpy()).features.feature["id"].int64_list.value[0]
           for r in tf.data.TFRecordDataset(paths[0], compression_type="GZIP")]
    assert ids == list(range(7000))


@pytest.mark.parametrize("failing,batches", [(2, 4), (3, 3)], ids=["raised-at-the-next-batch", "raised-at-the-bundle-end"])
def test_transformed_writer_raises_a_failed_encoding_and_leaves_no_file(tmp_path, monkeypatch, failing, batches):
    """A batch that fails on the encoder thread fails the bundle (at the next batch, or when the
    bundle ends) and its file, half written, is removed."""
    from components import fast_transform

    encode = fast_transform.encode_examples
    calls = []

    def flaky(record_batch):
        calls.append(record_batch.num_rows)
        if len(calls) == failing:
            raise RuntimeError("encoder failed")
        return encode(record_batch)

    monkeypatch.setattr(fast_transform, "encode_examples", flaky)
    fn = fast_transform._WriteTransformedFn(None, str(tmp_path / "out"))
    fn.setup()
    try:
        with pytest.raises(RuntimeError, match="encoder failed"):
            _bundle(fn, [_scalar_batch(k * 10, 10) for k in range(batches)])
    finally:
        fn.teardown()
    assert os.listdir(tmp_path) == []
