"""The fast path (block_parsing + writing) against the per-line path it must equal exactly.

Every comparison runs ``parsing.FileParser`` twice on the same bytes, ``fast=True`` (blocks through
Arrow, per-line only for the lines the block parser hands back) and ``fast=False`` (the per-line
parser for every line), and asserts the same serialized examples in the same order, the same
quarantine records and the same counts. Small block sizes put block boundaries everywhere.
"""
import gzip
import io
import json
import os
import random

import numpy as np
import pytest

from components.click_log_example_gen import block_parsing, line_parser, parsing, writing
from components.dataset_spec import DatasetSpec, load_spec

CRITEO = load_spec("criteo")
SAMPLES = [  # (spec, file under ../shared/data)
    ("criteo", "criteo/wide-resdnn/train.csv"),
    ("criteo", "criteo/wide-resdnn/dev.csv"),
    ("criteo", "criteo/wide-resdnn/test.csv"),
    ("criteo-kaggle", "criteo/kaggle-2014-criteo/tr.rx.csv"),
    ("avazu", "avazu/wide-resdnn/train.csv"),
    ("avazu", "avazu/wide-resdnn/dev.csv"),
    ("avazu", "avazu/wide-resdnn/test.csv"),
    ("avazu", "avazu/deepctr/avazu_sample.txt"),
]


def run(spec, data: bytes, fast: bool, block_bytes=None, max_records=1000, path="/d/f.tsv"):
    parser = parsing.FileParser(spec, max_records, fast=fast, block_bytes=block_bytes)
    examples, records, counts, progress = [], [], None, {}

    def on_progress(deltas):
        for k, v in deltas.items():
            progress[k] = progress.get(k, 0) + v

    for kind, value in parser.parse(io.BytesIO(data), path, on_progress):
        if kind == "examples":
            examples.extend(value.to_pylist())
        elif kind == "quarantine":
            records.append(value)
        else:
            counts = value
    return examples, records, counts, progress


def assert_same(spec, data: bytes, block_sizes=(None, 64, 1000), max_records=1000):
    reference = run(spec, data, fast=False, max_records=max_records)
    assert parsing.FileParser(spec, fast=True).block_parser is not None
    for block_bytes in block_sizes:
        got = run(spec, data, fast=True, block_bytes=block_bytes, max_records=max_records)
        assert got[0] == reference[0], f"examples differ (block_bytes={block_bytes})"
        assert got[1] == reference[1], f"quarantine records differ (block_bytes={block_bytes})"
        assert got[2] == reference[2], f"counts differ (block_bytes={block_bytes})"
        assert got[3] == reference[3], f"counters differ (block_bytes={block_bytes})"
    return reference


def criteo_line(i: int, label="1", fields=None) -> bytes:
    f = [label] + [str(i % 97 - 3), "", str(i * 7919 % 100000)] + [str(i % 5)] * 10 + [
        f"{(i * 2654435761) % (1 << 32):08x}", ""] + [f"v{i % 13}"] * 24
    if fields:
        for k, v in fields.items():
            f[k] = v
    return "\t".join(f).encode()


