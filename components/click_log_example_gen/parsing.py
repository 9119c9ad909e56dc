"""Click-log files -> serialized tf.Examples, or quarantine records saying why not.

Built on the pure line layer (``line_parser``: ``iter_numbered_lines``, ``LineParser``,
``quarantine_record``, no Beam), two layers, each testable on its own:

* ``FileParser`` reads one whole file into batches of examples, quarantine records and the file's
  counts. By default blocks of lines go through the vectorised fast path (``block_parsing``) and
  only the lines it hands back take ``LineParser`` (``fast=False``: every line does); the cap of
  records per (reason, file), the counts and the line numbers are decided here, in line order.
* ``ParseClickLogs`` is a Beam PTransform over it: file patterns -> matched files -> one DoFn
  call per file (so line numbers are exact; files are streamed, never loaded whole) -> three
  outputs: ``examples`` (serialized tf.Example bytes), ``quarantine`` (JSON lines) and
  ``file_counts`` (one dict of counts per file, merged by ``merge_counts``). The executor uses
  ``FileParser`` directly and writes the examples from the same call (``writing``).

The tf.Example layout is the one in docs/contracts.md.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from components.click_log_example_gen.line_parser import (UTF8_BOM, LineParser, ParsedRow, Rejection,
                                                          iter_numbered_lines, quarantine_record)
from components.dataset_spec import DatasetSpec

# Quarantine records kept per (reason, file) by default. Bad lines beyond it are still counted
# (exactly) but not stored: a file of blank lines would otherwise write ~180 bytes of JSON per byte.
DEFAULT_MAX_RECORDS_PER_REASON = 1000
METRICS_NAMESPACE = "click_log_example_gen"
# Counters are flushed every this many lines, so a long file reports progress while it is read.
_METRICS_FLUSH_LINES = 20000


# ------------------------------------------------------------------------------------------------
# Counts
# ------------------------------------------------------------------------------------------------
def empty_counts() -> Dict[str, Any]:
    # records_dropped_by_reason: quarantined rows counted in quarantined_by_reason but not stored
    # as records (beyond the cap per reason and file).
    return {"files": 0, "rows_read": 0, "rows_emitted": 0, "rows_quarantined": 0,
            "quarantined_by_reason": {}, "negative_ints_by_field": {}, "underivable_by_field": {},
            "records_dropped_by_reason": {}, "headers_skipped": 0}


def _add_into(total: Dict[str, Any], counts: Dict[str, Any]) -> None:
    for key, value in counts.items():
        if isinstance(value, dict):
            _add_into(total.setdefault(key, {}), value)
        elif isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


def merge_counts(counts: Iterable[Dict[str, Any]]) -> Dict[str, Any]:
    """Sums count dicts (per file, per split) into one; nested dicts are summed per key."""
    total = empty_counts()
    for c in counts:
        _add_into(total, c)
    for key in ("quarantined_by_reason", "negative_ints_by_field", "underivable_by_field",
                "records_dropped_by_reason"):
        total[key] = dict(sorted(total[key].items()))
    return total


def counts_json(counts: Dict[str, Any]) -> str:
    return json.dumps(counts, sort_keys=True)


class MergeCountsFn(beam.CombineFn):
    def create_accumulator(self):
        return empty_counts()

    def add_input(self, acc, counts):
        return merge_counts([acc, counts])

    def merge_accumulators(self, accs):
        return merge_counts(accs)

    def extract_output(self, acc):
        return acc


# ------------------------------------------------------------------------------------------------
# Beam
# ------------------------------------------------------------------------------------------------
_HEADER = object()  # FileParser._line's result for a skipped header line


def _binary_array(values: List[bytes]):
    import pyarrow as pa

    return pa.array(values, pa.binary())


class FileParser:
    """One whole file -> its examples, quarantine records and counts, in line order.

    With ``fast`` (the default) the file is read in blocks (``block_parsing.iter_blocks``) and each
    block goes through ``block_parsing.BlockParser``; every line the block parser does not vouch
    for comes back here and takes the per-line path below, the same code that reads the whole file
    with ``fast=False``. So both paths produce the same examples, quarantine records and counts
    (tests compare them). A file is parsed by one call, so the cap of quarantine records per
    (reason, file) and the line numbers are exact on any runner.

    ``parse`` yields ``("examples", serialized tf.Examples as a pyarrow binary array)`` and
    ``("quarantine", json)``
    items, then ``("counts", counts)`` (the file's count dict, as ``empty_counts`` plus ``by_file``).
    ``on_progress`` (if given) receives counter deltas ({"rows_read": n, "rows_emitted": n,
    "quarantined_<reason>": n}) after every block (fast) or every 20,000 lines (per line).
    """

    def __init__(self, spec: DatasetSpec, max_records_per_reason: int = DEFAULT_MAX_RECORDS_PER_REASON,
                 fast: bool = True, block_bytes: Optional[int] = None):
        self.spec = spec
        self.block_bytes = block_bytes  # None: block_parsing.BLOCK_BYTES
        self.parser = LineParser(spec)
        self.max_records = max_records_per_reason
        self.block_parser = None
        if fast:
            from components.click_log_example_gen import block_parsing  # pyarrow: only when used

            if block_parsing.BlockParser.supported(spec):
                self.block_parser = block_parsing.BlockParser(spec)

    def _line(self, line_number: int, content: bytes, line_bytes: int):
        """One line -> ParsedRow, Rejection or _HEADER (what the per-line path decides)."""
        spec, parser = self.spec, self.parser
        if line_number == 1 and content.startswith(UTF8_BOM):
            content = content[len(UTF8_BOM):]
            line_bytes -= len(UTF8_BOM)
        if line_bytes > spec.max_line_bytes:
            return Rejection("oversized_line", f"{line_bytes} bytes > max_line_bytes {spec.max_line_bytes}"), \
                content, line_bytes
        result = parser.decode(content)
        if isinstance(result, str):
            if line_number == 1 and spec.header and parser.is_header(result):
                return _HEADER, content, line_bytes
            result = parser.parse(result)
        if isinstance(result, Rejection) and line_number == 1 and spec.header:
            result.detail += " (first line of the file, but not the spec's header: read as a row)"
        return result, content, line_bytes

    def parse(self, stream, path: str, on_progress=None):
        counts = empty_counts()
        counts["files"] = 1
        by_reason = counts["quarantined_by_reason"]
        negatives = counts["negative_ints_by_field"]
        underivable = counts["underivable_by_field"]
        dropped = counts["records_dropped_by_reason"]
        progress: Dict[str, int] = {}
        totals = {"rows_read": 0, "rows_emitted": 0}

        def slow_line(line_number, content, line_bytes, examples):
            """The per-line path for one line: appends its example or yields its record."""
            result, content, line_bytes = self._line(line_number, content, line_bytes)
            if result is _HEADER:
                # The header is not a row: not read, not emitted, not quarantined.
                counts["headers_skipped"] += 1
                return None
            totals["rows_read"] += 1
            if isinstance(result, ParsedRow):
                totals["rows_emitted"] += 1
                for name in result.negative_int_fields:
                    negatives[name] = negatives.get(name, 0) + 1
                for name in result.underivable_fields:
                    underivable[name] = underivable.get(name, 0) + 1
                examples.append(result.example)
                return None
            seen = by_reason.get(result.reason, 0) + 1
            by_reason[result.reason] = seen
            key = "quarantined_" + result.reason
            progress[key] = progress.get(key, 0) + 1
            if seen <= self.max_records:
                return quarantine_record(result.reason, path, line_number, content, line_bytes, result.detail)
            dropped[result.reason] = dropped.get(result.reason, 0) + 1
            return None

        flushed = {"rows_read": 0, "rows_emitted": 0}

        def report():
            for key in ("rows_read", "rows_emitted"):
                progress[key] = totals[key] - flushed[key]
                flushed[key] = totals[key]
            if on_progress is not None:
                on_progress({k: v for k, v in progress.items() if v})
            progress.clear()

        if self.block_parser is None:
            examples: List[bytes] = []
            for line_number, content, line_bytes in iter_numbered_lines(stream, self.spec.max_line_bytes):
                record = slow_line(line_number, content, line_bytes, examples)
                if record is not None:
                    yield "quarantine", record
                if line_number % _METRICS_FLUSH_LINES == 0:
                    if examples:
                        yield "examples", _binary_array(examples)
                        examples = []
                    report()
            if examples:
                yield "examples", _binary_array(examples)
        else:
            yield from self._parse_blocks(stream, negatives, underivable, totals, slow_line, report)
        report()
        counts["rows_read"] = totals["rows_read"]
        counts["rows_emitted"] = totals["rows_emitted"]
        counts["rows_quarantined"] = totals["rows_read"] - totals["rows_emitted"]
        counts["by_file"] = {path: {"rows_read": totals["rows_read"], "rows_emitted": totals["rows_emitted"],
                                    "quarantined_by_reason": dict(by_reason),
                                    "records_dropped_by_reason": dict(dropped)}}
        yield "counts", counts

    def _parse_blocks(self, stream, negatives, underivable, totals, slow_line, report):
        import pyarrow as pa

        from components.click_log_example_gen import block_parsing

        max_line_bytes = self.spec.max_line_bytes
        for item in block_parsing.iter_blocks(stream, max_line_bytes, self.block_bytes or block_parsing.BLOCK_BYTES):
            examples: List[bytes] = []  # from the per-line path
            if isinstance(item, block_parsing.LongLine):
                record = slow_line(item.line_number, item.content, item.line_bytes, examples)
                if record is not None:
                    yield "quarantine", record
                if examples:
                    yield "examples", pa.array(examples, pa.binary())
                continue
            data, first = item.data, item.first_line_number
            result = self.block_parser.parse(data, first_line_of_file=first == 1)
            fast = result.examples
            totals["rows_read"] += len(fast)
            totals["rows_emitted"] += len(fast)
            for name, n in result.negative_ints_by_field.items():
                negatives[name] = negatives.get(name, 0) + n
            for name, n in result.underivable_by_field.items():
                underivable[name] = underivable.get(name, 0) + n
            if not len(result.slow):
                yield "examples", fast
                report()
                continue
            # The block's examples in line order: runs of fast ones between the per-line ones.
            pieces: List[Any] = []
            taken = 0  # fast examples already placed
            for position, index in enumerate(result.slow.tolist()):
                before = index - position  # fast lines before this one
                if before > taken:
                    if examples:
                        pieces.append(pa.array(examples, pa.binary()))
                        examples = []
                    pieces.append(fast.slice(taken, before - taken))
                    taken = before
                content, line_bytes = result.line(data, index, max_line_bytes)
                record = slow_line(first + index, content, line_bytes, examples)
                if record is not None:
                    yield "quarantine", record
            if examples:
                pieces.append(pa.array(examples, pa.binary()))
            if taken < len(fast):
                pieces.append(fast.slice(taken))
            if pieces:
                yield "examples", pieces[0] if len(pieces) == 1 else pa.concat_arrays(pieces)
            report()


class _ParseFileFn(beam.DoFn):
    """One whole file per call (``FileParser``); serialized tf.Examples one element each."""

    def __init__(self, spec_json: str, max_records_per_reason: int, fast: bool = True):
        self._spec_json = spec_json
        self._max_records = max_records_per_reason
        self._fast = fast
        self._file_parser: Optional[FileParser] = None
        self._counters: Dict[str, Any] = {}

    def setup(self):
        self._file_parser = FileParser(DatasetSpec.from_json(self._spec_json), self._max_records, self._fast)

    def _counter(self, name: str):
        if name not in self._counters:
            self._counters[name] = beam.metrics.Metrics.counter(METRICS_NAMESPACE, name)
        return self._counters[name]

    def _progress(self, deltas: Dict[str, int]):
        for name, n in deltas.items():
            self._counter(name).inc(n)

    def process(self, path: str):
        with FileSystems.open(path) as stream:
            for kind, value in self._file_parser.parse(stream, path, self._progress):
                if kind == "examples":
                    yield from value.to_pylist()
                elif kind == "quarantine":
                    yield beam.pvalue.TaggedOutput("quarantine", value)
                else:
                    self._counter("files").inc(1)
                    yield beam.pvalue.TaggedOutput("file_counts", value)


def _is_readable_file(path: str) -> bool:
    # Local globs also match folders; remote filesystems list objects only.
    return not (FileSystems.get_scheme(path) is None and os.path.isdir(path))


class ParseClickLogs(beam.PTransform):
    """File patterns -> ``{'examples', 'quarantine', 'file_counts'}`` PCollections.

    ``examples``: serialized tf.Example bytes; ``quarantine``: JSON strings (see
    ``quarantine_record``); ``file_counts``: one count dict per file (merge with ``MergeCountsFn``).
    A file matched by several patterns is read once. At most ``max_records_per_reason`` records
    are written per (reason, file); the counts include every bad line, and those not written are in
    ``records_dropped_by_reason``.
    """

    def __init__(self, file_patterns: Sequence[str], spec_json: str,
                 max_records_per_reason: int = DEFAULT_MAX_RECORDS_PER_REASON, fast: bool = True):
        super().__init__()
        if isinstance(file_patterns, str):
            file_patterns = [file_patterns]
        if max_records_per_reason < 0:
            raise ValueError(f"max_records_per_reason must be >= 0, got {max_records_per_reason}")
        self._file_patterns = list(file_patterns)
        self._spec_json = spec_json
        self._max_records = int(max_records_per_reason)
        self._fast = fast

    def expand(self, pbegin):
        files = (
            pbegin
            | "Patterns" >> beam.Create(self._file_patterns)
            | "Match" >> fileio.MatchAll()
            | "Path" >> beam.Map(lambda metadata: metadata.path)
            | "OnlyFiles" >> beam.Filter(_is_readable_file)
            # Distinct also shuffles, so that files spread over workers.
            | "Distinct" >> beam.Distinct())
        outputs = files | "ParseFiles" >> beam.ParDo(
            _ParseFileFn(self._spec_json, self._max_records, self._fast)).with_outputs(
            "quarantine", "file_counts", main="examples")
        return {"examples": outputs.examples, "quarantine": outputs.quarantine,
                "file_counts": outputs.file_counts}
