"""The click-log line reader, line parser and Beam PTransform (no TFX executor; fast)."""
import gzip
import io
import json

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.util import assert_that, equal_to
from tensorflow.core.example import example_pb2

from components import dataset_spec
from components.click_log_example_gen import line_parser, parsing
from components.dataset_spec import DatasetSpec, load_spec

CRITEO = load_spec("criteo")
GOOD_CRITEO = "\t".join(["1", "5", "-2", "", "7"] + [""] * 9 + ["68fd1e64", "80e26c9b"] + ["a"] * 24)


def _lines(data: bytes, max_line_bytes=100, chunk_bytes=line_parser.READ_CHUNK_BYTES):
    return list(line_parser.iter_numbered_lines(io.BytesIO(data), max_line_bytes, chunk_bytes))


def _features(serialized: bytes):
    ex = example_pb2.Example.FromString(serialized)
    out = {}
    for name, f in ex.features.feature.items():
        kind = f.WhichOneof("kind")
        out[name] = list(getattr(f, kind).value)
    return out


# -- iter_numbered_lines ------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 7, 1 << 20])
def test_lines_lf_crlf_trailing_and_numbers_at_any_chunk_size(chunk_bytes):
    data = b"a\tb\r\nc\n\nd\r\n\r\nlast"
    assert _lines(data, chunk_bytes=chunk_bytes) == [
        (1, b"a\tb", 3), (2, b"c", 1), (3, b"", 0), (4, b"d", 1), (5, b"", 0), (6, b"last", 4)]


def test_lines_empty_file_and_single_newline():
    assert _lines(b"") == []
    assert _lines(b"\n") == [(1, b"", 0)]
    assert _lines(b"x\n") == [(1, b"x", 1)]


@pytest.mark.parametrize("chunk_bytes", [5, 1 << 20])
def test_oversized_line_is_measured_but_held_only_as_preview(chunk_bytes, monkeypatch):
    monkeypatch.setattr(line_parser, "PREVIEW_BYTES", 8)
    big = b"x" * 50
    got = _lines(b"ok\n" + big + b"\r\nok2", max_line_bytes=10, chunk_bytes=chunk_bytes)
    assert got == [(1, b"ok", 2), (2, b"x" * 8, 50), (3, b"ok2", 3)]
    # exactly at the limit is fine, one over is oversized
    assert _lines(b"y" * 10 + b"\r\n" + b"z" * 11, max_line_bytes=10, chunk_bytes=chunk_bytes) == [
        (1, b"y" * 10, 10), (2, b"z" * 8, 11)]


# -- LineParser -----------------------------------------------------------------------------------
def test_parse_good_criteo_row_layout():
    parser = line_parser.LineParser(CRITEO)
    row = parser.parse(GOOD_CRITEO)
    assert isinstance(row, line_parser.ParsedRow)
    feats = _features(row.example)
    assert feats["label"] == [1]
    assert feats["I1"] == [5] and feats["I2"] == [-2] and feats["I4"] == [7]
    assert "I3" not in feats and "I13" not in feats  # empty field = absent feature
    assert feats["C1"] == [b"68fd1e64"] and feats["C26"] == [b"a"]
    assert len(feats) == 1 + 3 + 26
    assert row.negative_int_fields == ("I2",)


@pytest.mark.parametrize("mutate, reason", [
    (lambda f: f[:-1], "wrong_field_count"),
    (lambda f: f + ["extra"], "wrong_field_count"),
    (lambda f: ["2"] + f[1:], "bad_label"),
    (lambda f: [""] + f[1:], "bad_label"),
    (lambda f: ["-1"] + f[1:], "bad_label"),
    (lambda f: ["1.0"] + f[1:], "bad_label"),  # floats only with allow_float_format
    (lambda f: f[:3] + ["abc"] + f[4:], "non_numeric_int"),
    (lambda f: f[:3] + ["1.5"] + f[4:], "non_numeric_int"),
    (lambda f: f[:3] + ["12_000"] + f[4:], "non_numeric_int"),
    (lambda f: f[:3] + ["\u0663"] + f[4:], "non_numeric_int"),  # Arabic-Indic digit: not ASCII
    (lambda f: f[:3] + [str(1 << 63)] + f[4:], "non_numeric_int"),  # beyond int64
])
def test_parse_rejections(mutate, reason):
    parser = line_parser.LineParser(CRITEO)
    result = parser.parse("\t".join(mutate(GOOD_CRITEO.split("\t"))))
    assert isinstance(result, line_parser.Rejection), result
    assert result.reason == reason
    assert result.detail