# -- lines and blocks -------------------------------------------------------------------------------
def lines_of_blocks(stream, max_line_bytes, block_bytes):
    """iter_blocks expanded into iter_numbered_lines' (line_number, content, line_bytes)."""
    parser = block_parsing.BlockParser(CRITEO)
    out = []
    for item in block_parsing.iter_blocks(stream, max_line_bytes, block_bytes):
        if isinstance(item, block_parsing.LongLine):
            out.append((item.line_number, item.content, item.line_bytes))
            continue
        arr, starts, ends = parser._line_bounds(item.data)
        result = block_parsing.BlockResult(len(ends), np.arange(0), None, {}, {}, starts, ends)
        for i in range(len(ends)):
            content, n = result.line(item.data, i, max_line_bytes)
            out.append((item.first_line_number + i, content, n))
    return out


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 7, 64, 5000, 1 << 20])
@pytest.mark.parametrize("max_line_bytes", [3, 10, 4096, 70000])
def test_blocks_yield_the_lines_of_the_line_reader(block_bytes, max_line_bytes):
    rng = random.Random(block_bytes * 31 + max_line_bytes)
    pieces = []
    for _ in range(60):
        n = rng.choice([0, 1, 2, 5, 9, 10, 11, 100, 4095, 4096, 4097, 6000])
        pieces.append(bytes(rng.choice(b"ab\t\r\x00\xff") for _ in range(n)) + rng.choice([b"\n", b"\r\n"]))
    for data in (b"".join(pieces), b"".join(pieces)[:-1], b"", b"\n", b"x", b"\r", b"a\r\r\n", b"z" * 9000):
        expected = list(line_parser.iter_numbered_lines(io.BytesIO(data), max_line_bytes))
        monkey_preview = line_parser.PREVIEW_BYTES
        assert monkey_preview == 4096
        assert lines_of_blocks(io.BytesIO(data), max_line_bytes, block_bytes) == expected


# -- real samples -----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec_name, sample", SAMPLES)
def test_real_samples_same_examples_records_and_counts(spec_name, sample, shared_data):
    with open(os.path.join(shared_data, sample), "rb") as f:
        data = f.read()
    examples, records, counts, _ = assert_same(load_spec(spec_name), data, block_sizes=(None, 4096))
    assert counts["rows_read"] == counts["rows_emitted"] + counts["rows_quarantined"]
    assert len(examples) == counts["rows_emitted"] > 0


def test_float_formatted_sample_same_as_per_line(shared_data, tmp_path):
    """criteo/deepctr: comma CSV with header and integers written as floats (allow_float_format)."""
    with open(os.path.join(shared_data, "criteo", "deepctr", "criteo_sample.txt"), "rb") as f:
        data = f.read()
    ints = [{"name": f"I{i}", "kind": "int", "allow_float_format": True} for i in range(1, 14)]
    cats = [{"name": f"C{i}", "kind": "categorical"} for i in range(1, 27)]
    spec = DatasetSpec.from_dict({"name": "deepctr", "delimiter": ",", "header": True,
                                  "columns": [{"name": "label", "kind": "label"}] + ints + cats})
    examples, _, counts, _ = assert_same(spec, data)
    assert counts["rows_emitted"] == 200 and counts["headers_skipped"] == 1


# -- corrupted input: every reason, CRLF, no final newline, empty file, oversized lines -----------
def corrupted_criteo(seed=0, n=400):
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        line = criteo_line(i, label=str(i % 2))
        kind = rng.random()
        if kind < 0.03:
            line = line.rsplit(b"\t", 1)[0]  # wrong_field_count (39 fields)
        elif kind < 0.05:
            line = line + b"\tx"  # wrong_field_count (41)
        elif kind < 0.06:
            line = b""  # empty line: wrong_field_count
        elif kind < 0.08:
            line = b"\t".join([rng.choice([b"2", b"", b"-1", b"1.0", b" 1", b"01", b"1 "])] + line.split(b"\t")[1:])
        elif kind < 0.11:
            f = line.split(b"\t")
            f[rng.randrange(1, 14)] = rng.choice([b"abc", b"1.5", b"12_000", b"0x1", b"+5", b" 5", b"5 ", b"-",
                                                  b"9223372036854775807", b"9223372036854775808",
                                                  b"-9223372036854775808", b"1234567890123456789", b"007",
                                                  b"-0", "\u0663".encode(), b"1e3", b"\xa0"])
            line = b"\t".join(f)
        elif kind < 0.12:
            line = line[:20] + b"\xff\xfe" + line[20:]  # undecodable_bytes
        elif kind < 0.13:
            line = line + b"caf\xc3\xa9"  # valid UTF-8 in the last categorical
        elif kind < 0.14:
            line = line.replace(b"\tv", b"\tz" * 30, 1) + b"y" * 3000  # oversized (max_line_bytes 2048)
        elif kind < 0.15:
            line = line[:30] + b"\r" + line[30:]  # a bare CR inside a line
        elif kind < 0.16:
            line = line + b"\x00\x0b\x0c\x1c\""  # odd bytes and a quote in a categorical
        elif kind < 0.17:
            line = line.replace(b"\t", b"\t\"", 1)  # a quote opening a field
        lines.append(line)
    return lines


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ending", [b"\n", b"\r\n"])
@pytest.mark.parametrize("final_newline", [True, False])
def test_corrupted_input_same_examples_records_and_counts(seed, ending, final_newline):
    spec = DatasetSpec.from_dict({**CRITEO.to_dict(), "max_line_bytes": 2048})
    data = ending.join(corrupted_criteo(seed))
    if final_newline:
        data += ending
    examples, records, counts, _ = assert_same(spec, data, block_sizes=(None, 64, 3000, 100000))
    reasons = counts["quarantined_by_reason"]
    assert set(reasons) == set(line_parser.QUARANTINE_REASONS), reasons  # every reason is exercised
    assert counts["rows_read"] == counts["rows_emitted"] + counts["rows_quarantined"]
    assert len(records) == counts["rows_quarantined"]


