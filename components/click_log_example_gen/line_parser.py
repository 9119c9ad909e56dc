"""One click-log line -> a serialized tf.Example, or the reason it is quarantined: pure Python.

* ``iter_numbered_lines`` streams a binary file object in chunks and yields ``(line_number,
  content, line_bytes)``: line numbers are 1-based physical lines (a header is line 1), the content
  excludes the ``\\n`` / ``\\r\\n`` terminator, a last line without a newline is still a line, and
  an oversized line is never held in memory beyond ``PREVIEW_BYTES``.
* ``LineParser`` turns one line into either a ``ParsedRow`` (a serialized tf.Example plus the
  fields that held negative integers) or a ``Rejection`` (one of ``QUARANTINE_REASONS`` and a
  human-readable detail).
* ``quarantine_record``: the JSON line that says why a line was rejected.

Its own module, without Beam or TensorFlow: ExampleGen's file and Beam layers (``parsing``,
``block_parsing``), batch scoring and the demo all parse lines with it, and scoring a line imports
nothing else. The tf.Example layout is the one in docs/contracts.md.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import re
from typing import Iterator, List, Optional, Tuple, Union

from components.dataset_spec import DatasetSpec

# The quarantine reasons of docs/contracts.md, in the order the parser checks them.
QUARANTINE_REASONS = (
    "oversized_line",
    "undecodable_bytes",
    "wrong_field_count",
    "bad_label",
    "non_numeric_int",
)
# How much of an oversized line a quarantine record keeps (the rest is counted, not stored).
PREVIEW_BYTES = 4096
# The most characters a record's ``line`` takes as JSON writes it. Without it the 4 KiB preview
# could grow ~6x on disk: JSON writes control characters as ``\u00NN`` and non-ASCII as ``\uNNNN``,
# and bytes that are not UTF-8 are written ``\xNN`` (``\\xNN`` in JSON).
MAX_LINE_JSON_CHARS = 2 * PREVIEW_BYTES
READ_CHUNK_BYTES = 1 << 20

UTF8_BOM = b"\xef\xbb\xbf"
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
# Whole numbers written as floats ("260.0", "1e3" is deliberately not accepted: not a count).
_FLOAT_INT_RE = re.compile(r"([+-]?[0-9]+)\.0*\Z")
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


# ------------------------------------------------------------------------------------------------
# Lines
# ------------------------------------------------------------------------------------------------
def iter_numbered_lines(stream, max_line_bytes: int,
                        chunk_bytes: int = READ_CHUNK_BYTES) -> Iterator[Tuple[int, bytes, int]]:
    """Yields ``(line_number, content, line_bytes)`` for every line of a binary stream.

    ``line_bytes`` is the length of the line without its terminator. When it exceeds
    ``max_line_bytes`` the line is oversized and ``content`` holds only its first
    ``PREVIEW_BYTES`` bytes: memory stays bounded whatever the file holds.
    """
    line_number = 0
    held: List[bytes] = []  # the start of the line being assembled across chunks
    held_bytes = 0  # bytes in `held`: at most hold_limit
    line_so_far = 0  # the line's true length so far (may exceed what `held` holds)
    last_byte = b""  # the line's last byte so far (to recognise a '\r' of a CRLF terminator)
    # Hold a whole line up to max_line_bytes (+1 for a '\r'); beyond that only the preview matters.
    hold_limit = max(max_line_bytes + 1, PREVIEW_BYTES)

    def finish(last_piece: bytes) -> Tuple[bytes, int]:
        nonlocal held, held_bytes, line_so_far, last_byte
        total = line_so_far + len(last_piece)
        content = b"".join(held) + last_piece[:hold_limit] if held else last_piece
        if (last_piece[-1:] or last_byte) == b"\r":
            total -= 1  # CRLF: the '\r' belongs to the terminator
            if len(content) > total:
                content = content[:total]
        if total > max_line_bytes:
            content = content[:PREVIEW_BYTES]
        held, held_bytes, line_so_far, last_byte = [], 0, 0, b""
        return content, total

    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            break
        parts = chunk.split(b"\n")
        for part in parts[:-1]:
            line_number += 1
            content, total = finish(part)
            yield line_number, content, total
        tail = parts[-1]
        if tail:
            line_so_far += len(tail)
            last_byte = tail[-1:]
            if held_bytes < hold_limit:
                piece = tail[:hold_limit - held_bytes]
                held.append(piece)
                held_bytes += len(piece)
    if line_so_far:
        line_number += 1
        content, total = finish(b"")
        yield line_number, content, total


# ------------------------------------------------------------------------------------------------
# One line -> tf.Example
# ------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Rejection:
    reason: str  # one of QUARANTINE_REASONS
    detail: str


@dataclasses.dataclass
class ParsedRow:
    example: bytes  # serialized tf.train.Example
    negative_int_fields: Tuple[str, ...] = ()
    underivable_fields: Tuple[str, ...] = ()


def _derive_hour_of_day(value: str) -> Optional[str]:
    """Avazu ``hour`` YYMMDDHH -> "00".."23"."""
    d = _yymmddhh(value)
    return None if d is None else f"{d.hour:02d}"


def _derive_weekday(value: str) -> Optional[str]:
    """Avazu ``hour`` YYMMDDHH -> "Mon".."Sun"."""
    d = _yymmddhh(value)
    return None if d is None else _WEEKDAYS[d.weekday()]


def _yymmddhh(value: str) -> Optional[datetime.datetime]:
    if len(value) != 8 or not value.isascii() or not value.isdigit():
        return None
    try:
        return datetime.datetime(2000 + int(value[0:2]), int(value[2:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


# Derivations a spec column may name in ``derive``; each maps the source field's text to the
# derived value, or None when the source cannot be interpreted (the derived feature is then absent
# and counted in ``underivable_by_field``).
DERIVATIONS = {
    "hour_of_day": _derive_hour_of_day,
    "weekday": _derive_weekday,
}


def parse_int(text: str, allow_float_format: bool) -> Optional[int]:
    """A strict integer: ASCII digits with an optional sign; '260.0' too when allowed. None = bad."""
    text = text.strip()
    if _INT_RE.match(text):
        value = int(text)
    elif allow_float_format and (m := _FLOAT_INT_RE.match(text)):
        value = int(m.group(1))
    else:
        return None
    if not _INT64_MIN <= value <= _INT64_MAX:
        return None
    return value


# tf.train.Example wire format, written directly: building the proto through its Python API costs
# ~10x more per row (map insertions), and ingestion is bound by this loop. The bytes equal
# ``tf.train.Example.SerializeToString(deterministic=True)`` (map entries sorted by key); a test
# checks that against the proto library.
_VARINT_1BYTE = [bytes([i]) for i in range(128)]


def _varint(n: int) -> bytes:
    if n < 0x80:
        return _VARINT_1BYTE[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int64_feature(value: int) -> bytes:
    """Feature{int64_list: Int64List{value: [value]}} (packed, negatives as 10-byte varints)."""
    v = _varint(value & 0xFFFFFFFFFFFFFFFF)
    packed = b"\x0a" + _VARINT_1BYTE[len(v)] + v
    return b"\x1a" + _VARINT_1BYTE[len(packed)] + packed


def _bytes_feature(value: bytes) -> bytes:
    """Feature{bytes_list: BytesList{value: [value]}}."""
    inner = b"\x0a" + _varint(len(value)) + value
    return b"\x0a" + _varint(len(inner)) + inner


def _entry(key_prefix: bytes, feature: bytes) -> bytes:
    """One Features.feature map entry (field 1 of Features); key_prefix = the entry's encoded key."""
    entry = key_prefix + b"\x12" + _varint(len(feature)) + feature
    return b"\x0a" + _varint(len(entry)) + entry


