"""The fast path of ClickLogExampleGen: whole blocks of lines -> serialized tf.Examples, in C++.

``line_parser.LineParser`` is the reference: one line at a time in Python. This module does the same
for a block of a few MiB of complete lines with vectorised code and hands every line it cannot
vouch for back to the caller, which runs ``LineParser`` on it (``parsing.FileParser``). So the
per-line parser decides every quarantine reason, record and count; the fast path only emits the
lines that are certainly good, byte for byte what ``LineParser`` would have written.

* ``iter_blocks`` splits a binary stream into blocks of complete lines (and, for a line longer
  than a block, one oversized ``line`` item holding only its preview), with the same line numbers,
  content and lengths as ``line_parser.iter_numbered_lines``.
* ``BlockParser.parse`` runs Arrow's CSV reader (quoting, escaping and type inference off: every
  field is binary) over a block and checks each line. A line goes back to the per-line parser
  ("slow") when it is a file's first line (header, byte-order mark), empty, longer than
  ``max_line_bytes``, not UTF-8, holds a carriage return that is not its terminator, has the wrong
  number of fields (Arrow's invalid-row handler), has a label other than exactly ``0``/``1``, or an
  ``int`` field that is not ``-?[0-9]{1,18}`` (``(\\.0*)?`` after it when the column allows floats).
  Everything the per-line parser accepts differently (``+5``, `` 5``, 19-digit numbers, ``1.0``
  labels) is therefore decided by the per-line parser, not re-implemented.
* The tf.Example wire bytes are assembled column by column with Arrow compute kernels: each
  feature's map entry is a prefix that depends only on the value's length (categorical) or its
  varint length (int), joined with the value; the entries of a row are joined in name order
  (absent fields skipped), which is ``SerializeToString(deterministic=True)`` as in ``LineParser``.
"""
from __future__ import annotations

import dataclasses
import io
from typing import Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from components.click_log_example_gen import line_parser
from components.dataset_spec import DatasetSpec

# Bytes read per block. Each block is one Arrow CSV parse; bigger blocks amortise the per-column
# kernel calls, smaller ones bound memory (a block's rows exist ~3 times while it is encoded).
BLOCK_BYTES = 8 << 20

_EMPTY = pa.scalar(b"", pa.binary())
_NULL_BINARY = pa.scalar(None, pa.binary())
_EXAMPLE_TAG = pa.scalar(b"\x0a", pa.binary())  # Example.features (field 1, length-delimited)
_INT_PATTERN = r"^-?[0-9]{1,18}$"  # at most 18 digits: always within int64
_FLOAT_INT_PATTERN = r"^-?[0-9]{1,18}(\.0*)?$"  # LineParser's _FLOAT_INT_RE, same bound


# ------------------------------------------------------------------------------------------------
# Blocks of lines
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Block:
    first_line_number: int  # 1-based physical line number of the block's first line
    data: bytes  # complete lines, each ending with b"\n" (one is added after a file's last line)


@dataclasses.dataclass
class LongLine:
    """A line longer than a block: only its preview is held (as ``iter_numbered_lines`` does)."""
    line_number: int
    content: bytes  # the first PREVIEW_BYTES bytes of the line
    line_bytes: int  # the line's true length without its terminator


def iter_blocks(stream, max_line_bytes: int, block_bytes: int = BLOCK_BYTES) -> Iterator[Union[Block, LongLine]]:
    """Blocks of complete lines of a binary stream, in order; memory stays within about
    ``block_bytes + max_line_bytes`` whatever the stream holds."""
    # Past this many bytes without a newline the line is oversized, and longer than its preview:
    # from here on only its length matters.
    long_after = max(max_line_bytes + 1, line_parser.PREVIEW_BYTES + 1)
    line_number = 0  # lines yielded so far
    pending = b""  # the start of an incomplete line (no newline yet), or whole lines after a long one
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            break
        data = pending + chunk if pending else chunk
        cut = data.rfind(b"\n")
        if cut < 0:
            if len(data) <= long_after:
                pending = data
                continue
            # A long line: keep its preview, count the rest until its newline (or the end).
            preview, total, last = data[:line_parser.PREVIEW_BYTES], len(data), data[-1:]
            pending = b""
            while True:
                chunk = stream.read(block_bytes)
                if not chunk:
                    break
                i = chunk.find(b"\n")
                if i < 0:
                    total, last = total + len(chunk), chunk[-1:]
                    continue
                total += i
                if i:
                    last = chunk[i - 1:i]
                pending = chunk[i + 1:]
                break
            if last == b"\r":
                total -= 1  # CRLF: the CR belongs to the terminator
            line_number += 1
            yield LongLine(line_number, preview, total)
            continue
        block, pending = data[:cut + 1], data[cut + 1:]
        yield Block(line_number + 1, block)
        line_number += block.count(b"\n")
    if pending:
        # After a long line `pending` may hold several lines, the last one maybe unterminated.
        if not pending.endswith(b"\n"):
            pending += b"\n"
        yield Block(line_number + 1, pending)


