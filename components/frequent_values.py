"""The categorical vocabulary counted in numpy: one TF Transform analyzer that counts every token and
writes the vocabulary file of the tokens that reach the frequency threshold, in one analysis pass.

A click log's long tail is most of its distinct values: a 10M-row day of the ``criteo-scale`` preset
has ~11M distinct ``<field>\\x1f<value>`` tokens, of which ~1.3M reach the threshold of 10. TF
Transform's ``tft.vocabulary`` counts every distinct token as one Beam key (a Python string in a
per-key combine), which made its analysis most of the day's Transform time and its 10 GiB peak.

Here each batch's distinct tokens and their counts (``tf.unique_with_counts`` in the graph) go to one
combiner (`TokenCountsFn`) that keeps them as columns: 64-bit fingerprints and counts as numpy arrays,
the tokens as one Arrow binary array, sorted by fingerprint and merged by sorting. Tokens whose
fingerprints collide are told apart by their bytes, so the counts are exact. The output is the file
``tft.vocabulary`` writes for the same input (``frequency_threshold``, text format): the tokens counted
at least the threshold, by count descending, ties by token descending, empty tokens and tokens with a
line break left out, a dummy line when none is left (tests compare the two files and the transformed
features).

An earlier design counted fingerprints first and handed ``tft.vocabulary`` only the tokens that could
reach the threshold: two analysis phases, between which Beam's local runner kept the whole day in
memory, and on a 10M-row day the second phase lost vocabulary lines (docs/ingestion.md).
"""
from __future__ import annotations

import os
import uuid
from typing import List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
import tensorflow_transform as tft
import tensorflow_transform.beam as tft_beam

# tf.strings.to_hash_bucket_fast(x, FINGERPRINT_BUCKETS): FarmHash64 of the token modulo this.
FINGERPRINT_BUCKETS = 2 ** 63 - 1
# What tft.vocabulary writes when no token reaches the threshold (its lookup tables need a line).
EMPTY_VOCABULARY_LINE = tft.analyzers.get_empy_vocabulary_dummy_value(tf.string)[1]
_TOKENS = pa.large_binary()


