"""Which tokens can reach the vocabulary's frequency threshold: a TF Transform analyzer over 64-bit
token fingerprints, run before the vocabulary so that the vocabulary counts only those tokens.

A click log's long tail is most of its distinct values: a 10M-row day of the ``criteo-scale`` preset
has tens of millions of distinct ``<field>\\x1f<value>`` tokens, of which ~1.3M reach the threshold of
10. TF Transform's vocabulary counts every distinct token as one Beam key (a Python string in a
per-key combine), which made its analysis most of the day's Transform time and its 10 GiB peak.

Here the tokens' fingerprints are counted first, in numpy (`FingerprintCountsFn`: sorted int64 keys
and counts, merged by sorting), and only tokens whose fingerprint reaches the threshold are handed
to ``tft.vocabulary``. Exact by construction: a token's fingerprint count is at least the token's own
count, so no token that reaches the threshold is filtered out, and a token let through by a shared
fingerprint is still counted exactly by the vocabulary and dropped there (tests/components/
test_preprocessing.py compares it with the plain vocabulary; so does benchmarks/ingest_bench.py).

Experimental and off by default (the spec's ``vocabulary_prefilter``): the same vocabulary in every
test and at 1M rows, but on a 10M-row day it lost 23% of the vocabulary's lines
(benchmarks/results/ingest_vocabulary.txt): the fingerprint counts are exact there too, the loss is
in the second analysis phase (docs/ingestion.md), which also keeps the day in memory.
"""
from __future__ import annotations

from typing import Tuple

import apache_beam as beam
import numpy as np
import tensorflow as tf

# tf.strings.to_hash_bucket_fast(x, FINGERPRINT_BUCKETS): FarmHash64 of the token modulo this, so
# fingerprints lie in [0, FINGERPRINT_BUCKETS) and FINGERPRINT_BUCKETS itself is never one.
FINGERPRINT_BUCKETS = 2 ** 63 - 1
_SENTINEL = FINGERPRINT_BUCKETS


def fingerprints(tokens: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_fast(tokens, FINGERPRINT_BUCKETS)


def _merge(keys: np.ndarray, counts: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Sum `counts` per key: (sorted distinct keys, their counts)."""
    if len(keys) == 0:
        return keys.astype(np.int64), counts.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, counts = keys[order], counts[order]
    starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
    return keys[starts], np.add.reduceat(counts, starts)


class FingerprintCountsFn(beam.CombineFn):
    """Counts per int64 fingerprint over batches of ``(fingerprints, counts)``; outputs the sorted
    fingerprints whose count reaches `threshold`.

    The accumulator is ``[keys, counts, pending]``: sorted distinct keys with their counts, and the
    batches not merged in yet. Pending batches are merged once they hold as many entries as the
    merged part (at least `min_pending`), so each entry is sorted O(log) times in all, not once per
    batch.
    """

    def __init__(self, threshold: int, min_pending: int = 1 << 22):
        self._threshold = int(threshold)
        self._min_pending = int(min_pending)

    def create_accumulator(self):
        return [np.zeros(0, np.int64), np.zeros(0, np.int64), []]

    def _compact(self, acc):
        keys, counts, pending = acc
        if pending:
            keys, counts = _merge(np.concatenate([keys] + [k for k, _ in pending]),
                                  np.concatenate([counts] + [c for _, c in pending]))
        return [keys, counts, []]

    def add_input(self, acc, batch):
        keys, counts = batch
        acc[2].append((np.asarray(keys, np.int64).reshape(-1), np.asarray(counts, np.int64).reshape(-1)))
        if sum(len(k) for k, _ in acc[2]) >= max(self._min_pending, len(acc[0])):
            acc = self._compact(acc)
        return acc

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        keys = [a[0] for a in accumulators] + [k for a in accumulators for k, _ in a[2]]
        counts = [a[1] for a in accumulators] + [c for a in accumulators for _, c in a[2]]
        return [*_merge(np.concatenate(keys), np.concatenate(counts)), []]

    def compact(self, acc):
        return self._compact(acc)

    def extract_output(self, acc):
        keys, counts, _ = self._compact(acc)
        # The sentinel, which no fingerprint equals, keeps the array non-empty for the lookup.
        return np.append(keys[counts >= self._threshold], _SENTINEL).astype(np.int64)


class FrequentFingerprints(beam.PTransform):
    """TF Transform analyzer body: batches of (fingerprints, counts) -> one element, the sorted array
    of the fingerprints counted at least `threshold` times, then the sentinel."""

    def __init__(self, threshold: int):
        super().__init__()
        self._threshold = int(threshold)

    def expand(self, pcoll):
        return pcoll | "CountFingerprints" >> beam.CombineGlobally(FingerprintCountsFn(self._threshold))


def frequent_tokens(tokens: tf.Tensor, threshold: int) -> tf.Tensor:
    """The tokens of `tokens` (any shape) whose fingerprint occurs at least `threshold` times in the
    whole dataset, flattened: a superset of the tokens that occur `threshold` times themselves."""
    import tensorflow_transform as tft

    flat = tf.reshape(tokens, [-1])
    keys = fingerprints(flat)
    # Each batch's duplicates (the frequent head) leave the graph once, with their count.
    unique, _, counts = tf.unique_with_counts(keys)
    frequent, = tft.experimental.ptransform_analyzer(
        [unique, tf.cast(counts, tf.int64)], FrequentFingerprints(threshold),
        output_dtypes=[tf.int64], output_shapes=[[None]], name="frequent_fingerprints")
    position = tf.minimum(tf.searchsorted(frequent, keys), tf.size(frequent, out_type=tf.int32) - 1)
    return tf.boolean_mask(flat, tf.equal(tf.gather(frequent, position), keys))
