"""ClickLogExampleGen end to end: component -> FileBasedDriver span resolution -> executor Do().

Real samples come from ../shared/data (never copied into the repo); corrupted inputs are written
to tmp dirs by the tests. Each executor run is a small in-process Beam pipeline (DirectRunner).
"""
import collections
import glob
import json
import os
from pathlib import Path

import pytest
import tensorflow as tf
from tfx.components.example_gen import driver as example_gen_driver
from tfx.proto import example_gen_pb2, range_config_pb2
from tfx.types import standard_artifacts
from tfx.utils import proto_utils

from components.click_log_example_gen import executor as executor_lib
from components.click_log_example_gen import line_parser
from components.click_log_example_gen.component import (
    ClickLogExampleGen, default_output_config, ingestion_kwargs, input_config_for)
from components.dataset_spec import DatasetSpec, load_spec

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared click-log samples not found at {SHARED}")


# -- harness ----------------------------------------------------------------------------------------
def _exec_properties(component: ClickLogExampleGen) -> dict:
    """The component's execution properties as the orchestrator hands them over (protos as JSON)."""
    props = {}
    for key, value in component.exec_properties.items():
        if value is None:
            continue
        props[key] = proto_utils.proto_to_json(value) if hasattr(value, "DESCRIPTOR") else value
    return props


def run_example_gen(out_dir: Path, **component_kwargs):
    """Builds the component, resolves spans with TFX's FileBasedDriver, runs the executor.

    Returns (examples artifact, error or None)."""
    component = ClickLogExampleGen(**component_kwargs)
    props = example_gen_driver.FileBasedDriver(None).resolve_exec_properties(
        _exec_properties(component), None, None)
    examples = standard_artifacts.Examples()
    examples.uri = str(out_dir)
    error = None
    try:
        executor_lib.Executor().Do({}, {"examples": [examples]}, props)
    except executor_lib.BadRowsError as e:
        error = e
    return examples, error


def read_examples(uri: str, split: str):
    files = sorted(glob.glob(os.path.join(uri, f"Split-{split}", "*.gz")))
    assert files, f"no output files for split {split} under {uri}"
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def read_quarantine(uri: str):
    records = []
    for path in sorted(glob.glob(os.path.join(uri, "quarantine", "records-*.jsonl"))):
        with open(path) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def props_of(examples):
    return {
        "rows_read": examples.get_int_custom_property("rows_read"),
        "rows_emitted": examples.get_int_custom_property("rows_emitted"),
        "rows_quarantined": examples.get_int_custom_property("rows_quarantined"),
        "quarantined_by_reason": json.loads(examples.get_string_custom_property("quarantined_by_reason")),
        "negative_ints_by_field": json.loads(examples.get_string_custom_property("negative_ints_by_field")),
        "quarantine_uri": examples.get_string_custom_property("quarantine_uri"),
    }


def data_lines(path: Path, header: bool):
    with open(path, "rb") as f:
        lines = f.read().splitlines()
    return lines[1:] if header else lines


def assert_all_emitted(examples, source: Path, spec: DatasetSpec):
    """Clean input: every data line is an example (train + eval), counts add up, none quarantined."""
    n_lines = len(data_lines(source, spec.header))
    p = props_of(examples)
    assert p["rows_read"] == n_lines
    assert p["rows_emitted"] == n_lines and p["rows_quarantined"] == 0
    assert p["quarantined_by_reason"] == {}
    train, eval_ = read_examples(examples.uri, "train"), read_examples(examples.uri, "eval")
    assert len(train) + len(eval_) == n_lines
    assert 0.1 < len(eval_) / n_lines < 0.3  # 8:2 hash split
    assert examples.split_names == '["train", "eval"]'
    assert read_quarantine(examples.uri) == []
    return train + eval_


def _feature_dict(serialized: bytes):
    ex = tf.train.Example.FromString(serialized)
    return {k: list(getattr(f, f.WhichOneof("kind")).value) for k, f in ex.features.feature.items()}