# ------------------------------------------------------------------------------------------------
# Wire-format pieces, vectorised
# ------------------------------------------------------------------------------------------------
def varints(values: np.ndarray, present: Optional[np.ndarray] = None) -> Tuple[pa.Array, np.ndarray]:
    """uint64 values -> (binary array of their protobuf varints, null where not ``present``;
    the varint lengths)."""
    v = np.ascontiguousarray(values, dtype=np.uint64)
    n = len(v)
    lengths = np.ones(n, np.int32)
    width = 1
    for k in range(1, 10):
        more = v >= np.uint64(1 << (7 * k))
        if not more.any():
            break
        lengths += more
        width = k + 1
    groups = np.empty((n, width), np.uint8)
    for k in range(width):
        groups[:, k] = (v >> np.uint64(7 * k)).astype(np.uint8) & 0x7F
    if width > 1:
        columns = np.arange(width, dtype=np.int32)[None, :]
        groups |= np.where(columns < (lengths[:, None] - 1), 0x80, 0).astype(np.uint8)
        data = groups[columns < lengths[:, None]]
    else:
        data = groups.reshape(-1)
    offsets = np.zeros(n + 1, np.int32)
    np.cumsum(lengths, out=offsets[1:])
    validity = None
    if present is not None and not present.all():
        validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    array = pa.Array.from_buffers(pa.binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(data)])
    return array, lengths


def _bytes_entry_prefix(key_prefix: bytes, value_len: int) -> bytes:
    """Everything of a bytes feature's map entry before the value itself (see line_parser._entry)."""
    v = line_parser._varint
    inner_len = 1 + len(v(value_len)) + value_len  # BytesList: 0a len value
    feature_len = 1 + len(v(inner_len)) + inner_len  # Feature: 0a len BytesList
    entry_len = len(key_prefix) + 1 + len(v(feature_len)) + feature_len
    return b"\x0a" + v(entry_len) + key_prefix + b"\x12" + v(feature_len) + b"\x0a" + v(inner_len) + b"\x0a" + v(value_len)


def _int_entry_prefix(key_prefix: bytes, varint_len: int) -> bytes:
    """Everything of an int64 feature's map entry before the value's varint (see _int64_feature)."""
    v = line_parser._varint
    packed_len = 2 + varint_len  # Int64List: 0a len varint (packed)
    feature_len = 2 + packed_len  # Feature: 1a len Int64List
    entry_len = len(key_prefix) + 1 + len(v(feature_len)) + feature_len
    return (b"\x0a" + v(entry_len) + key_prefix + b"\x12" + v(feature_len) + b"\x1a" + v(packed_len)
            + b"\x0a" + v(varint_len))


class _PrefixTable:
    """Entry prefixes of one feature by value length, grown on demand."""

    def __init__(self, make):
        self._make = make
        self._array = pa.array([], pa.binary())

    def take(self, lengths: pa.Array) -> pa.Array:
        """The prefix of each length; null where the length is null."""
        top = pc.max(lengths).as_py() or 0
        if top >= len(self._array):
            self._array = pa.array([self._make(n) for n in range(max(top + 1, 2 * len(self._array), 64))],
                                   pa.binary())
        return pc.take(self._array, lengths)