# Click logs repeat their values (Zipf): the encoded entry of a field's text is cached per field,
# which makes most fields a dict lookup. The bound keeps memory flat on high-cardinality fields.
_CACHE_ENTRIES_PER_FIELD = 50000


def _key_prefix(name: str) -> bytes:
    key = name.encode("utf-8")
    return b"\x0a" + _varint(len(key)) + key


class LineParser:
    """Parses lines of one dataset spec. Build once per worker; ``parse`` is the hot path."""

    def __init__(self, spec: DatasetSpec):
        self.spec = spec
        file_columns = spec.file_columns
        self.num_fields = len(file_columns)
        self.delimiter = spec.delimiter
        self.header_fields = [c.name.strip().lower() for c in file_columns]
        index_of = {c.name: i for i, c in enumerate(file_columns)}
        label_col = spec.column(spec.label)
        self._label_index = index_of[spec.label]
        self._label_name = spec.label
        self._label_float_ok = label_col.allow_float_format
        # Every emitted feature: (sort key, source field index, name, kind, allow_float_format or
        # derivation); sorted by name so that entries come out in deterministic-serialization order.
        plan = [(spec.label, self._label_index, "label", False)]
        for i, c in enumerate(file_columns):
            if c.kind in ("int", "categorical"):
                plan.append((c.name, i, c.kind, c.allow_float_format))
        for c in spec.columns:
            if c.derived_from is None:
                continue
            if c.derive not in DERIVATIONS:
                raise ValueError(f"column {c.name!r}: unknown derivation {c.derive!r} "
                                 f"(known: {sorted(DERIVATIONS)})")
            if c.derived_from not in index_of:
                raise ValueError(f"column {c.name!r} derives from {c.derived_from!r}, which is not a file column")
            plan.append((c.name, index_of[c.derived_from], "derived_" + c.kind, DERIVATIONS[c.derive]))
        plan.sort(key=lambda p: p[0].encode("utf-8"))
        # (index, name, kind, option, encoded map-entry key, cache: field text -> encoded entry)
        self._plan = [(i, name, kind, option, _key_prefix(name), {}) for name, i, kind, option in plan]
        label_key = _key_prefix(spec.label)
        self._label_entries = {v: _entry(label_key, _int64_feature(v)) for v in (0, 1)}

    def is_header(self, text: str) -> bool:
        """Whether a file's first line names the spec's file columns (case-insensitively)."""
        fields = [f.strip().strip('"').lower() for f in text.split(self.delimiter)]
        return fields == self.header_fields

    def decode(self, content: bytes) -> Union[str, Rejection]:
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError as e:
            return Rejection("undecodable_bytes", f"not UTF-8: {e.reason} at byte {e.start}")

    def parse(self, text: str) -> Union[ParsedRow, Rejection]:
        fields = text.split(self.delimiter)
        if len(fields) != self.num_fields:
            return Rejection("wrong_field_count", f"expected {self.num_fields} fields, got {len(fields)}")
        raw_label = fields[self._label_index].strip()
        if raw_label == "0" or raw_label == "1":
            label = int(raw_label)
        else:
            label = parse_int(raw_label, self._label_float_ok) if self._label_float_ok else None
            if label not in (0, 1):
                return Rejection("bad_label", f"label {self._label_name}={raw_label[:40]!r} is not 0 or 1")
        entries: List[bytes] = []
        negatives: List[str] = []
        underivable: List[str] = []
        for index, name, kind, option, key, cache in self._plan:
            if kind == "label":
                entries.append(self._label_entries[label])
                continue
            value = fields[index]
            if not value:
                continue  # empty field = missing: the feature is absent
            cached = cache.get(value)
            if cached is None:
                if kind == "categorical":
                    cached = _entry(key, _bytes_feature(value.encode("utf-8")))
                elif kind == "int":
                    number = parse_int(value, option)
                    if number is None:
                        return Rejection("non_numeric_int", f"field {name}={value[:40]!r} is not an integer")
                    cached = (_entry(key, _int64_feature(number)), number < 0)
                else:  # derived_categorical / derived_int; False = cannot derive
                    derived = option(value)
                    if derived is None:
                        cached = False
                    else:
                        cached = _entry(key, _int64_feature(int(derived)) if kind == "derived_int"
                                        else _bytes_feature(derived.encode("utf-8")))
                if len(cache) >= _CACHE_ENTRIES_PER_FIELD:
                    cache.clear()
                cache[value] = cached
            if kind == "int":
                entries.append(cached[0])
                if cached[1]:
                    negatives.append(name)
            elif cached is False:
                underivable.append(name)
            else:
                entries.append(cached)
        features = b"".join(entries)
        example = b"\x0a" + _varint(len(features)) + features
        return ParsedRow(example, tuple(negatives), tuple(sorted(underivable)))


