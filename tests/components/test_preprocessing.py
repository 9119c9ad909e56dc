"""preprocessing_fn on real click-log samples: parsed by the ExampleGen's own line parser, read
with the curated schema, transformed by TF Transform (Beam, in memory)."""
import dataclasses
import json
import os
import tempfile

import numpy as np
import pytest

from components.click_log_example_gen.line_parser import LineParser, ParsedRow
from components.dataset_spec import load_spec
from components.preprocessing import LABEL_KEY, bucket_fields, preprocessing_fn, vocab_fields
from components.schema import curated_schema

SAMPLES = {
    "criteo": "criteo/wide-resdnn/train.csv",
    "criteo-kaggle": "criteo/kaggle-2014-criteo/tr.rx.csv",
    "avazu": "avazu/wide-resdnn/train.csv",
}


def _examples(spec, path, limit=3000):
    parser = LineParser(spec)
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if spec.header:
        lines = lines[1:]
    for line in lines[:limit]:
        parsed = parser.parse(line)
        assert isinstance(parsed, ParsedRow), parsed
        out.append(parsed.example)
    return out


def _tokens(spec, serialized):
    """The vocabulary's ``<field>\\x1f<value>`` tokens of every row, as preprocessing_fn makes them."""
    import tensorflow as tf
    for s in serialized:
        ex = tf.train.Example.FromString(s)
        for f in vocab_fields(spec):
            v = ex.features.feature[f].bytes_list.value
            yield f.encode() + b"\x1f" + (v[0] if v else b"__MISSING__")