def _bool(array) -> np.ndarray:
    """A boolean Arrow array (no nulls) as numpy."""
    return np.asarray(array.to_numpy(zero_copy_only=False), dtype=bool)


# ------------------------------------------------------------------------------------------------
# Blocks -> examples
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class BlockResult:
    num_lines: int
    slow: np.ndarray  # sorted indices (within the block) of the lines the per-line parser must take
    examples: pa.Array  # binary: serialized tf.Examples of the other lines, in line order
    negative_ints_by_field: Dict[str, int]
    underivable_by_field: Dict[str, int]
    starts: np.ndarray  # every line's first byte in the block
    ends: np.ndarray  # every line's newline position in the block

    def line(self, data: bytes, index: int, max_line_bytes: int) -> Tuple[bytes, int]:
        """(content, line_bytes) of line `index` exactly as ``iter_numbered_lines`` yields it."""
        start, end = int(self.starts[index]), int(self.ends[index])
        if end > start and data[end - 1:end] == b"\r":
            end -= 1
        total = end - start
        if total > max_line_bytes:
            end = min(end, start + line_parser.PREVIEW_BYTES)
        return data[start:end], total


class BlockParser:
    """Vectorised ``LineParser`` for one dataset spec; see the module docstring.

    ``supported(spec)`` says whether a spec can use it at all (a one-byte delimiter)."""

    def __init__(self, spec: DatasetSpec):
        if not self.supported(spec):
            raise ValueError(f"the fast path needs a one-byte ASCII delimiter, not {spec.delimiter!r}")
        self.spec = spec
        self._delimiter = spec.delimiter.encode("ascii")
        file_columns = spec.file_columns
        self._names = [f"f{i}" for i in range(len(file_columns))]  # spec names may repeat case-insensitively
        index_of = {c.name: i for i, c in enumerate(file_columns)}
        self._label_index = index_of[spec.label]
        # Columns Arrow must produce: label, ints, categoricals and derivation sources.
        needed = {self._label_index}
        plan = [(spec.label, self._label_index, "label", None)]
        for i, c in enumerate(file_columns):
            if c.kind == "int":
                plan.append((c.name, i, "int", _FLOAT_INT_PATTERN if c.allow_float_format else _INT_PATTERN))
                needed.add(i)
            elif c.kind == "categorical":
                plan.append((c.name, i, "categorical", None))
                needed.add(i)
        for c in spec.columns:
            if c.derived_from is not None:
                plan.append((c.name, index_of[c.derived_from], "derived", (line_parser.DERIVATIONS[c.derive], c.kind)))
                needed.add(index_of[c.derived_from])
        plan.sort(key=lambda p: p[0].encode("utf-8"))  # deterministic serialization: by key
        self._plan = []
        for name, index, kind, option in plan:
            key = line_parser._key_prefix(name)
            if kind == "int":
                table = _PrefixTable(lambda n, key=key: _int_entry_prefix(key, n))
            elif kind == "categorical":
                table = _PrefixTable(lambda n, key=key: _bytes_entry_prefix(key, n))
            else:
                table = None
            self._plan.append((name, index, kind, option, key, table))
        label_key = line_parser._key_prefix(spec.label)
        self._label_entries = pa.array(
            [line_parser._entry(label_key, line_parser._int64_feature(v)) for v in (0, 1)], pa.binary())
        # Derived features: source value -> encoded entry (None: cannot derive); values repeat.
        self._derived_cache: Dict[str, Dict[bytes, Optional[bytes]]] = {
            name: {} for name, _, kind, *_ in self._plan if kind == "derived"}
        self._read_options_columns = [self._names[i] for i in sorted(needed)]
        self._parse_options = dict(delimiter=spec.delimiter, quote_char=False, escape_char=False,
                                   double_quote=False, newlines_in_values=False, ignore_empty_lines=False)
        self._convert_options = pacsv.ConvertOptions(
            column_types={self._names[i]: pa.binary() for i in sorted(needed)},
            include_columns=self._read_options_columns, null_values=[""], strings_can_be_null=True,
            quoted_strings_can_be_null=True, check_utf8=False)

    @staticmethod
    def supported(spec: DatasetSpec) -> bool:
        d = spec.delimiter
        return len(d) == 1 and d.isascii() and d not in "\r\n"

    # -- line checks ------------------------------------------------------------------------------
    def _line_bounds(self, data: bytes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        arr = np.frombuffer(data, np.uint8)
        ends = np.flatnonzero(arr == 10)
        starts = np.empty(len(ends), np.int64)
        if len(ends):
            starts[0] = 0
            starts[1:] = ends[:-1] + 1
        return arr, starts, ends

    def _lines_of(self, positions: np.ndarray, ends: np.ndarray) -> np.ndarray:
        return np.unique(np.searchsorted(ends, positions))

    def parse(self, data: bytes, first_line_of_file: bool) -> BlockResult:
        """``data``: complete lines, each ending with a newline (``Block.data``)."""
        arr, starts, ends = self._line_bounds(data)
        n = len(ends)
        crlf = (ends > starts) & (arr[np.maximum(ends - 1, 0)] == 13)
        line_bytes = ends - starts - crlf
        slow = (line_bytes == 0) | (line_bytes > self.spec.max_line_bytes)
        if first_line_of_file and n:
            slow[0] = True  # the header check and the byte-order mark are LineParser's
        # Lines Arrow must not see: a carriage return that is not a terminator ends a row in Arrow.
        # They (and undecodable lines) go to the per-line parser.
        hidden = np.zeros(n, bool)
        if data.count(b"\r") != int(crlf.sum()):
            cr = np.flatnonzero(arr == 13)
            bare = cr[arr[cr + 1] != 10]
            hidden[self._lines_of(bare, ends)] = True
        if n and int(arr.max()) >= 0x80:
            for i in self._lines_of(np.flatnonzero(arr >= 0x80), ends):
                try:
                    data[starts[i]:ends[i]].decode("utf-8")
                except UnicodeDecodeError:
                    # undecodable_bytes, decided per line; hidden, as Arrow's invalid-row handler
                    # decodes a row's text as UTF-8 (and fails on such a row).
                    hidden[i] = True
        slow |= hidden
        text = data
        visible = np.flatnonzero(~hidden)
        if not len(visible):
            return self._all_slow(n, starts, ends)
        if hidden.any():
            text = b"".join(data[starts[i]:ends[i] + 1] for i in visible)
        table, rejected_rows = self._read(text, int(line_bytes.max()) + 2 if n else 1)
        rows_to_lines = visible
        if rejected_rows:
            # Arrow's row numbers are 1-based over `text`; those rows have the wrong field count.
            rejected = visible[np.asarray(rejected_rows, np.int64) - 1]
            slow[rejected] = True
            rows_to_lines = np.delete(visible, np.asarray(rejected_rows, np.int64) - 1)
        if table.num_rows != len(rows_to_lines):  # never expected: let the per-line parser decide
            return self._all_slow(n, starts, ends)
        columns = {name: table.column(name).combine_chunks() for name in table.column_names}
        ok = ~slow[rows_to_lines]
        ok, label_is_one = self._check_label(columns, ok)
        int_values = {}
        for name, index, kind, option, _, _ in self._plan:
            if kind == "int":
                ok, int_values[name] = self._check_int(columns[self._names[index]], option, ok)
        slow[rows_to_lines[~ok]] = True
        keep = pa.array(ok)
        if not ok.all():
            columns = {k: v.filter(keep) for k, v in columns.items()}
            label_is_one = label_is_one[ok]
            int_values = {k: (v[0][ok], v[1][ok]) for k, v in int_values.items()}
        examples, negatives, underivable = self._encode(columns, label_is_one, int_values, int(ok.sum()))
        return BlockResult(n, np.flatnonzero(slow), examples, negatives, underivable, starts, ends)

    def _all_slow(self, n, starts, ends) -> BlockResult:
        return BlockResult(n, np.arange(n), pa.array([], pa.binary()), {}, {}, starts, ends)

    def _read(self, text: bytes, longest_line: int):
        rejected: List[int] = []

        def on_invalid_row(row):
            rejected.append(row.number)
            return "skip"

        # The streaming reader, not read_csv: on Python 3.10 read_csv walks the garbage collector's
        # referrers on every call (pyarrow's SignalStopHandler), ~20 ms in a worker with TF loaded.
        table = pacsv.open_csv(
            io.BytesIO(text),
            read_options=pacsv.ReadOptions(column_names=self._names, use_threads=False,
                                           block_size=max(len(text), longest_line) + 1),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid_row, **self._parse_options),
            convert_options=self._convert_options).read_all()
        return table, rejected

    def _check_label(self, columns, ok):
        label = columns[self._names[self._label_index]]
        is_one = pc.fill_null(pc.equal(label, pa.scalar(b"1", pa.binary())), False)
        is_zero = pc.fill_null(pc.equal(label, pa.scalar(b"0", pa.binary())), False)
        is_one = _bool(is_one)
        return ok & (is_one | _bool(is_zero)), is_one

    def _check_int(self, column, pattern, ok):
        """-> (ok, (values as int64 with 0 for missing, present mask))"""
        present = _bool(column.is_valid())
        strict = _bool(pc.fill_null(pc.match_substring_regex(column, pattern), True))
        ok = ok & strict
        text = pc.if_else(pa.array(strict & present), column, _NULL_BINARY)
        if pattern == _FLOAT_INT_PATTERN:
            text = pc.replace_substring_regex(text, r"\.0*$", "")
        values = pc.cast(pc.cast(text, pa.string()), pa.int64())
        return ok, (np.asarray(pc.fill_null(values, 0).to_numpy(zero_copy_only=False), np.int64), present)

    # -- encoding ---------------------------------------------------------------------------------
    def _encode(self, columns, label_is_one, int_values, n):
        if n == 0:
            return pa.array([], pa.binary()), {}, {}
        pieces: List[pa.Array] = []
        negatives: Dict[str, int] = {}
        underivable: Dict[str, int] = {}
        # Per feature, in key order: the entry's prefix and its value, both null when the feature is
        # absent; one join of all of them (nulls skipped) is the Features message.
        for name, index, kind, option, key, table in self._plan:
            if kind == "label":
                pieces.append(pc.take(self._label_entries, pa.array(label_is_one.astype(np.int8))))
                continue
            if kind == "int":
                values, present = int_values[name]
                # two's complement, as _int64_feature
                varint, lengths = varints(values.astype(np.uint64), present)
                pieces.append(table.take(pa.array(lengths, mask=~present)))
                pieces.append(varint)
                count = int(np.count_nonzero(present & (values < 0)))
                if count:
                    negatives[name] = count
                continue
            column = columns[self._names[index]]
            if kind == "categorical":
                pieces.append(table.take(pc.binary_length(column)))
                pieces.append(column)
            else:  # derived: computed once per distinct source value
                entries, count = self._derive(name, key, option, column)
                pieces.append(entries)
                if count:
                    underivable[name] = count
        features = pc.binary_join_element_wise(*pieces, _EMPTY, null_handling="skip")
        lengths = np.asarray(pc.binary_length(features).to_numpy(zero_copy_only=False), np.uint64)
        length_varints, _ = varints(lengths)
        examples = pc.binary_join_element_wise(_EXAMPLE_TAG, length_varints, features, _EMPTY)
        return examples, negatives, underivable

    def _derive(self, name, key, option, column):
        derive, kind = option
        cache = self._derived_cache[name]
        encoded = column.dictionary_encode()
        entries = []
        for value in encoded.dictionary.to_pylist():
            if value not in cache:
                if len(cache) >= line_parser._CACHE_ENTRIES_PER_FIELD:
                    cache.clear()
                derived = derive(value.decode("utf-8"))
                cache[value] = None if derived is None else line_parser._entry(
                    key, line_parser._int64_feature(int(derived)) if kind == "int"
                    else line_parser._bytes_feature(derived.encode("utf-8")))
            entries.append(cache[value])
        result = pc.take(pa.array(entries, pa.binary()), encoded.indices)
        # Present source, no derived value: underivable (an empty source is just missing).
        count = int(np.count_nonzero(_bool(column.is_valid()) & ~_bool(result.is_valid())))
        return result, count