# -- real samples -----------------------------------------------------------------------------------
@needs_shared
def test_criteo_raw_sample(tmp_path):
    source = SHARED / "criteo" / "wide-resdnn" / "train.csv"
    spec = load_spec("criteo")
    examples, error = run_example_gen(tmp_path / "out", input_base=str(source.parent),
                                      input_config=input_config_for("train.csv"), dataset_spec=spec.to_json())
    assert error is None
    records = assert_all_emitted(examples, source, spec)
    labels = collections.Counter(_feature_dict(r)["label"][0] for r in records)
    assert set(labels) == {0, 1} and 0.15 < labels[1] / len(records) < 0.3  # CTR ~0.22 per the README
    # The first line, re-parsed independently, is among the outputs byte for byte.
    first = data_lines(source, False)[0].decode()
    assert line_parser.LineParser(spec).parse(first).example in set(records)
    negatives = props_of(examples)["negative_ints_by_field"]
    assert set(negatives) <= set(spec.int_columns) and negatives.get("I2", 0) > 0  # Criteo's I2 has -1s


@needs_shared
def test_criteo_kaggle_sample(tmp_path):
    source = SHARED / "criteo" / "kaggle-2014-criteo" / "tr.rx.csv"
    spec = load_spec("criteo-kaggle")
    examples, error = run_example_gen(tmp_path / "out", input_base=str(source.parent),
                                      input_config=input_config_for("tr.rx.csv"), dataset_spec="criteo-kaggle")
    assert error is None
    records = assert_all_emitted(examples, source, spec)
    labels = [_feature_dict(r)["Label"][0] for r in records]
    assert sum(labels) == 448  # clicks per the shared data README
    assert all("Id" not in _feature_dict(r) for r in records[:50])


@needs_shared
def test_avazu_sample(tmp_path):
    source = SHARED / "avazu" / "wide-resdnn" / "train.csv"
    spec = load_spec("avazu")
    examples, error = run_example_gen(tmp_path / "out", input_base=str(source.parent),
                                      input_config=input_config_for("train.csv"), dataset_spec=spec)
    assert error is None
    records = assert_all_emitted(examples, source, spec)
    feats = _feature_dict(records[0])
    assert feats["hour"] == [b"14102100"]
    assert feats["hour_of_day"] == [b"00"] and feats["weekday"] == [b"Tue"]
    assert "id" not in feats and set(feats) <= {c.name for c in spec.columns}


@needs_shared
def test_float_formatted_sample_through_user_spec_file(tmp_path):
    source = SHARED / "criteo" / "deepctr" / "criteo_sample.txt"
    spec_path = tmp_path / "my_spec.yaml"
    ints = "\n".join(f"  - {{name: I{i}, kind: int, allow_float_format: true}}" for i in range(1, 14))
    cats = "\n".join(f"  - {{name: C{i}, kind: categorical}}" for i in range(1, 27))
    spec_path.write_text(f"name: deepctr-criteo\ndelimiter: ','\nheader: true\ncolumns:\n"
                         f"  - {{name: label, kind: label}}\n{ints}\n{cats}\n")
    examples, error = run_example_gen(tmp_path / "out", input_base=str(source.parent),
                                      input_config=input_config_for("criteo_sample.txt"), dataset_spec=str(spec_path))
    assert error is None
    records = assert_all_emitted(examples, source, load_spec(str(spec_path)))
    assert sum(_feature_dict(r)["label"][0] for r in records) == 49
    # '260.0' in line 1 (I3) became the integer 260
    assert any(_feature_dict(r).get("I3") == [260] and _feature_dict(r).get("I5") == [17668] for r in records)