def _transform(spec, serialized):
    import apache_beam as beam
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata
    from tfx_bsl.public import tfxio

    schema = curated_schema(spec)
    source = tfxio.TFExampleBeamRecord(physical_format="inmem", telemetry_descriptors=["test"], schema=schema,
                                       raw_record_column_name=None)
    out_dir = tempfile.mkdtemp()
    with beam.Pipeline(argv=["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        with tft_beam.Context(temp_dir=tempfile.mkdtemp()):
            raw = p | beam.Create(serialized) | source.BeamSource()
            (data, _), transform_fn = (raw, source.TensorAdapterConfig()) | tft_beam.AnalyzeAndTransformDataset(
                lambda inputs: preprocessing_fn(inputs, {"dataset_spec": spec.to_json()}))
            _ = transform_fn | tft_beam.WriteTransformFn(out_dir)
            _ = (data | beam.Map(lambda row: json.dumps({k: np.asarray(v).item() for k, v in row.items()}))
                 | beam.io.WriteToText(os.path.join(out_dir, "rows"), shard_name_template=""))
    features = {}
    with open(os.path.join(out_dir, "rows")) as f:
        for line in f:
            for k, v in json.loads(line).items():
                features.setdefault(k, []).append(v)
    return features, out_dir


@pytest.fixture(scope="module")
def transformed_sample():
    """(spec, serialized, features, out_dir) of a sample's first 3,000 rows at its spec: one TF Transform
    run per sample and module (each ~30-60 s), shared by the tests that only read it."""
    cache = {}

    def get(fmt, shared_data):
        if fmt not in cache:
            spec = load_spec(fmt)
            serialized = _examples(spec, os.path.join(shared_data, SAMPLES[fmt]))
            cache[fmt] = (spec, serialized) + _transform(spec, serialized)
        return cache[fmt]
    return get


@pytest.mark.parametrize("fmt", sorted(SAMPLES))
def test_real_sample_transforms_to_typed_ids_and_floats(fmt, shared_data, transformed_sample):
    import tensorflow_transform as tft
    spec, serialized, features, out_dir = transformed_sample(fmt, shared_data)
    n = len(serialized)
    assert all(len(v) == n for v in features.values())  # nothing dropped
    labels = np.array(features[LABEL_KEY]).ravel()
    assert set(labels) <= {0, 1} and 0 < labels.mean() < 1
    for name in spec.int_columns:
        x = np.array(features[name], dtype=np.float64).ravel()
        assert np.all(np.isfinite(x)) and x.min() >= 0.0  # log1p of clipped counts
    vocab_size = tft.TFTransformOutput(out_dir).vocabulary_size_by_name("categorical")
    for name in vocab_fields(spec):
        ids = np.array(features[name]).ravel()
        assert ids.min() >= -1 and ids.max() < vocab_size, name  # -1: under the frequency threshold
    for name in spec.categorical_columns:
        if spec.column(name).encoding == "hash":
            ids = np.array(features[name]).ravel()
            assert 0 <= ids.min() and ids.max() < spec.column(name).hash_buckets


def test_ids_are_per_field_and_frequency_thresholded(shared_data, transformed_sample):
    import tensorflow_transform as tft
    spec, serialized, _, out_dir = transformed_sample("criteo", shared_data)
    path = tft.TFTransformOutput(out_dir).vocabulary_file_by_name("categorical")
    vocab = open(path, "rb").read().split(b"\n")
    # The same raw value in two fields is two tokens, hence two ids.
    fields = {line.split(b"\x1f", 1)[0] for line in vocab if line}
    assert fields <= {f.encode() for f in vocab_fields(spec)} and len(fields) > 10
    import collections
    counts = collections.Counter()
    for s in serialized:
        import tensorflow as tf
        ex = tf.train.Example.FromString(s)
        for f in vocab_fields(spec):
            v = ex.features.feature[f].bytes_list.value
            counts[f.encode() + b"\x1f" + (v[0] if v else b"__MISSING__")] += 1
    in_vocab = {line for line in vocab if line}
    assert in_vocab == {t for t, c in counts.items() if c >= spec.frequency_threshold}


def test_quantile_buckets_when_asked(shared_data):
    spec = dataclasses.replace(load_spec("criteo"), quantile_buckets=4)
    serialized = _examples(spec, os.path.join(shared_data, SAMPLES["criteo"]), limit=1500)
    features, _ = _transform(spec, serialized)
    spread = 0
    for name, field in zip(bucket_fields(spec), spec.int_columns):
        ids = np.array(features[name]).ravel()
        values = np.array(features[field]).ravel()
        assert 0 <= ids.min() and ids.max() < 4, name
        order = np.argsort(values, kind="stable")
        assert np.all(np.diff(ids[order]) >= 0), f"{name} is not monotone in {field}"
        spread += len(set(ids)) >= 3
    assert spread >= 6  # fields that are mostly empty (I12) fall into one bucket; most do not


@pytest.fixture(scope="module")
def plain_vocabulary_reference():
    """`_transform` with ``vocabulary_counter: tft`` and TF Transform's plain unweighted vocabulary:
    the reference of the numpy counter, computed once for the parametrizations that share its
    inputs (the tft counter does not use the numpy counter's fingerprints)."""
    from unittest import mock

    from components import preprocessing
    cache = {}

    def get(spec, serialized):
        key = (spec.to_json(), tuple(serialized))
        if key not in cache:
            original = preprocessing.tft.vocabulary

            def unweighted(x, weights=None, **kwargs):
                assert weights is not None
                return original(x, **kwargs)

            with mock.patch.object(preprocessing.tft, "vocabulary", unweighted):
                cache[key] = _transform(dataclasses.replace(spec, vocabulary_counter="tft"), serialized)
        return cache[key]
    return get


@pytest.mark.parametrize("fingerprint_buckets", [None, 7], ids=["farmhash64", "7-fingerprints-all-colliding"])
def test_numpy_counted_vocabulary_equals_the_plain_unweighted_one(shared_data, fingerprint_buckets, monkeypatch,
                                                                   plain_vocabulary_reference):
    """`vocabulary_counter: numpy` (components/frequent_values.py, issue #18) writes the vocabulary
    file of TF Transform's plain unweighted vocabulary over every token, and every transformed
    feature is the same -- also when fingerprints collide all the time (7 of them), so that tokens
    are told apart by their bytes."""
    import tensorflow_transform as tft
    from components import frequent_values, preprocessing

    spec = dataclasses.replace(load_spec("criteo"), vocabulary_counter="numpy")
    serialized = _examples(spec, os.path.join(shared_data, SAMPLES["criteo"]), limit=2500)
    if fingerprint_buckets:
        monkeypatch.setattr(frequent_values, "FINGERPRINT_BUCKETS", fingerprint_buckets)
    merges = []
    merge = frequent_values.TokenCounts.merge.__func__

    def counting(cls, parts):
        out = merge(cls, parts)
        merges.append((sum(len(p) for p in parts), len(out), len(set(out.keys.tolist()))))
        return out

    monkeypatch.setattr(frequent_values.TokenCounts, "merge", classmethod(counting))
    features, out_dir = _transform(spec, serialized)
    reference, reference_dir = plain_vocabulary_reference(spec, serialized)
    # Ids exactly; floats (log1p of the same ints) to float32 round-off, which depends on the CPU's
    # kernels (the two runs may take scalar or vectorised paths).
    assert sorted(features) == sorted(reference)
    for name in sorted(features):
        got, want = np.asarray(features[name]), np.asarray(reference[name])
        if got.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=0, err_msg=name)
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)

    def vocabulary(path):
        with open(tft.TFTransformOutput(path).vocabulary_file_by_name(preprocessing.VOCABULARY_NAME), "rb") as f:
            return f.read()

    assert vocabulary(out_dir) == vocabulary(reference_dir) and vocabulary(out_dir).count(b"\n") > 100
    # The numpy counter did the counting: every distinct token once in its output, and with 7
    # fingerprints thousands of distinct tokens shared them.
    assert merges
    entries, distinct, keys = merges[-1]
    assert distinct == len({t for t in _tokens(spec, serialized)})
    assert (keys <= fingerprint_buckets < distinct) if fingerprint_buckets else keys == distinct