# ------------------------------------------------------------------------------------------------
# Quarantine records
# ------------------------------------------------------------------------------------------------
def _written_chars(text: str) -> int:
    return len(json.dumps(text)) - 2  # without the quotes


def _line_preview(content: bytes) -> Tuple[str, int]:
    """(text, bytes of the line it holds): the start of the line, at most PREVIEW_BYTES bytes and
    MAX_LINE_JSON_CHARS characters as written to the record."""
    kept = min(len(content), PREVIEW_BYTES)
    text = content[:kept].decode("utf-8", errors="backslashreplace")
    if _written_chars(text) > MAX_LINE_JSON_CHARS:
        # The longest byte prefix that fits (cut on bytes so that no `\xNN` is cut in half).
        low, high = 0, kept
        while low < high:
            mid = (low + high + 1) // 2
            prefix = content[:mid].decode("utf-8", errors="backslashreplace")
            if _written_chars(prefix) <= MAX_LINE_JSON_CHARS:
                low = mid
            else:
                high = mid - 1
        kept = low
        text = content[:kept].decode("utf-8", errors="backslashreplace")
    return text, kept


def quarantine_record(reason: str, path: str, line_number: int, content: bytes, line_bytes: int,
                      detail: str) -> str:
    """One quarantine JSON line. ``line`` is the start of the raw line as text, non-UTF-8 bytes as
    ``\\xNN`` (see ``_line_preview`` for its size); ``truncated`` when it is not the whole line."""
    text, kept = _line_preview(content)
    record = {"reason": reason, "file": path, "line_number": line_number, "line": text,
              "line_bytes": line_bytes, "detail": detail}
    if kept < line_bytes:
        record["truncated"] = True
    return json.dumps(record, sort_keys=True)
