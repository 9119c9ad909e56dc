"""components/fast_statistics.py: TFX's StatisticsGen executor reading its examples in bulk gives the
statistics of TFX's own read, and falls back to it wherever the bulk read could differ."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tfx.components.statistics_gen import executor as tfx_executor
from tfx.types import standard_artifacts, standard_component_specs
from tfx.utils import io_utils

from tensorflow_metadata.proto.v0 import schema_pb2

from components import fast_statistics
from components.example_io import BulkTFExampleRecord
from components.schema import statistics_options

SPLITS = ("train", "eval")


def _example(i, rng):
    feature = {"label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.random() < 0.3)])),
               "C1": tf.train.Feature(bytes_list=tf.train.BytesList(value=[f"v{rng.zipf(1.5) % 50}".encode()])),
               "I1": tf.train.Feature(float_list=tf.train.FloatList(value=[float(rng.exponential(3.0))]))}
    if i % 3:  # sometimes missing, as Criteo's fields are
        feature["I2"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(0, 100))]))
    return tf.train.Example(features=tf.train.Features(feature=feature))


def _examples_artifact(root, rows=600, files=2):
    rng = np.random.default_rng(7)
    for split in SPLITS:
        directory = os.path.join(root, f"Split-{split}")
        os.makedirs(directory)
        for f in range(files):
            path = os.path.join(directory, f"data_tfrecord-{f:05d}-of-{files:05d}.gz")
            with tf.io.TFRecordWriter(path, tf.io.TFRecordOptions(compression_type="GZIP")) as writer:
                for i in range(f, rows, files):
                    writer.write(_example(i, rng).SerializeToString())
    artifact = standard_artifacts.Examples()
    artifact.uri = root
    artifact.split_names = '["train", "eval"]'
    return artifact


def _schema(**types):
    schema = schema_pb2.Schema()
    for name, kind in types.items():
        schema.feature.add(name=name, type=kind)
    return schema


FULL_SCHEMA = dict(label=schema_pb2.INT, C1=schema_pb2.BYTES, I1=schema_pb2.FLOAT, I2=schema_pb2.INT)


def _schema_artifact(root, schema):
    os.makedirs(root)
    io_utils.write_pbtxt_file(os.path.join(root, "schema.pbtxt"), schema)
    artifact = standard_artifacts.Schema()
    artifact.uri = root
    return artifact


def _run(executor, tmp_path, name, examples, schema=None):
    statistics = standard_artifacts.ExampleStatistics()
    statistics.uri = str(tmp_path / name)
    statistics.split_names = '["train", "eval"]'
    inputs = {standard_component_specs.EXAMPLES_KEY: [examples]}
    if schema is not None:
        inputs[standard_component_specs.SCHEMA_KEY] = [schema]
    executor.Do(inputs, {standard_component_specs.STATISTICS_KEY: [statistics]},
                {standard_component_specs.STATS_OPTIONS_JSON_KEY: statistics_options().to_json(),
                 standard_component_specs.EXCLUDE_SPLITS_KEY: "[]"})
    return {split: tfdv.load_stats_binary(os.path.join(statistics.uri, f"Split-{split}", "FeatureStats.pb"))
            for split in SPLITS}


def _comparable(feature):
    """A feature's statistics without what depends on the order values arrive in: the top values and
    quantiles of the sketches (which are exact on data this small, so compared as sets), float sums."""
    feature = type(feature).FromString(feature.SerializeToString())
    tops = None
    if feature.HasField("string_stats"):
        tops = sorted((v.value, v.frequency) for v in feature.string_stats.top_values)
        del feature.string_stats.top_values[:]
        feature.string_stats.ClearField("rank_histogram")
    if feature.HasField("num_stats"):
        for field in ("mean", "std_dev"):
            setattr(feature.num_stats, field, float(f"{getattr(feature.num_stats, field):.10g}"))
    return feature, tops


def test_bulk_read_gives_the_statistics_of_tfxs_read(tmp_path, monkeypatch):
    examples = _examples_artifact(str(tmp_path / "examples"))
    schema = _schema_artifact(str(tmp_path / "schema"), _schema(**FULL_SCHEMA))
    bulk_sources = []
    beam_source = BulkTFExampleRecord.BeamSource
    monkeypatch.setattr(BulkTFExampleRecord, "BeamSource",
                        lambda self, *args: bulk_sources.append(self) or beam_source(self, *args))
    bulk = _run(fast_statistics.Executor(), tmp_path, "bulk", examples, schema)
    assert len(bulk_sources) == 2  # one per split
    tfx = _run(tfx_executor.Executor(), tmp_path, "tfx", examples)
    for split in SPLITS:
        ours, theirs = bulk[split].datasets[0], tfx[split].datasets[0]
        assert ours.num_examples == theirs.num_examples == 600
        by_name = {f.path.step[0]: f for f in theirs.features}
        assert sorted(by_name) == sorted(f.path.step[0] for f in ours.features) == sorted(FULL_SCHEMA)
        for feature in ours.features:
            assert _comparable(feature) == _comparable(by_name[feature.path.step[0]]), feature.path.step[0]
    assert tfx_executor.tfxio_utils is fast_statistics.tfxio_utils  # TFX's module is restored


def _source(examples, schema):
    return fast_statistics._BulkSplitTFXIO(schema).get_split_tfxio([examples], "train", ["test"])


def test_the_bulk_read_only_where_the_schema_describes_the_examples(tmp_path):
    examples = _examples_artifact(str(tmp_path / "examples"), rows=30)
    assert isinstance(_source(examples, _schema(**FULL_SCHEMA)), BulkTFExampleRecord)
    # A feature the schema lacks would be dropped, one of another type would fail to parse: both
    # must reach the statistics (and ExampleValidator) as they are.
    lacking = dict(FULL_SCHEMA)
    del lacking["C1"]
    assert type(_source(examples, _schema(**lacking))) is fast_statistics.TFExampleRecord
    assert type(_source(examples, _schema(**dict(FULL_SCHEMA, I1=schema_pb2.INT)))) is fast_statistics.TFExampleRecord


@pytest.mark.parametrize("types, expected", [
    (FULL_SCHEMA, True),
    (dict(FULL_SCHEMA, extra=schema_pb2.INT), True),  # in the schema, not in this example: fine
    ({k: v for k, v in FULL_SCHEMA.items() if k != "I2"}, False),
    (dict(FULL_SCHEMA, C1=schema_pb2.INT), False),
])
def test_schema_describes(types, expected):
    example = _example(1, np.random.default_rng(0))
    assert fast_statistics.schema_describes(_schema(**types), example) is expected


def test_without_a_schema_it_is_tfxs_executor(tmp_path):
    examples = _examples_artifact(str(tmp_path / "examples"), rows=40)
    result = _run(fast_statistics.Executor(), tmp_path, "plain", examples)
    assert result["train"].datasets[0].num_examples == 40


def test_a_column_that_vanished_from_a_day_is_still_an_anomaly(tmp_path):
    """The bulk read decodes every schema feature, so a column missing from the whole day arrives as a
    feature with no values instead of no feature: ExampleValidator's check must still flag it."""
    examples = _examples_artifact(str(tmp_path / "examples"), rows=60)
    schema = _schema(**dict(FULL_SCHEMA, C9=schema_pb2.BYTES))  # in the schema, in no example
    for feature in schema.feature:
        feature.presence.min_count = 1  # as the curated schema has it
    schema_artifact = _schema_artifact(str(tmp_path / "schema"), schema)
    bulk = _run(fast_statistics.Executor(), tmp_path, "bulk", examples, schema_artifact)
    tfx = _run(tfx_executor.Executor(), tmp_path, "tfx", examples)
    for statistics in (bulk["train"], tfx["train"]):
        anomalies = tfdv.validate_statistics(statistics, schema)
        assert list(anomalies.anomaly_info) == ["C9"]