def test_record_cap_per_reason_same_on_both_paths():
    spec = DatasetSpec.from_dict({**CRITEO.to_dict(), "max_line_bytes": 2048})
    lines = corrupted_criteo(3, n=3000) + [b""] * 500 + [criteo_line(1, label="7")] * 40
    _, records, counts, _ = assert_same(spec, b"\n".join(lines) + b"\n", block_sizes=(None, 5000), max_records=3)
    assert len(records) == sum(min(3, n) for n in counts["quarantined_by_reason"].values())
    assert sum(counts["records_dropped_by_reason"].values()) == counts["rows_quarantined"] - len(records)


def test_empty_file_and_only_blank_lines():
    for data in (b"", b"\n", b"\r\n\r\n", b"\n" * 1000):
        assert_same(CRITEO, data)


def test_line_longer_than_a_block_is_quarantined_with_its_preview():
    spec = DatasetSpec.from_dict({**CRITEO.to_dict(), "max_line_bytes": 300})
    data = criteo_line(1) + b"\n" + b"q" * 50000 + b"\r\n" + criteo_line(2) + b"\n" + b"w" * 9000
    _, records, counts, _ = assert_same(spec, data, block_sizes=(None, 1000, 64))
    oversized = [json.loads(r) for r in records if json.loads(r)["reason"] == "oversized_line"]
    assert [(r["line_number"], r["line_bytes"]) for r in oversized] == [(2, 50000), (4, 9000)]


def test_header_bom_and_first_lines():
    spec = load_spec("criteo-kaggle")
    header = b"Id,Label," + b",".join(f"I{i}".encode() for i in range(1, 14)) + b"," + b",".join(
        f"C{i}".encode() for i in range(1, 27))
    row = b",".join([b"7", b"1"] + [b"3"] * 13 + [b"ab"] * 26)
    for data in (header + b"\n" + row + b"\n", b"\xef\xbb\xbf" + header + b"\r\n" + row,
                 row + b"\n" + row, b"\xef\xbb\xbf" + row + b"\n" + header + b"\n",
                 header.lower() + b"\n" + row, b"id,label\n" + row):
        assert_same(spec, data)


def test_avazu_derived_columns_and_underivable(shared_data):
    spec = load_spec("avazu")
    with open(os.path.join(shared_data, "avazu", "wide-resdnn", "dev.csv"), "rb") as f:
        lines = f.read().splitlines()
    mutated = []
    for i, line in enumerate(lines):
        f = line.split(b",")
        if i % 7 == 3 and len(f) > 2:
            f[2] = [b"14139999", b"1410210", b"", b"14102124", b"x4102100"][i % 5]
        mutated.append(b",".join(f))
    _, _, counts, _ = assert_same(spec, b"\n".join(mutated) + b"\n")
    assert counts["underivable_by_field"]  # the mutations were seen