# -- a corrupted copy: every bad-row kind, CRLF, a last line without newline, an empty file -------
CORRUPT_MAX_LINE = 2048


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory):
    """Builds the corrupted input from synthetic Criteo-layout rows and runs ExampleGen once.

    Returns (examples, error, expected) where expected has the bad lines by (file, line_number)."""
    root = tmp_path_factory.mktemp("corrupted")
    data = root / "data"
    data.mkdir()

    def row(i, label="0", i1=None, cat=None, n_fields=40):
        f = [label, str(i1 if i1 is not None else i)] + [str(i % 7)] * 12 + [cat or f"c{i % 11}"] + ["abcd1234"] * 25
        return "\t".join((f + ["x"] * 5)[:n_fields]).encode()

    expected_bad = {}  # (file name, line number) -> reason
    good_lines = []  # bytes of each good line (without terminator)
    lines_a = []
    for i in range(1, 201):
        line = row(i, label=str(i % 2), i1=-i if i % 50 == 0 else None)  # 4 negative I1 values
        reason = None
        if i in (10, 11):
            line, reason = row(i, n_fields=39 if i == 10 else 41), "wrong_field_count"
        elif i in (20, 21, 22):
            fields = line.split(b"\t")
            fields[1 + i - 20] = [b"abc", b"1.5", b"NaN"][i - 20]
            line, reason = b"\t".join(fields), "non_numeric_int"
        elif i in (30, 31):
            line, reason = row(i, label=["2", ""][i - 30]), "bad_label"
        elif i == 40:
            line, reason = row(i, cat="caf\xe9").replace("caf\xe9".encode(), b"caf\xe9"), "undecodable_bytes"
        elif i == 60:
            line, reason = row(i, cat="z" * 5000), "oversized_line"
        elif i == 70:
            line, reason = b"", "wrong_field_count"  # an empty line in the middle
        if reason:
            expected_bad[("a.tsv", i)] = reason
        else:
            good_lines.append(line)
        lines_a.append(line)
    (data / "a.tsv").write_bytes(b"\n".join(lines_a) + b"\n")

    lines_b = []
    for i in range(1, 61):
        line = row(1000 + i, label="1")
        if i == 7:
            line = line + b"\tone-too-many"
            expected_bad[("b.tsv", i)] = "wrong_field_count"
        else:
            good_lines.append(line)
        lines_b.append(line)
    # CRLF line ends and no newline after the last line
    (data / "b.tsv").write_bytes(b"\r\n".join(lines_b))
    (data / "empty.tsv").write_bytes(b"")

    spec = DatasetSpec.from_dict({**load_spec("criteo").to_dict(), "max_line_bytes": CORRUPT_MAX_LINE})
    examples, error = run_example_gen(root / "out", input_base=str(data), dataset_spec=spec.to_json(),
                                      max_bad_fraction=0.01)
    parser = line_parser.LineParser(spec)
    expected_examples = collections.Counter(parser.parse(line.decode()).example for line in good_lines)
    return examples, error, {"bad": expected_bad, "examples": expected_examples, "rows": 260,
                             "negatives": 4}


def test_corrupted_counts_exact(corrupted):
    examples, _, expected = corrupted
    p = props_of(examples)
    assert p["quarantined_by_reason"] == {"wrong_field_count": 4, "non_numeric_int": 3, "bad_label": 2,
                                          "undecodable_bytes": 1, "oversized_line": 1}
    assert p["rows_read"] == expected["rows"] == 260
    assert p["rows_quarantined"] == 11
    assert p["rows_read"] == p["rows_emitted"] + p["rows_quarantined"]
    assert p["negative_ints_by_field"] == {"I1": expected["negatives"]}
    assert examples.get_int_custom_property("files_read") == 3  # the empty file counts as read


def test_corrupted_nothing_lost(corrupted):
    examples, _, expected = corrupted
    records = read_quarantine(examples.uri)
    got_bad = {(os.path.basename(r["file"]), r["line_number"]): r["reason"] for r in records}
    assert got_bad == expected["bad"]
    assert len(records) == len(got_bad)  # no duplicates
    emitted = collections.Counter(read_examples(examples.uri, "train") + read_examples(examples.uri, "eval"))
    assert emitted == expected["examples"]  # every good line, exactly once, parsed as expected
    oversized = next(r for r in records if r["reason"] == "oversized_line")
    assert oversized["truncated"] and oversized["line_bytes"] > 5000
    assert len(oversized["line"]) == line_parser.PREVIEW_BYTES  # only the start is kept
    undecodable = next(r for r in records if r["reason"] == "undecodable_bytes")
    assert "caf\\xe9" in undecodable["line"]  # the raw byte kept, repr-safe
    crlf_bad = next(r for r in records if r["file"].endswith("b.tsv"))
    assert crlf_bad["line"].endswith("one-too-many")  # CR stripped
    assert props_of(examples)["quarantine_uri"] == os.path.join(examples.uri, "quarantine")


