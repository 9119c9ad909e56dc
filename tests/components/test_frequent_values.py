"""The numpy vocabulary counter (components/frequent_values.py); its equality with tft.vocabulary
inside TF Transform is tested in test_preprocessing.py."""
import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that

from components import frequent_values
from components.frequent_values import TokenCounts, TokenCountsFn


def _reference(batches, threshold):
    """tft.vocabulary's order: count descending, then token descending."""
    totals = {}
    for _, tokens, counts in batches:
        for t, c in zip(tokens.tolist(), counts.tolist()):
            totals[t] = totals.get(t, 0) + c
    lines = [t for c, t in sorted(((c, t) for t, c in totals.items() if c >= threshold), reverse=True)]
    return lines or [frequent_values.EMPTY_VOCABULARY_LINE]


def _batches(seed, n_batches=40, fingerprint_buckets=None):
    """Batches of distinct tokens with counts, as the graph hands them over; with
    `fingerprint_buckets` the fingerprints collide."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        ids = np.unique(rng.zipf(1.3, size=300) + rng.integers(0, 2 ** 40) * (rng.random() < 0.1))
        tokens = np.array([b"C%d\x1f%x" % (i % 3, i) for i in ids.tolist()], dtype=object)
        keys = frequent_values.fingerprints(tf.constant(tokens)).numpy()
        if fingerprint_buckets:
            keys = keys % fingerprint_buckets
        out.append((keys, tokens, rng.integers(1, 4, size=len(ids)).astype(np.int64)))
    return out


@pytest.mark.parametrize("fingerprint_buckets", [None, 5], ids=["farmhash64", "5-fingerprints"])
@pytest.mark.parametrize("min_pending", [1, 50, 1 << 22], ids=["merge-every-batch", "merge-often", "merge-at-end"])
def test_counts_across_batches_and_accumulators(min_pending, fingerprint_buckets):
    fn = TokenCountsFn(threshold=10, min_pending=min_pending)
    batches = _batches(0, fingerprint_buckets=fingerprint_buckets)
    # Three accumulators, as Beam's combiner lifting makes them, merged (one of them compacted first).
    accumulators = []
    for part in (batches[:10], batches[10:25], batches[25:]):
        acc = fn.create_accumulator()
        for batch in part:
            acc = fn.add_input(acc, batch)
        accumulators.append(acc)
    accumulators[1] = fn.compact(accumulators[1])
    got = fn.extract_output(fn.merge_accumulators(accumulators))
    want = _reference(batches, 10)
    assert got == want and 5 < len(want) < 1000
    # Every count tied with another is ordered by token, descending, as tft.vocabulary orders it.
    assert len(set(want)) == len(want)


def test_merge_sums_equal_tokens_and_keeps_colliding_ones_apart():
    import pyarrow as pa

    part = TokenCounts(np.array([7, 7, 3, 7]), pa.array([b"a", b"b", b"c", b"a"], pa.large_binary()),
                       np.array([1, 2, 3, 4]))
    merged = TokenCounts.merge([part, TokenCounts.empty(), part])
    got = sorted(zip(merged.keys.tolist(), merged.tokens.to_pylist(), merged.counts.tolist()))
    assert got == [(3, b"c", 6), (7, b"a", 10), (7, b"b", 4)]
    assert np.all(np.diff(merged.keys) >= 0)


def test_no_token_over_the_threshold_gives_tft_vocabularys_dummy_line():
    fn = TokenCountsFn(threshold=2)
    assert fn.extract_output(fn.create_accumulator()) == [frequent_values.EMPTY_VOCABULARY_LINE]


def test_accumulator_survives_pickling_between_workers():
    import pickle

    fn = TokenCountsFn(threshold=3)
    batches = _batches(2, n_batches=5)
    acc = fn.create_accumulator()
    for batch in batches:
        acc = fn.add_input(acc, batch)
    acc = pickle.loads(pickle.dumps(fn.compact(acc)))
    assert fn.extract_output(acc) == _reference(batches, 3)


def test_beam_transform_writes_one_vocabulary_file(tmp_path):
    batches = _batches(1)
    analyzer = frequent_values.WriteVocabulary(threshold=5, vocab_filename="categorical")
    analyzer.base_temp_dir = str(tmp_path)
    with beam.Pipeline() as p:
        out = p | beam.Create(batches) | analyzer

        def check(elements):
            assert len(elements) == 1
            path = elements[0].item().decode()
            assert path.startswith(str(tmp_path)) and path.endswith("/categorical")
            with open(path, "rb") as f:
                assert f.read() == b"".join(line + b"\n" for line in _reference(batches, 5))
        assert_that(out, check)


def test_fingerprints_are_stable():
    tokens = tf.constant([b"C1\x1fabc", b"C2\x1fabc", b"", b"C1\x1fabc"])
    keys = frequent_values.fingerprints(tokens).numpy()
    assert keys.dtype == np.int64 and np.all(keys >= 0)
    assert keys[0] == keys[3] != keys[1]
    assert keys.tolist() == frequent_values.fingerprints(tokens).numpy().tolist()


def test_vocabulary_of_fields_writes_the_file_of_the_stacked_tokens(tmp_path):
    """Counted field by field, the vocabulary is the file of `vocabulary` over every row's tokens and
    of tft.vocabulary's: with values left out of a text vocabulary (empty tokens cannot occur, a
    prefix is never empty; line breaks can), two fields whose prefixes make equal tokens ("a" + "bc"
    and "ab" + "c"), and the threshold met only by summing across batches."""
    import apache_beam as beam
    import tensorflow_transform as tft
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import dataset_metadata, schema_utils

    rng = np.random.default_rng(0)
    pool = [b"bc", b"c", b"x", b"y\nz", b"w\r", b"", b"\x1f", b"long" * 20]
    rows = [{"f": pool[rng.integers(0, len(pool))], "g": pool[rng.integers(0, len(pool))]} for _ in range(300)]
    fields = (("f", "a"), ("g", "ab"))
    metadata = dataset_metadata.DatasetMetadata(schema_utils.schema_from_feature_spec(
        {name: tf.io.FixedLenFeature([], tf.string) for name, _ in fields}))

    def preprocessing_fn(inputs):
        values = [(prefix, inputs[name]) for name, prefix in fields]
        tokens = tf.stack([tf.constant(prefix) + v for prefix, v in values], axis=1)
        vocabularies = {
            "by_fields": frequent_values.vocabulary_of_fields(values, 12, "by_fields"),
            "stacked": frequent_values.vocabulary(tokens, 12, "stacked"),
            "tft": tft.vocabulary(tokens, frequency_threshold=12, vocab_filename="tft"),
        }
        return {name: tft.apply_vocabulary(tokens, path) for name, path in vocabularies.items()}

    out = str(tmp_path / "transform_fn")
    with beam.Pipeline(argv=["--runner=DirectRunner", "--direct_running_mode=in_memory"]) as p:
        with tft_beam.Context(temp_dir=str(tmp_path / "tmp"), desired_batch_size=7):
            data = p | beam.Create(rows)
            transform_fn = (data, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn)
            _ = transform_fn | tft_beam.WriteTransformFn(out)
    output = tft.TFTransformOutput(out)

    def lines(name):
        with open(output.vocabulary_file_by_name(name), "rb") as f:
            return f.read().split(b"\n")[:-1]

    assert lines("by_fields") == lines("stacked") == lines("tft")
    assert b"abc" in lines("by_fields")  # "a" + "bc" and "ab" + "c", counted together
    assert not any(b"\r" in line for line in lines("by_fields")) and len(lines("by_fields")) > 5