def test_spec_with_a_multibyte_delimiter_reads_per_line():
    spec = DatasetSpec.from_dict({"name": "t", "delimiter": "\u00a6", "columns": [
        {"name": "label", "kind": "label"}, {"name": "n", "kind": "int"}]})
    assert parsing.FileParser(spec).block_parser is None
    examples, _, counts, _ = run(spec, "1\u00a65\n0\u00a6x\n".encode(), fast=True)
    assert counts["rows_emitted"] == 1 and len(examples) == 1


def test_random_fuzz_lines_against_per_line_parser():
    spec = DatasetSpec.from_dict({"name": "t", "delimiter": ",", "columns": [
        {"name": "label", "kind": "label"}, {"name": "n", "kind": "int"},
        {"name": "m", "kind": "int", "allow_float_format": True}, {"name": "c", "kind": "categorical"},
        {"name": "skip", "kind": "ignore"}]})
    rng = random.Random(11)
    alphabet = [b"0", b"1", b"7", b"-", b"+", b".", b" ", b",", b"\t", b"\r", b"\"", b"a", b"\xc3\xa9", b"\xff", b"00",
                b"99999999999999999999", b"e"]
    lines = []
    for _ in range(3000):
        if rng.random() < 0.5:
            fields = [rng.choice([b"0", b"1"]), str(rng.randrange(-1000, 1000)).encode(),
                      rng.choice([b"", b"3.0", b"-4.", b"12", b"1.50"]), rng.choice([b"", b"x", b"y z"]), b"i"]
            lines.append(b",".join(fields))
        else:
            lines.append(b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))))
    assert_same(spec, b"\n".join(lines), block_sizes=(None, 37, 500))


# -- the split and the files --------------------------------------------------------------------------
@pytest.mark.parametrize("buckets", [[8, 2], [1, 1, 1], [3, 7], [5]])
def test_hash_split_equals_tfx_partition_fn(buckets):
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.proto import example_gen_pb2

    rng = random.Random(5)
    records = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 700))) for _ in range(3000)]
    cumulative = list(np.cumsum(buckets))
    split_config = example_gen_pb2.SplitConfig()
    expected = [_PartitionFn(r, len(buckets), cumulative, split_config) for r in records]
    assert writing.HashSplitter(buckets).assign(records).tolist() == expected
    assert [writing.tfx_partition(r, cumulative) for r in records] == expected