def test_corrupted_over_threshold_fails_with_counts(corrupted):
    _, error, _ = corrupted
    assert isinstance(error, executor_lib.BadRowsError)
    message = str(error)
    assert "\n" not in message
    assert "11 of 260 rows quarantined (4.23%)" in message and "max_bad_fraction 1.00%" in message
    assert '"bad_label": 2' in message and '"wrong_field_count": 4' in message


def test_threshold_boundary():
    counts = {"rows_read": 100, "rows_quarantined": 1, "quarantined_by_reason": {"bad_label": 1}}
    executor_lib.check_bad_fraction(counts, 0.01, "q")  # 1% is allowed
    with pytest.raises(executor_lib.BadRowsError, match="2 of 100 rows"):
        executor_lib.check_bad_fraction({**counts, "rows_quarantined": 2}, 0.01, "q")


def test_no_rows_fails_clearly(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "empty.tsv").write_bytes(b"")
    _, error = run_example_gen(tmp_path / "out", input_base=str(tmp_path / "data"), dataset_spec="criteo")
    assert isinstance(error, executor_lib.BadRowsError) and "no rows read" in str(error)


# -- quarantine bounds and durability ----------------------------------------------------------------
GOOD_CRITEO_LINE = "\t".join(["1"] + ["1"] * 13 + ["a"] * 26)