@pytest.mark.parametrize("spec_name, line", [
    ("criteo", GOOD_CRITEO),
    ("criteo", "\t".join(["0", str(-(1 << 63)), str((1 << 63) - 1), "0", "127", "128", "-1"] + [""] * 7
                         + ["\u00e9t\u00e9", "x" * 300] + [""] * 24)),
    ("avazu", ",".join(["9", "0", "14102923"] + [f"v{i}" for i in range(21)])),
])
def test_hand_written_wire_format_equals_proto_deterministic_serialization(spec_name, line):
    parser = line_parser.LineParser(load_spec(spec_name))
    row = parser.parse(line)
    assert isinstance(row, line_parser.ParsedRow)
    spec = parser.spec
    feats = _features(row.example)
    for column, value in zip(spec.file_columns, line.split(spec.delimiter)):
        if column.kind == "int" and value:
            assert feats[column.name] == [int(value)]
        elif column.kind == "categorical" and value:
            assert feats[column.name] == [value.encode()]
        elif column.kind in ("int", "categorical", "ignore"):
            assert column.name not in feats
    reparsed = example_pb2.Example.FromString(row.example)
    assert reparsed.SerializeToString(deterministic=True) == row.example
    expected = example_pb2.Example()
    for name, values in _features(row.example).items():
        target = expected.features.feature[name]
        (target.int64_list if isinstance(values[0], int) else target.bytes_list).value.extend(values)
    assert expected.SerializeToString(deterministic=True) == row.example


def test_undecodable_bytes_rejected():
    parser = line_parser.LineParser(CRITEO)
    assert parser.decode(b"ok\t\xc3\xa9") == "ok\t\u00e9"
    bad = parser.decode(b"0\t\xff\xfe")
    assert isinstance(bad, line_parser.Rejection) and bad.reason == "undecodable_bytes"


def test_float_formatted_ints_through_allow_float_format():
    spec = DatasetSpec.from_dict({"name": "t", "delimiter": ",", "columns": [
        {"name": "label", "kind": "label", "allow_float_format": True},
        {"name": "n", "kind": "int", "allow_float_format": True},
        {"name": "m", "kind": "int"}]})
    parser = line_parser.LineParser(spec)
    assert _features(parser.parse("1.0,260.0,3").example) == {"label": [1], "n": [260], "m": [3]}
    assert _features(parser.parse("0,-4.00,").example) == {"label": [0], "n": [-4]}
    assert parser.parse("0,2.5,1").reason == "non_numeric_int"
    assert parser.parse("0,1e3,1").reason == "non_numeric_int"
    assert parser.parse("0,1,1.0").reason == "non_numeric_int"  # m does not allow floats
    assert parser.parse("2.0,1,1").reason == "bad_label"


def test_avazu_derived_hour_columns_and_header():
    spec = load_spec("avazu")
    parser = line_parser.LineParser(spec)
    header = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
              "app_category,device_id,device_ip,device_model,device_type,device_conn_type,"
              "C14,C15,C16,C17,C18,C19,C20,C21")
    assert parser.is_header(header) and parser.is_header(header.upper())
    values = ["123", "1", "14102117"] + [f"v{i}" for i in range(21)]
    feats = _features(parser.parse(",".join(values)).example)
    assert "id" not in feats
    assert feats["click"] == [1] and feats["hour"] == [b"14102117"]
    assert feats["hour_of_day"] == [b"17"] and feats["weekday"] == [b"Tue"]  # 2014-10-21 was a Tuesday
    values[2] = "14139999"  # not a date: row kept, derived features absent and counted
    row = parser.parse(",".join(values))
    assert "hour_of_day" not in _features(row.example)
    assert row.underivable_fields == ("hour_of_day", "weekday")