def test_written_shards_read_back_with_tf_data_and_tfxio(tmp_path):
    import pyarrow as pa
    import tensorflow as tf

    from tfx_bsl.tfxio import record_based_tfxio

    rng = random.Random(9)
    records = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 127, 128, 600, 20000])))
               for _ in range(2000)]
    paths = [str(tmp_path / "a.gz"), str(tmp_path / "b.gz")]
    writer = writing.SplitWriter(paths, [8, 2])
    for i in range(0, len(records), 300):
        writer.write(pa.array(records[i:i + 300], pa.binary()))
    writer.close()
    assigned = writing.HashSplitter([8, 2]).assign(records)
    for k, path in enumerate(paths):
        expected = [r for r, s in zip(records, assigned) if s == k]
        assert [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")] == expected
        with gzip.open(path) as f:  # the framing, checked independently of TF
            data = f.read()
        assert len(data) == sum(16 + len(r) for r in expected)
    import apache_beam as beam
    from apache_beam.testing.util import assert_that, equal_to
    with beam.Pipeline() as p:
        got = p | record_based_tfxio.ReadTfRecord([str(tmp_path / "*.gz")])
        assert_that(got, equal_to(records))
    assert sorted(os.listdir(tmp_path)) == ["a.gz", "b.gz"]  # no temporary files left


def test_fast_path_takes_the_good_lines_of_a_dirty_block():
    """Bad lines go to the per-line parser one by one, not their whole block."""
    spec = DatasetSpec.from_dict({**CRITEO.to_dict(), "max_line_bytes": 2048})
    lines = corrupted_criteo(4, n=2000)
    data = b"\n".join(lines) + b"\n"
    result = block_parsing.BlockParser(spec).parse(data, first_line_of_file=True)
    reference = run(spec, data, fast=False)[2]
    assert result.num_lines == 2000
    # the quarantined lines, the first line, and the good lines the fast path leaves to the
    # per-line parser (" 5", "+5", 19 digits, a bare CR in a value: accepted per line, not by the
    # strict fast checks): ~2.5% of these lines, against ~12% quarantined
    assert reference["rows_quarantined"] < len(result.slow) < reference["rows_quarantined"] + 80
    assert len(result.examples) == 2000 - len(result.slow)


# -- the executor: splits and files as TFX's ExampleGen would have written them ---------------------------
def test_executor_output_equals_per_line_examples_in_tfx_splits(tmp_path, shared_data):
    """Each split holds exactly the per-line parser's examples that TFX's _PartitionFn puts there;
    payload format, split names and quarantine as before; no temporary files left."""
    import glob

    import tensorflow as tf
    from tfx.components.example_gen.base_example_gen_executor import _PartitionFn
    from tfx.components.util import examples_utils
    from tfx.proto import example_gen_pb2

    from tests.components.test_click_log_example_gen import read_quarantine, run_example_gen

    data = tmp_path / "data"
    data.mkdir()
    with open(os.path.join(shared_data, "criteo", "wide-resdnn", "dev.csv"), "rb") as f:
        (data / "real.tsv").write_bytes(f.read())
    corrupt = corrupted_criteo(7, n=600)
    (data / "corrupt.tsv").write_bytes(b"\r\n".join(corrupt))  # CRLF, no final newline
    (data / "empty.tsv").write_bytes(b"")
    spec = DatasetSpec.from_dict({**CRITEO.to_dict(), "max_line_bytes": 2048})
    examples, error = run_example_gen(tmp_path / "out", input_base=str(data), dataset_spec=spec.to_json(),
                                      max_bad_fraction=0.5)
    assert error is None
    expected = {"train": [], "eval": []}
    expected_records = []
    for name in sorted(os.listdir(data)):
        path = str(data / name)
        got_examples, records, _, _ = run(spec, (data / name).read_bytes(), fast=False, path=path)
        expected_records += records
        for e in got_examples:
            split = _PartitionFn(e, 2, [8, 10], example_gen_pb2.SplitConfig())
            expected["train" if split == 0 else "eval"].append(e)
    for split in ("train", "eval"):
        files = sorted(glob.glob(os.path.join(examples.uri, f"Split-{split}", "*")))
        assert [os.path.basename(f) for f in files] == [f"data_tfrecord-0000{i}-of-00003.gz" for i in range(3)]
        got = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        assert got == expected[split]  # file order = sorted input files, line order within
    assert examples.split_names == '["train", "eval"]'
    assert examples_utils.get_payload_format(examples) == example_gen_pb2.FORMAT_TF_EXAMPLE
    assert sorted(json.dumps(r, sort_keys=True) for r in read_quarantine(examples.uri)) == sorted(
        json.dumps(json.loads(r), sort_keys=True) for r in expected_records)
    assert not glob.glob(os.path.join(examples.uri, "Split-*", ".*"))


def test_shard_plan_gives_a_big_file_several_shards():
    assert writing.shard_plan([0, 10, 100], shard_input_bytes=50) == ([(0, 1), (1, 1), (2, 2)], 4)
    assert writing.shard_plan([], shard_input_bytes=50) == ([], 0)
    assert writing.shard_plan([50, 51], shard_input_bytes=50) == ([(0, 1), (1, 2)], 3)


def test_split_writer_spreads_blocks_over_a_splits_shards(tmp_path):
    import pyarrow as pa
    import tensorflow as tf

    rng = random.Random(3)
    records = [bytes(rng.randrange(256) for _ in range(rng.choice([1, 40, 300]))) for _ in range(3000)]
    paths = [[str(tmp_path / f"train-{i}.gz") for i in range(3)], [str(tmp_path / "eval-0.gz")]]
    writer = writing.SplitWriter(paths, [8, 2])
    blocks = [records[i:i + 100] for i in range(0, len(records), 100)]
    for block in blocks:
        writer.write(pa.array(block, pa.binary()))
    writer.close()
    assigned = writing.HashSplitter([8, 2]).assign(records)

    def read(path):
        return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]

    train = [r for r, s in zip(records, assigned) if s == 0]
    shards = [read(p) for p in paths[0]]
    # block b's train records went to shard b % 3, in order
    for i, shard in enumerate(shards):
        expected = [r for b, block in enumerate(blocks) if b % 3 == i
                    for r, s in zip(block, writing.HashSplitter([8, 2]).assign(block)) if s == 0]
        assert shard == expected
    assert sorted(sum(shards, [])) == sorted(train)
    assert max(map(len, shards)) - min(map(len, shards)) < 200  # about equal
    assert read(paths[1][0]) == [r for r, s in zip(records, assigned) if s == 1]


