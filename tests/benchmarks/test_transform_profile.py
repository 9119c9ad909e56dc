"""benchmarks/transform_profile.py: the clocks, the report and the committed result docs/ingestion.md quotes."""
import collections
import json
import os
import sys
import types

import pytest

from benchmarks import transform_profile


@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType("transform_profile_fake")

    class Batch:
        def __init__(self, num_rows):
            self.num_rows = num_rows

    class Reader:
        def process(self, sizes):
            for size in sizes:
                yield Batch(size)

    def encode(batch):
        return [b"x"] * batch.num_rows

    module.Reader, module.encode, module.Batch = Reader, encode, Batch
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(transform_profile, "_TOTALS", collections.defaultdict(float))
    monkeypatch.setattr(transform_profile, "_ROWS", collections.Counter())
    monkeypatch.setattr(transform_profile, "_CALLS", collections.Counter())
    return module


def test_clocks_count_the_calls_and_rows_of_a_generator_and_a_function(fake_module):
    steps = (transform_profile.Step("read", fake_module.__name__, "Reader.process", "r",
                                    transform_profile._rows_of_result),
             transform_profile.Step("encode", fake_module.__name__, "encode", "e", lambda args, result: len(result)))
    transform_profile.install_clocks(steps)
    assert [b.num_rows for b in fake_module.Reader().process([3, 4])] == [3, 4]  # items pass through unchanged
    assert fake_module.encode(fake_module.Batch(5)) == [b"x"] * 5
    assert transform_profile._CALLS["read"] == 3  # two items, then the generator's end
    assert transform_profile._ROWS["read"] == 7
    assert (transform_profile._CALLS["encode"], transform_profile._ROWS["encode"]) == (1, 5)
    assert transform_profile._TOTALS["read"] >= 0 and transform_profile._TOTALS["encode"] >= 0


def _committed():
    with open(os.path.join(transform_profile.REPO, "benchmarks", "results", "transform_profile.json")) as f:
        return json.load(f)


def test_the_committed_text_is_the_report_of_the_committed_json():
    with open(os.path.join(transform_profile.REPO, "benchmarks", "results", "transform_profile.txt")) as f:
        assert f.read() == transform_profile.format_report(_committed())


def test_every_step_of_the_committed_run_was_clocked():
    # A step whose function was renamed upstream would silently show 0 calls.
    steps = _committed()["steps"]
    assert all(steps[step.name]["calls"] > 0 for step in transform_profile.STEPS), steps


def test_docs_quote_the_committed_run():
    result = _committed()
    floor = result["read_floor"]["seconds"] / result["read_floor"]["rows"] * 1e6
    read = result["steps"]["read"]["seconds"] / result["steps"]["read"]["rows"] * 1e6
    with open(os.path.join(transform_profile.REPO, "docs", "ingestion.md")) as f:
        docs = f.read()
    assert f"{floor:.1f} us a row" in docs
    assert f"{read:.1f} us a row" in docs
    parquet = result["parquet"]
    assert parquet["rows"] == result["rows"] and parquet["vocabulary_sha256"] == result["vocabulary_sha256"]
    assert f"Do() {parquet['seconds']:.1f} s against {result['seconds']:.1f} s" in docs
    assert f"{parquet['seconds'] / result['seconds']:.2f}x" in docs
    analysis_only = result["analysis_only"]
    assert analysis_only["vocabulary_sha256"] == result["vocabulary_sha256"]
    # 0 in the committed run (before ingest_bench counted ExampleGen's rows without materializing)
    assert analysis_only["rows"] in (0, result["rows"])
    assert f"Do() {analysis_only['seconds']:.1f} s against {result['seconds']:.1f} s" in docs
    example_gen = result["example_gen"]
    parse = result["parse_floor"]["seconds"]
    without = (example_gen["seconds"] + analysis_only["seconds"]) / parse
    assert f"{without:.1f}x" in docs and f"{(example_gen['seconds'] + result['seconds']) / parse:.1f}x" in docs
    rates = result["trainer_input"]["examples_per_s"]
    assert f"{rates['on_the_fly']:,.0f} examples/s against {rates['transformed']:,.0f}" in docs