def test_quarantine_flood_is_capped_with_exact_counts(tmp_path):
    """200k blank lines write 50 records (not 200k), yet every bad line is counted."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tsv").write_text("\n" * 200_000 + (GOOD_CRITEO_LINE + "\n") * 20)
    bad_label = "\t".join(["7"] + ["1"] * 13 + ["a"] * 26)
    # One non-UTF-8 line over max_line_bytes (65536): its record keeps only the line's start.
    (data / "b.tsv").write_bytes((bad_label + "\n").encode() * 300 + b"\xfe" * 100_000 + b"\n")
    examples, error = run_example_gen(tmp_path / "out", input_base=str(data), dataset_spec="criteo",
                                      max_bad_fraction=1.0, max_quarantine_records_per_reason=50)
    assert error is None
    p = props_of(examples)
    assert p["quarantined_by_reason"] == {"wrong_field_count": 200_000, "bad_label": 300, "oversized_line": 1}
    assert (p["rows_read"], p["rows_emitted"], p["rows_quarantined"]) == (200_321, 20, 200_301)
    assert examples.get_int_custom_property("quarantine_records_dropped") == 199_950 + 250
    assert json.loads(examples.get_string_custom_property("quarantine_records_dropped_by_reason")) == {
        "wrong_field_count": 199_950, "bad_label": 250}

    records = read_quarantine(examples.uri)
    kept = collections.Counter((r["reason"], os.path.basename(r["file"])) for r in records)
    assert kept == {("wrong_field_count", "a.tsv"): 50, ("bad_label", "b.tsv"): 50, ("oversized_line", "b.tsv"): 1}
    assert sorted(r["line_number"] for r in records if r["reason"] == "wrong_field_count") == list(range(1, 51))
    oversized = next(r for r in records if r["reason"] == "oversized_line")
    assert oversized["truncated"] and oversized["line_bytes"] == 100_000
    assert oversized["line"].startswith("\\xfe")
    assert len(json.dumps(oversized["line"])) <= line_parser.MAX_LINE_JSON_CHARS + 2
    record_bytes = sum(os.path.getsize(f) for f in glob.glob(os.path.join(p["quarantine_uri"], "records-*")))
    assert record_bytes < 100 * 1024 + line_parser.MAX_LINE_JSON_CHARS + 1024  # the old code wrote ~35 MB

    counts_file, = glob.glob(os.path.join(p["quarantine_uri"], "counts-*.json"))
    with open(counts_file) as f:
        by_file = {os.path.basename(k): v for k, v in json.load(f)["by_file"].items()}
    assert by_file["a.tsv"]["records_dropped_by_reason"] == {"wrong_field_count": 199_950}
    assert by_file["b.tsv"]["records_dropped_by_reason"] == {"bad_label": 250}


def test_failed_run_keeps_quarantine_where_tfx_does_not_delete_it(tmp_path):
    """Through LocalDagRunner: the launcher deletes the failed execution's Examples (quarantine
    inside); the copy under <pipeline_root>/<node>/quarantine/<execution id> stays and the error
    names it."""
    from tfx import v1 as tfx
    from tfx.orchestration import metadata

    data = tmp_path / "data"
    data.mkdir()
    (data / "a.tsv").write_text("\n" * 3000 + (GOOD_CRITEO_LINE + "\n") * 10)
    root = tmp_path / "pipeline_root"
    gen = ClickLogExampleGen(input_base=str(data), dataset_spec="criteo", max_quarantine_records_per_reason=100)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="quarantine-durability", pipeline_root=str(root), components=[gen],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(tmp_path / "mlmd.sqlite")))
    with pytest.raises(executor_lib.BadRowsError) as raised:
        tfx.orchestration.LocalDagRunner().run(pipeline)

    node_dir = root / "ClickLogExampleGen"
    executions = os.listdir(node_dir / "quarantine")
    assert len(executions) == 1
    durable = node_dir / "quarantine" / executions[0]
    assert not (node_dir / "examples" / executions[0]).exists()  # TFX removed the failed outputs
    message = str(raised.value)
    assert "\n" not in message and f"records in {durable} " in message
    assert "3000 of 3010 rows quarantined" in message and "2900 of them counted, not stored" in message
    records = []
    for path in glob.glob(str(durable / "records-*.jsonl")):
        with open(path) as f:
            records.extend(json.loads(line) for line in f)
    assert len(records) == 100 and {r["reason"] for r in records} == {"wrong_field_count"}
    counts_file, = glob.glob(str(durable / "counts-*.json"))
    with open(counts_file) as f:
        counts = json.load(f)
    assert counts["rows_read"] == 3010 and counts["quarantined_by_reason"] == {"wrong_field_count": 3000}
    assert counts["records_dropped_by_reason"] == {"wrong_field_count": 2900}


def test_durable_quarantine_dir():
    assert executor_lib.durable_quarantine_dir("/root/ClickLogExampleGen/examples/17") == \
        "/root/ClickLogExampleGen/quarantine/17"
    assert executor_lib.durable_quarantine_dir("gs://b/root/Gen/examples/3/") == "gs://b/root/Gen/quarantine/3"
    assert executor_lib.durable_quarantine_dir("/out/examples") == "/out/examples-quarantine"


# -- spans ------------------------------------------------------------------------------------------
def _write_span(root: Path, folder: str, rows: int, label: str):
    (root / folder).mkdir(parents=True)
    line = "\t".join([label] + ["1"] * 13 + ["a"] * 26)
    (root / folder / "clicks.tsv").write_text("\n".join([line] * rows) + "\n")


def test_window_patterns_resolves_older_spans_and_skips_missing(tmp_path):
    for span, rows in ((1, 1), (2, 2), (4, 4)):
        _write_span(tmp_path, f"day-{span:03d}", rows, "0")
    component = ClickLogExampleGen(input_base=str(tmp_path), dataset_spec="criteo",
                                   # zero-padded span numbers need TFX's width spec {SPAN:3}
                                   **ingestion_kwargs("day-{SPAN:3}/*", span_window=3))
    props = example_gen_driver.FileBasedDriver(None).resolve_exec_properties(
        _exec_properties(component), None, None)
    assert props["span"] == 4
    assert executor_lib.window_patterns(props) == {"day-004/*": ["day-002/*", "day-004/*"]}  # span 3 missing
    props[executor_lib.SPAN_WINDOW_KEY] = 1
    assert executor_lib.window_patterns(props) == {"day-004/*": ["day-004/*"]}


def test_window_patterns_with_date_specs(tmp_path):
    for day in ("2026-11-25", "2026-11-26", "2026-11-27"):
        _write_span(tmp_path, day, 1, "1")
    component = ClickLogExampleGen(input_base=str(tmp_path), dataset_spec="criteo",
                                   **ingestion_kwargs("{YYYY}-{MM}-{DD}/*", span_window=2))
    props = example_gen_driver.FileBasedDriver(None).resolve_exec_properties(
        _exec_properties(component), None, None)
    assert executor_lib.window_patterns(props) == {"2026-11-27/*": ["2026-11-26/*", "2026-11-27/*"]}


def test_span_window_end_to_end_with_static_range(tmp_path):
    data = tmp_path / "data"
    for span, rows in ((1, 3), (2, 5), (3, 7), (4, 11)):
        _write_span(data, f"day-{span}", rows, "1")
    # The window ends at span 3 (static range), so spans 2 and 3 are read: 5 + 7 rows.
    examples, error = run_example_gen(
        tmp_path / "out", input_base=str(data), dataset_spec="criteo", span_window=2,
        input_config=input_config_for("day-{SPAN}/*"),
        range_config=range_config_pb2.RangeConfig(
            static_range=range_config_pb2.StaticRange(start_span_number=3, end_span_number=3)))
    assert error is None
    assert examples.get_int_custom_property("rows_read") == 12
    assert examples.get_int_custom_property("files_read") == 2


def test_constructor_validation():
    with pytest.raises(ValueError, match="span_window"):
        ClickLogExampleGen(input_base="/x", dataset_spec="criteo", span_window=3)  # no {SPAN} in '*'
    with pytest.raises(ValueError, match="max_bad_fraction"):
        ClickLogExampleGen(input_base="/x", dataset_spec="criteo", max_bad_fraction=1.5)
    with pytest.raises(Exception, match="no such spec"):
        ClickLogExampleGen(input_base="/x", dataset_spec="no-such-format")
    c = ClickLogExampleGen(input_base="/x", dataset_spec="criteo")
    output_config = proto_utils.json_to_proto(c.exec_properties["output_config"], example_gen_pb2.Output())
    assert output_config == default_output_config(input_config_for("*"))
    assert [(s.name, s.hash_buckets) for s in output_config.split_config.splits] == [("train", 8), ("eval", 2)]
    assert isinstance(c.exec_properties["max_bad_fraction"], float)
    assert DatasetSpec.from_json(c.exec_properties["dataset_spec"]) == load_spec("criteo")
    assert list(c.outputs) == ["examples"]


def test_compiles_with_kubeflow_v2(tmp_path):
    kubeflow_v2 = pytest.importorskip("tfx.orchestration.kubeflow.v2.kubeflow_v2_dag_runner")
    from tfx.orchestration import pipeline as tfx_pipeline

    gen = ClickLogExampleGen(input_base="gs://bucket/clicks", dataset_spec="avazu", span_window=3,
                             input_config=input_config_for("day-{SPAN}/*.csv"))
    p = tfx_pipeline.Pipeline(pipeline_name="click-log-ingest", pipeline_root="gs://bucket/root",
                              components=[gen])
    runner = kubeflow_v2.KubeflowV2DagRunner(
        config=kubeflow_v2.KubeflowV2DagRunnerConfig(default_image="image:tag"),
        output_dir=str(tmp_path), output_filename="pipeline.json")
    compiled = runner.run(p, write_out=False)
    text = json.dumps(compiled)
    assert "max_bad_fraction" in text and "span_window" in text and "dataset_spec" in text