def test_executor_writes_a_big_input_file_as_several_shards(tmp_path, monkeypatch):
    """Each split of a file bigger than SHARD_INPUT_BYTES has several shards, named k-of-total over
    all files, that hold together exactly the one-shard output's records; counts and quarantine as
    with one shard."""
    import glob

    import tensorflow as tf

    from tests.components.test_click_log_example_gen import read_quarantine, run_example_gen

    data = tmp_path / "data"
    data.mkdir()
    big = b"\n".join(corrupted_criteo(11, n=3000)) + b"\n"
    (data / "a-big.tsv").write_bytes(big)
    (data / "b-small.tsv").write_bytes(b"\n".join(corrupted_criteo(12, n=50)) + b"\n")
    spec = DatasetSpec.from_dict({**CRITEO.to_dict(), "max_line_bytes": 2048})

    def run_with(shard_bytes, block_bytes, out):
        monkeypatch.setattr(writing, "SHARD_INPUT_BYTES", shard_bytes)
        monkeypatch.setattr(block_parsing, "BLOCK_BYTES", block_bytes)
        examples, error = run_example_gen(tmp_path / out, input_base=str(data), dataset_spec=spec.to_json(),
                                          max_bad_fraction=0.5)
        assert error is None
        return examples

    one = run_with(1 << 40, 1 << 14, "one")
    several = run_with(len(big) // 3 + 1, 1 << 14, "several")
    for split in ("train", "eval"):
        names = sorted(os.path.basename(f) for f in glob.glob(os.path.join(several.uri, f"Split-{split}", "*")))
        assert names == [f"data_tfrecord-0000{i}-of-00004.gz" for i in range(4)]
        files = sorted(glob.glob(os.path.join(several.uri, f"Split-{split}", "*")))
        got = [[r.numpy() for r in tf.data.TFRecordDataset(f, compression_type="GZIP")] for f in files]
        assert all(got[:3]), "every shard of the big file has records"
        expected = [r.numpy() for r in tf.data.TFRecordDataset(
            sorted(glob.glob(os.path.join(one.uri, f"Split-{split}", "*"))), compression_type="GZIP")]
        assert sorted(sum(got, [])) == sorted(expected)
    for name in ("rows_read", "rows_emitted", "rows_quarantined"):
        assert several.get_int_custom_property(name) == one.get_int_custom_property(name)
    assert sorted(map(json.dumps, read_quarantine(several.uri))) == sorted(map(json.dumps, read_quarantine(one.uri)))