def test_dense_columns_fill_missing_values_and_reject_what_is_not_one_value_a_row():
    import tensorflow as tf
    from components.preprocessing import _dense_columns

    def sparse(rows, values, batch, width=1):
        return tf.SparseTensor([[r, 0] for r in rows] or tf.zeros([0, 2], tf.int64),
                               tf.constant(values, tf.string if values and isinstance(values[0], bytes) else tf.int64),
                               [batch, width])

    a, b, c = _dense_columns([sparse([0, 2], [5, 7], 3), sparse([1], [9], 3), sparse([], [], 3, width=0)], 0)
    assert [a.numpy().tolist(), b.numpy().tolist(), c.numpy().tolist()] == [[5, 0, 7], [0, 9, 0], [0, 0, 0]]
    (s,) = _dense_columns([sparse([1], [b"x"], 2)], b"__MISSING__")
    assert s.numpy().tolist() == [b"__MISSING__", b"x"]
    # A second value in a row (a malformed example or serving request) is an error, not dropped.
    two = tf.SparseTensor([[0, 0], [0, 1]], tf.constant([1, 2], tf.int64), [1, 2])
    with pytest.raises(tf.errors.InvalidArgumentError):
        _dense_columns([two], 0)
    # Features of different batch sizes (a bad serving request) keep them: the model then rejects
    # the request, where padding them to one size would have scored it.
    short, long_ = _dense_columns([sparse([0], [1], 1), sparse([0, 1], [1, 2], 2)], 0)
    assert [short.numpy().tolist(), long_.numpy().tolist()] == [[1], [1, 2]]


@pytest.mark.parametrize("fmt", ["criteo", "avazu"])
def test_transform_graph_stays_small(fmt):
    """TF Transform traces preprocessing_fn seven times a run, saves it twice and loads it three
    times; serving runs it on every request. Its size is most of Transform's fixed cost: 1,095 ops for
    Criteo's 40 features (746 for Avazu's 25) when each feature took ~11 ops to make dense, 665 (458) now."""
    import functools

    import tensorflow as tf
    from tensorflow_transform import impl_helper
    from tensorflow_transform.tf_metadata import schema_utils

    spec = load_spec(fmt)
    specs = impl_helper.get_type_specs_from_feature_specs(
        schema_utils.schema_as_feature_spec(curated_schema(spec)).feature_spec)
    with tf.Graph().as_default():
        graph, _, _ = impl_helper.trace_preprocessing_function(
            functools.partial(preprocessing_fn, custom_config={"dataset_spec": spec.to_json()}), specs,
            use_tf_compat_v1=False)
    # Placeholders and Identities are TF Transform's own: 7 per sparse input feature.
    assert len(graph.get_operations()) <= 20 * len(specs), (len(graph.get_operations()), len(specs))