def test_spec_and_parser_agree_on_derivations():
    assert set(dataset_spec.DERIVATIONS) == set(line_parser.DERIVATIONS)


def test_merge_counts_sums_nested():
    a = {"rows_read": 2, "rows_emitted": 1, "rows_quarantined": 1, "quarantined_by_reason": {"bad_label": 1},
         "negative_ints_by_field": {"I2": 1}, "files": 1}
    b = {"rows_read": 3, "rows_emitted": 3, "rows_quarantined": 0, "quarantined_by_reason": {},
         "negative_ints_by_field": {"I2": 2, "I3": 1}, "files": 1}
    m = parsing.merge_counts([a, b])
    assert (m["rows_read"], m["rows_emitted"], m["rows_quarantined"], m["files"]) == (5, 4, 1, 2)
    assert m["negative_ints_by_field"] == {"I2": 3, "I3": 1}
    assert m["quarantined_by_reason"] == {"bad_label": 1}


# -- the PTransform, on Beam's DirectRunner -------------------------------------------------------
def test_parse_click_logs_ptransform(tmp_path):
    spec = DatasetSpec.from_dict({"name": "t", "delimiter": ",", "header": True, "columns": [
        {"name": "label", "kind": "label"}, {"name": "n", "kind": "int"}, {"name": "c", "kind": "categorical"}]})
    (tmp_path / "a.csv").write_bytes(b"\xef\xbb\xbflabel,n,c\r\n1,3,x\r\n0,-1,\r\n7,1,y\r\n")
    (tmp_path / "b.csv").write_bytes(b"0,2,z\nlabel,n\n1,zz,q")  # no header: first line is a row
    (tmp_path / "empty.csv").write_bytes(b"")
    with gzip.open(tmp_path / "c.csv.gz", "wb") as f:  # compressed logs are read transparently
        f.write(b"label,n,c\n1,,w\n")
    (tmp_path / "sub").mkdir()  # folders matched by the glob are not files
    parser = line_parser.LineParser(spec)
    expected_examples = [parser.parse(t).example for t in ("1,3,x", "0,-1,", "0,2,z", "1,,w")]
    p = beam.Pipeline()
    out = p | parsing.ParseClickLogs([str(tmp_path / "*"), str(tmp_path / "a.csv")], spec.to_json())
    assert_that(out["examples"], equal_to(expected_examples), label="examples")
    quarantine = out["quarantine"] | beam.Map(
        lambda s: (lambda r: (r["reason"], r["file"].rsplit("/", 1)[1], r["line_number"], r["line"]))(json.loads(s)))
    assert_that(quarantine, equal_to([
        ("bad_label", "a.csv", 4, "7,1,y"),
        ("wrong_field_count", "b.csv", 2, "label,n"),
        ("non_numeric_int", "b.csv", 3, "1,zz,q"),
    ]), label="quarantine")
    totals = out["file_counts"] | beam.CombineGlobally(parsing.MergeCountsFn()) | beam.Map(
        lambda c: (c["files"], c["rows_read"], c["rows_emitted"], c["rows_quarantined"], c["headers_skipped"],
                   c["quarantined_by_reason"], c["negative_ints_by_field"]))
    assert_that(totals, equal_to([(4, 7, 4, 3, 2, {"bad_label": 1, "wrong_field_count": 1, "non_numeric_int": 1},
                                   {"n": 1})]), label="counts")
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query(
        MetricsFilter().with_namespace(parsing.METRICS_NAMESPACE))["counters"]}
    assert counters == {"files": 4, "rows_read": 7, "rows_emitted": 4, "quarantined_bad_label": 1,
                        "quarantined_wrong_field_count": 1, "quarantined_non_numeric_int": 1}


