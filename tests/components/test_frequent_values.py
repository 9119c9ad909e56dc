"""The fingerprint counter behind the vocabulary's pre-filter (components/frequent_values.py); its
exactness inside TF Transform is tested in test_preprocessing.py."""
import apache_beam as beam
import numpy as np
import pytest
import tensorflow as tf
from apache_beam.testing.util import assert_that

from components import frequent_values
from components.frequent_values import FingerprintCountsFn, FrequentFingerprints


def _reference(batches, threshold):
    keys = np.concatenate([k for k, _ in batches])
    counts = np.concatenate([c for _, c in batches])
    totals = {}
    for k, c in zip(keys.tolist(), counts.tolist()):
        totals[k] = totals.get(k, 0) + c
    return sorted(k for k, c in totals.items() if c >= threshold) + [frequent_values._SENTINEL]


def _batches(seed, n_batches=40):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_batches):
        keys = np.unique(rng.zipf(1.3, size=300) + rng.integers(-2**40, 2**40) * (rng.random() < 0.1))
        out.append((keys.astype(np.int64), rng.integers(1, 4, size=len(keys)).astype(np.int64)))
    return out


@pytest.mark.parametrize("min_pending", [1, 50, 1 << 22], ids=["merge-every-batch", "merge-often", "merge-at-end"])
def test_counts_across_batches_and_accumulators(min_pending):
    fn = FingerprintCountsFn(threshold=10, min_pending=min_pending)
    batches = _batches(0)
    # Three accumulators, as Beam's combiner lifting makes them, merged (one of them compacted first).
    accumulators = []
    for part in (batches[:10], batches[10:25], batches[25:]):
        acc = fn.create_accumulator()
        for batch in part:
            acc = fn.add_input(acc, batch)
        accumulators.append(acc)
    accumulators[1] = fn.compact(accumulators[1])
    got = fn.extract_output(fn.merge_accumulators(accumulators))
    assert got.dtype == np.int64
    want = _reference(batches, 10)
    assert got.tolist() == want and 5 < len(want) < 1000


def test_no_input_gives_only_the_sentinel():
    fn = FingerprintCountsFn(threshold=2)
    assert fn.extract_output(fn.create_accumulator()).tolist() == [frequent_values._SENTINEL]


def test_beam_transform_outputs_one_sorted_array():
    batches = _batches(1)
    with beam.Pipeline() as p:
        out = p | beam.Create(batches) | FrequentFingerprints(threshold=5)

        def check(elements):
            assert len(elements) == 1
            assert elements[0].tolist() == _reference(batches, 5)
        assert_that(out, check)


def test_fingerprints_are_below_the_sentinel_and_stable():
    tokens = tf.constant([b"C1\x1fabc", b"C2\x1fabc", b"", b"C1\x1fabc"])
    keys = frequent_values.fingerprints(tokens).numpy()
    assert keys.dtype == np.int64 and np.all((keys >= 0) & (keys < frequent_values._SENTINEL))
    assert keys[0] == keys[3] != keys[1]
    assert keys.tolist() == frequent_values.fingerprints(tokens).numpy().tolist()