def fingerprints(tokens: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_fast(tokens, FINGERPRINT_BUCKETS)


def _equal_to_previous(keys: np.ndarray, tokens: pa.Array):
    """Per entry after the first: whether its key, and whether its token, equal the entry before."""
    return keys[1:] == keys[:-1], pc.equal(tokens.slice(1), tokens.slice(0, len(tokens) - 1)).to_numpy(
        zero_copy_only=False)


class TokenCounts:
    """Distinct tokens with their counts: `keys` (fingerprints, sorted), `tokens` (Arrow binary,
    aligned), `counts` (int64). Equal fingerprints with different tokens may sit side by side."""

    __slots__ = ("keys", "tokens", "counts")

    def __init__(self, keys: np.ndarray, tokens: pa.Array, counts: np.ndarray):
        self.keys, self.tokens, self.counts = keys, tokens, counts

    @classmethod
    def empty(cls) -> "TokenCounts":
        return cls(np.zeros(0, np.int64), pa.array([], _TOKENS), np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.keys)

    def __reduce__(self):
        return TokenCounts, (self.keys, self.tokens, self.counts)

    @classmethod
    def merge(cls, parts: List["TokenCounts"]) -> "TokenCounts":
        """Sums the counts of equal tokens over `parts` (each may hold a token more than once)."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        keys = np.concatenate([p.keys for p in parts])
        tokens = pa.concat_arrays([p.tokens for p in parts])
        counts = np.concatenate([p.counts for p in parts])
        order = np.argsort(keys)
        keys, counts = keys[order], counts[order]
        tokens = tokens.take(pa.array(order))
        same_key, same_token = _equal_to_previous(keys, tokens)
        if np.any(same_key & ~same_token):
            # A fingerprint collision (~n^2 / 2^64 for n distinct tokens): sort by the bytes as well
            # so that each token's entries are adjacent.
            order = pc.sort_indices(pa.table({"k": keys, "t": tokens}),
                                    sort_keys=[("k", "ascending"), ("t", "ascending")]).to_numpy()
            keys, counts = keys[order], counts[order]
            tokens = tokens.take(pa.array(order))
            same_key, same_token = _equal_to_previous(keys, tokens)
        starts = np.flatnonzero(np.concatenate([[True], ~(same_key & same_token)]))
        return cls(keys[starts], tokens.take(pa.array(starts)), np.add.reduceat(counts, starts))


class TokenCountsFn(beam.CombineFn):
    """Counts tokens over batches of ``(fingerprints, tokens, counts)``; outputs the vocabulary's
    lines (tokens counted at least `threshold` times, most frequent first, ties by token descending).

    The accumulator is ``[merged, pending]``: a `TokenCounts` and the batches not merged in yet.
    Pending batches are merged once they hold as many entries as the merged part (at least
    `min_pending`), so each entry is sorted O(log) times in all, not once per batch.
    """

    def __init__(self, threshold: int, min_pending: int = 1 << 22):
        self._threshold = int(threshold)
        self._min_pending = int(min_pending)

    def create_accumulator(self):
        return [TokenCounts.empty(), []]

    def _compact(self, acc):
        merged, pending = acc
        return [TokenCounts.merge([merged] + pending) if pending else merged, []]

    def add_input(self, acc, batch):
        keys, tokens, counts = batch
        tokens = np.asarray(tokens, dtype=object).reshape(-1)
        acc[1].append(TokenCounts(np.asarray(keys, np.int64).reshape(-1), pa.array(tokens, _TOKENS),
                                  np.asarray(counts, np.int64).reshape(-1)))
        if sum(len(p) for p in acc[1]) >= max(self._min_pending, len(acc[0])):
            acc = self._compact(acc)
        return acc

    def merge_accumulators(self, accumulators):
        return [TokenCounts.merge([part for merged, pending in accumulators for part in [merged] + pending]), []]

    def compact(self, acc):
        return self._compact(acc)

    def extract_output(self, acc) -> List[bytes]:
        merged = self._compact(acc)[0]
        frequent = np.flatnonzero(merged.counts >= self._threshold)
        table = pa.table({"count": merged.counts[frequent], "token": merged.tokens.take(pa.array(frequent))})
        order = pc.sort_indices(table, sort_keys=[("count", "descending"), ("token", "descending")])
        return table.column("token").take(order).to_pylist() or [EMPTY_VOCABULARY_LINE]


def _write_lines(lines: List[bytes], path: str) -> np.ndarray:
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in lines))
    return np.array(path.encode())


class WriteVocabulary(tft_beam.experimental.PTransformAnalyzer):
    """TF Transform analyzer body: batches of (fingerprints, tokens, counts) -> one element, the path
    of the vocabulary file written under the analysis's temp dir as `vocab_filename`."""

    def __init__(self, threshold: int, vocab_filename: str):
        super().__init__()
        self._threshold = int(threshold)
        self._vocab_filename = vocab_filename

    def expand(self, pcoll):
        path = os.path.join(self.base_temp_dir, uuid.uuid4().hex, self._vocab_filename)
        return (pcoll
                | "CountTokens" >> beam.CombineGlobally(TokenCountsFn(self._threshold))
                | "WriteVocabulary" >> beam.Map(_write_lines, path))


def vocabulary(tokens: tf.Tensor, frequency_threshold: int, vocab_filename: str) -> tf.Tensor:
    """``tft.vocabulary(tokens, frequency_threshold=..., vocab_filename=...)`` for string `tokens` of
    any shape, counted by `TokenCountsFn`: the path of the same vocabulary file, for
    ``tft.apply_vocabulary``."""
    unique, _, counts = tf.unique_with_counts(tf.reshape(tokens, [-1]))
    return _write_vocabulary(unique, counts, frequency_threshold, vocab_filename)


def vocabulary_of_fields(fields: Sequence[Tuple[str, tf.Tensor]], frequency_threshold: int,
                         vocab_filename: str) -> tf.Tensor:
    """`vocabulary` of the tokens ``prefix + value`` of every (prefix, string values) in `fields`:
    the same file, counted field by field. Each field's distinct values are counted first and only
    those get their prefix: no token is built, hashed or matched per row. Should two fields' tokens
    be equal, their counts are summed when merged (`TokenCounts.merge`)."""
    uniques, counts = [], []
    for prefix, values in fields:
        unique, _, count = tf.unique_with_counts(values if values.shape.rank == 1 else tf.reshape(values, [-1]))
        uniques.append(tf.constant(prefix) + unique)
        counts.append(count)
    return _write_vocabulary(tf.concat(uniques, 0), tf.concat(counts, 0), frequency_threshold, vocab_filename)


def _write_vocabulary(unique: tf.Tensor, counts: tf.Tensor, frequency_threshold: int,
                      vocab_filename: str) -> tf.Tensor:
    # What tft.vocabulary leaves out of a text vocabulary: empty tokens and tokens with \n or \r.
    # Matched on the distinct tokens, not on every row's.
    regex = tft.analyzers.get_vocab_newline_characters_regex(tf.string, "text")
    keep = tf.logical_not(tf.strings.regex_full_match(unique, regex))
    unique, counts = tf.boolean_mask(unique, keep), tf.boolean_mask(counts, keep)
    path, = tft.experimental.ptransform_analyzer(
        [fingerprints(unique), unique, tf.cast(counts, tf.int64)],
        WriteVocabulary(frequency_threshold, vocab_filename),
        output_dtypes=[tf.string], output_shapes=[[]],
        output_asset_default_values=[EMPTY_VOCABULARY_LINE], name=f"vocabulary_{vocab_filename}")
    # So that TFTransformOutput.vocabulary_file_by_name(vocab_filename) finds it, as tft.vocabulary's.
    tft.analyzers.register_vocab(vocab_filename)
    return path