@pytest.mark.parametrize("running_mode", ["in_memory", "multi_processing"])
def test_quarantine_records_capped_per_reason_and_file_with_exact_counts(tmp_path, running_mode):
    spec = DatasetSpec.from_dict({"name": "t", "delimiter": ",", "columns": [
        {"name": "label", "kind": "label"}, {"name": "n", "kind": "int"}]})
    # Per file: blank lines (wrong_field_count), bad labels, one non-integer, good rows.
    layout = {"a.csv": (5000, 7, 1, 3), "b.csv": (2, 4000, 0, 5), "c.csv": (0, 0, 1, 1)}
    for name, (blank, bad_label, non_int, good) in layout.items():
        (tmp_path / name).write_text("\n" * blank + "9,1\n" * bad_label + "1,x\n" * non_int + "0,1\n" * good)
    cap = 5
    options = beam.options.pipeline_options.PipelineOptions(
        direct_running_mode=running_mode, direct_num_workers=2)
    with beam.Pipeline(options=options) as p:
        out = p | parsing.ParseClickLogs([str(tmp_path / "*.csv")], spec.to_json(), max_records_per_reason=cap)
        kept = (out["quarantine"]
                | beam.Map(lambda s: (lambda r: (r["reason"], r["file"].rsplit("/", 1)[1]))(json.loads(s)))
                | beam.combiners.Count.PerElement())
        assert_that(kept, equal_to([
            (("wrong_field_count", "a.csv"), 5), (("bad_label", "a.csv"), 5), (("non_numeric_int", "a.csv"), 1),
            (("wrong_field_count", "b.csv"), 2), (("bad_label", "b.csv"), 5), (("non_numeric_int", "c.csv"), 1)]),
            label="kept")
        totals = out["file_counts"] | beam.CombineGlobally(parsing.MergeCountsFn()) | beam.Map(
            lambda c: (c["rows_read"], c["rows_emitted"], c["rows_quarantined"], c["quarantined_by_reason"],
                       c["records_dropped_by_reason"],
                       {f.rsplit("/", 1)[1]: v["records_dropped_by_reason"] for f, v in c["by_file"].items()}))
        assert_that(totals, equal_to([(
            9020, 9, 9011, {"bad_label": 4007, "non_numeric_int": 2, "wrong_field_count": 5002},
            {"bad_label": 3997, "wrong_field_count": 4995},
            {"a.csv": {"wrong_field_count": 4995, "bad_label": 2}, "b.csv": {"bad_label": 3995}, "c.csv": {}})]),
            label="counts")


@pytest.mark.parametrize("unit, unit_text", [
    (b"\xfe", "\\xfe"),  # not UTF-8: written \\xfe in JSON (5 chars per byte)
    (b"\x01", "\x01"),  # a control character: written \u0001 (6 chars per byte)
    ("\u00e9".encode(), "\u00e9"),  # non-ASCII: written \u00e9 (3 chars per byte)
    (b"z", "z"),
])
def test_quarantine_record_line_is_capped_as_written(unit, unit_text):
    """A record's line keeps the line's start, at most PREVIEW_BYTES bytes and MAX_LINE_JSON_CHARS
    characters as JSON writes it, with ``truncated`` and the line's true length."""
    line_bytes = 10_000 * len(unit)
    content = (unit * 10_000)[:line_parser.PREVIEW_BYTES]  # what the line reader holds of an oversized line
    written = line_parser.quarantine_record("oversized_line", "/f", 1, content, line_bytes, "d")
    record = json.loads(written)
    assert len(json.dumps(record["line"])) - 2 <= line_parser.MAX_LINE_JSON_CHARS
    assert len(written) <= line_parser.MAX_LINE_JSON_CHARS + 200
    assert record["truncated"] and record["line_bytes"] == line_bytes
    n = len(record["line"]) // len(unit_text)
    assert n > 0 and record["line"] == unit_text * n  # the line's start, no half escape
    if unit == b"z":
        assert n == line_parser.PREVIEW_BYTES  # plain text: the first PREVIEW_BYTES bytes, as before


def test_quarantine_record_keeps_a_short_line_whole():
    short = json.loads(line_parser.quarantine_record("bad_label", "/f", 2, b"2,\xff", 3, "d"))
    assert short["line"] == "2,\\xff" and short["line_bytes"] == 3 and "truncated" not in short
    fits = json.loads(line_parser.quarantine_record("bad_label", "/f", 3, b"y" * 4096, 4096, "d"))
    assert fits["line"] == "y" * 4096 and "truncated" not in fits
