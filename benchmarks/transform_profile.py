"""Where Transform's time goes per row: a clock around each of its per-batch steps.

    python -m benchmarks.transform_profile --rows 1000000 --out benchmarks/results/transform_profile

Runs the pipeline's Transform executor (``ingest_bench``'s transform stage: DirectRunner in memory,
in its own process) on the ExampleGen output of generated Criteo-layout logs, with a clock around
each step that runs once per batch of rows (``STEPS``). The train split goes through two passes
(the analysis, then the transform) and the eval split through one, so most steps see more rows than
the data has. After Transform, the same process reads the ExampleGen files again with nothing but
``tf.data`` (TFRecord framing and gunzip, batches of 65,536), the floor of any pass over them, and
the generated CSV files with ``ingest_bench``'s pyarrow parse floor. A second process then runs
the same Transform on the same examples as TFX's Parquet payload (``to_parquet``), which skips the
tf.Example parsing, and a third the same Transform without materializing its output (the analysis
and the transform graph only), for their executor times beside the first.

The encode and gzip steps run on their own threads beside the main one, so the steps' seconds
overlap and do not add up to the executor's wall time; nested steps are part of the step above them.
"""
from __future__ import annotations

import argparse
import collections
import functools
import glob
import importlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, NamedTuple, Optional

from benchmarks import results_files

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows_of_first_arg(args, result):
    return args[1].num_rows  # the RecordBatch a method (args[0]: self) was called with


def _rows_of_result(args, result):
    return result.num_rows


class Step(NamedTuple):
    name: str
    module: str
    attr: str
    what: str
    rows: Optional[Callable]  # (args, result or yielded item) -> rows, None: not counted
    depth: int = 0


STEPS = (
    Step("read", "components.example_io", "_ReadFileFn.process",
         "TFRecord read, gunzip, tf.io.parse_example, RecordBatch (a pass over a file)", _rows_of_result),
    Step("to_record_batch", "components.example_io", "_ReadFileFn._to_record_batch",
         "parsed tensors -> Arrow RecordBatch", _rows_of_result, 1),
    Step("run_graph", "tensorflow_transform.beam.impl", "_RunMetaGraphDoFn._handle_batch",
         "TF Transform runs a graph on a batch (analysis inputs, or the transform)", _rows_of_first_arg),
    Step("feed_dict", "tensorflow_transform.beam.impl", "_RunMetaGraphDoFn._make_feed_dict",
         "RecordBatch -> tensors (tfx_bsl TensorAdapter)", _rows_of_first_arg, 1),
    Step("to_arrow", "tensorflow_transform.beam.impl", "_convert_to_record_batch",
         "transformed tensors -> RecordBatch", None),
    Step("count_tokens", "components.frequent_values", "TokenCountsFn.add_input",
         "vocabulary: a batch's distinct tokens into the combiner", None),
    Step("encode_and_frame", "components.fast_transform", "_WriteTransformedFn._encode_and_write",
         "encode thread: tf.Examples encoded, CRCs, TFRecord framing", _rows_of_first_arg),
    Step("encode", "components.fast_transform", "encode_examples",
         "RecordBatch -> serialized tf.Examples", lambda args, result: args[0].num_rows, 1),
    Step("gzip", "components.click_log_example_gen.writing", "GzipTFRecordWriter._compress_and_write",
         "gzip thread: compress and write", None),
)

_TOTALS: Dict[str, float] = collections.defaultdict(float)
_ROWS: Dict[str, int] = collections.Counter()
_CALLS: Dict[str, int] = collections.Counter()
_LOCK = threading.Lock()


def _add(step: Step, seconds: float, rows: Optional[int]) -> None:
    with _LOCK:
        _TOTALS[step.name] += seconds
        _CALLS[step.name] += 1
        if rows:
            _ROWS[step.name] += rows


def _clocked(step: Step, function):
    """`function` with its time (and rows) added to `step`'s totals; a generator is timed per item."""
    if inspect.isgeneratorfunction(function):
        @functools.wraps(function)
        def generator(*args, **kwargs):
            items = function(*args, **kwargs)
            while True:
                started = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    _add(step, time.perf_counter() - started, None)
                    return
                _add(step, time.perf_counter() - started, step.rows(args, item) if step.rows else None)
                yield item
        return generator

    @functools.wraps(function)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        _add(step, time.perf_counter() - started, step.rows(args, result) if step.rows else None)
        return result
    return timed


def install_clocks(steps=STEPS) -> None:
    for step in steps:
        owner = importlib.import_module(step.module)
        *path, name = step.attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        setattr(owner, name, _clocked(step, getattr(owner, name)))


def step_totals() -> Dict[str, Dict]:
    return {step.name: {"seconds": round(_TOTALS[step.name], 3), "calls": _CALLS[step.name],
                        "rows": _ROWS[step.name] or None} for step in STEPS}


def read_floor(examples_dir: str, repeats: int) -> Dict:
    """Passes over ExampleGen's files with tf.data alone: the fastest of `repeats` (rows, seconds)."""
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(examples_dir, "Split-*", "*.gz")))
    best = None
    for _ in range(repeats):
        started = time.perf_counter()
        rows = 0
        for path in files:
            for batch in tf.data.TFRecordDataset(path, compression_type="GZIP", buffer_size=1 << 22).batch(65536):
                rows += int(batch.shape[0])
        seconds = time.perf_counter() - started
        if best is None or seconds < best["seconds"]:
            best = {"rows": rows, "seconds": round(seconds, 3)}
    return {**best, "repeats": repeats}


def to_parquet(examples_dir: str, out_dir: str) -> Dict:
    """ExampleGen's splits as TFX's Parquet payload: each gzipped TFRecord file of tf.Examples
    rewritten as one Parquet file of the RecordBatches Transform decodes from it; the bytes of each."""
    import pyarrow.parquet as pq

    from components.dataset_spec import load_spec
    from components.example_io import BulkTFExampleRecord, _ReadFileFn
    from components.schema import curated_schema

    schema = curated_schema(load_spec("criteo"))
    arrow_schema = BulkTFExampleRecord("unused", schema=schema).ArrowSchema()
    reader = _ReadFileFn(schema, arrow_schema, 65536)
    reader.setup()
    sizes = {"tfrecord_bytes": 0, "parquet_bytes": 0}
    for path in sorted(glob.glob(os.path.join(examples_dir, "Split-*", "*.gz"))):
        split_dir = os.path.join(out_dir, os.path.basename(os.path.dirname(path)))
        os.makedirs(split_dir, exist_ok=True)
        target = os.path.join(split_dir, os.path.basename(path)[:-len(".gz")] + ".parquet")
        with pq.ParquetWriter(target, arrow_schema) as writer:
            for batch in reader.process(path):
                writer.write_batch(batch)
        sizes["tfrecord_bytes"] += os.path.getsize(path)
        sizes["parquet_bytes"] += os.path.getsize(target)
    return sizes


def trainer_input_rates(examples_dir: str, transform_dir: str, batch_size: int = 256, repeats: int = 2) -> Dict:
    """Examples/s of one pass over the train split as the Trainer's input, the faster of `repeats`
    (alternating), both through ``components.training.input_dataset``: the transformed examples (the
    default), and ExampleGen's raw examples parsed and transformed per batch by the transform graph
    (``data.materialize_transformed: false``)."""
    import tensorflow as tf
    import tensorflow_transform as tft

    from components import training

    tft_output = tft.TFTransformOutput(os.path.join(transform_dir, "graph"))
    schema = tft_output.transformed_metadata.schema

    def transformed():
        return training.input_dataset([os.path.join(transform_dir, "transformed", "Split-train", "*")], None, schema,
                                      batch_size, seed=0, shuffle=False)

    def on_the_fly():
        return training.input_dataset([os.path.join(examples_dir, "Split-train", "*")], None, schema, batch_size,
                                      seed=0, shuffle=False, transform_output=tft_output)

    def one_pass(dataset):
        @tf.function
        def count():
            n = tf.constant(0, tf.int64)
            for _, labels in dataset:
                n += tf.size(labels, out_type=tf.int64)
            return n
        started = time.perf_counter()
        examples = int(count())
        return examples, examples / (time.perf_counter() - started)

    best = {"transformed": 0.0, "on_the_fly": 0.0}
    examples = {}
    for turn in range(repeats):
        for name in (("transformed", "on_the_fly") if turn % 2 == 0 else ("on_the_fly", "transformed")):
            examples[name], rate = one_pass(transformed() if name == "transformed" else on_the_fly())
            best[name] = max(best[name], rate)
    if examples["transformed"] != examples["on_the_fly"]:
        raise RuntimeError(f"the two Trainer inputs read {examples} examples")
    return {"examples": examples["transformed"], "batch_size": batch_size, "repeats": repeats,
            "examples_per_s": {name: round(rate, 1) for name, rate in best.items()}}


def _child(examples_dir: str, data_dir: str, variant: str) -> None:
    from benchmarks import ingest_bench

    with tempfile.TemporaryDirectory(prefix="transform_profile-") as out:
        if variant in ("parquet", "analysis_only"):
            sizes = {}
            if variant == "parquet":
                sizes = to_parquet(examples_dir, os.path.join(out, "parquet"))
                examples_dir = os.path.join(out, "parquet")
            install_clocks()
            result = ingest_bench._child_transform(examples_dir, os.path.join(out, "transform"), "in_memory", 1,  # pylint: disable=protected-access
                                                   parquet=variant == "parquet",
                                                   materialize=variant != "analysis_only")
            result.update(sizes, steps=step_totals())
            print("RESULT " + json.dumps(result), flush=True)
            return
        install_clocks()
        result = ingest_bench._child_transform(examples_dir, out, "in_memory", 1)  # pylint: disable=protected-access
        result["steps"] = step_totals()
        result["trainer_input"] = trainer_input_rates(examples_dir, out)
    result["read_floor"] = read_floor(examples_dir, ingest_bench.PARSE_FLOOR_REPEATS)
    parse_floor = ingest_bench._child_parse_floor(data_dir)  # pylint: disable=protected-access
    result["parse_floor"] = {"rows": parse_floor["rows"], "seconds": round(parse_floor["seconds"], 3),
                             "repeats": parse_floor["repeats"]}
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(examples: str, data: str, variant: str, timeout_s: float) -> Dict:
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.transform_profile", "--child", "--examples", examples,
                           "--data", data, "--variant", variant],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=timeout_s, check=False)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        raise RuntimeError(f"Transform child ({variant}): exit {proc.returncode}: {tail}")
    return json.loads(line[len("RESULT "):])


def run(rows: int, files: int, workdir: str, timeout_s: float) -> Dict:
    from benchmarks import ingest_bench

    data = ingest_bench.generate_data(workdir, rows, files)
    examples = os.path.join(workdir, f"examples-{rows}")
    example_gen = None  # not measured when a --workdir already holds ExampleGen's output
    if not os.path.isdir(os.path.join(examples, "Split-train")):
        gen = ingest_bench.run_child("examplegen", "in_memory", 1, data, examples, timeout_s)
        if "error" in gen:
            raise RuntimeError(f"ExampleGen: {gen['error']}")
        example_gen = {"seconds": round(gen["seconds"], 3), "rows": gen["rows"]}
    load_before = os.getloadavg()[0]
    result = _run_child(examples, data, "tf_example", timeout_s)
    parquet = _run_child(examples, data, "parquet", timeout_s)
    if (parquet["rows"], parquet["vocabulary_sha256"]) != (result["rows"], result["vocabulary_sha256"]):
        raise RuntimeError("Transform on the Parquet payload wrote other rows or another vocabulary")
    analysis_only = _run_child(examples, data, "analysis_only", timeout_s)
    # Its rows are ExampleGen's (ingest_bench counts them without materialized output): the same count.
    if analysis_only["vocabulary_sha256"] != result["vocabulary_sha256"] or analysis_only["rows"] != result["rows"]:
        raise RuntimeError("Transform without materializing made another vocabulary or saw other rows")
    result.update({"generated_rows": rows, "files": files, "cpus": os.cpu_count(), "parquet": parquet,
                   "analysis_only": analysis_only, "example_gen": example_gen,
                   "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
    return result


def format_report(result: Dict) -> str:
    steps = result["steps"]
    floor = result["read_floor"]
    floor_us = floor["seconds"] / floor["rows"] * 1e6 if floor["rows"] else float("nan")
    lines = [
        "Transform's per-batch steps (benchmarks/transform_profile.py): the pipeline's Transform executor, "
        "DirectRunner in memory",
        f"{result['generated_rows']:,} generated Criteo-layout rows in {result['files']} files, ExampleGen output "
        f"(train and eval); {result['rows']:,} transformed rows written; executor Do() {result['seconds']:.1f} s; "
        f"{result['cpus']} CPUs, 1-min load {result['load_average'][0]} -> {result['load_average'][1]}",
        "seconds: the sum of the step's calls (threads overlap; an indented step is part of the one above it); "
        "rows: the rows the step saw (the train split twice: analysis, then transform)",
        "",
        f"{'step':<20} {'seconds':>8} {'calls':>6} {'rows':>11} {'us/row':>7}  what",
        "-" * 110,
    ]
    for step in STEPS:
        s = steps[step.name]
        per_row = f"{s['seconds'] / s['rows'] * 1e6:7.2f}" if s["rows"] else f"{'':>7}"
        rows = f"{s['rows']:,}" if s["rows"] else ""
        lines.append(f"{'  ' * step.depth + step.name:<20} {s['seconds']:8.2f} {s['calls']:6d} {rows:>11} {per_row}  "
                     f"{step.what}")
    parse = result["parse_floor"]
    read = steps["read"]
    reads_at_floor = read["rows"] * floor_us / 1e6
    output_threads = steps["encode_and_frame"]["seconds"] + steps["gzip"]["seconds"]
    lines += [
        "",
        f"read floor: tf.data alone over the same files (TFRecord framing + gunzip, batches of 65,536), fastest of "
        f"{floor['repeats']}: {floor['rows']:,} rows in {floor['seconds']:.2f} s, {floor_us:.2f} us/row",
        f"parse floor: pyarrow reading the generated CSV files (ingest_bench's), fastest of {parse['repeats']}: "
        f"{parse['rows']:,} rows in {parse['seconds']:.2f} s",
        f"read step / read floor, per row: {read['seconds'] / read['rows'] * 1e6 / floor_us:.2f}x",
        f"Transform's {read['rows']:,} row reads at the read floor: {reads_at_floor:.1f} s, "
        f"{reads_at_floor / parse['seconds']:.1f}x the parse floor",
        f"encode and gzip threads: {output_threads:.1f} s, {output_threads / parse['seconds']:.1f}x the parse floor",
    ]
    parquet = result.get("parquet")
    if parquet:
        graph = parquet["steps"]["run_graph"]
        lines += [
            "",
            f"the same examples as TFX's Parquet payload (read by tfx_bsl's ParquetTFXIO; "
            f"{parquet['parquet_bytes'] / 2**20:.0f} MiB against {parquet['tfrecord_bytes'] / 2**20:.0f} MiB of gzipped "
            f"TFRecords), the next child process: the same {parquet['rows']:,} rows and vocabulary written",
            f"  executor Do() {parquet['seconds']:.1f} s against {result['seconds']:.1f} s from the TFRecords: "
            f"{parquet['seconds'] / result['seconds']:.2f}x; {parquet['seconds'] / parse['seconds']:.1f}x against "
            f"{result['seconds'] / parse['seconds']:.1f}x the parse floor",
            f"  run_graph {graph['seconds']:.2f} s ({graph['seconds'] / graph['rows'] * 1e6:.2f} us/row) against "
            f"{steps['run_graph']['seconds']:.2f} s",
        ]
    analysis_only = result.get("analysis_only")
    if analysis_only:
        read_only = analysis_only["steps"]["read"]
        lines += [
            "",
            f"the same Transform without materializing (TFX's Transform(materialize=False): the analysis pass and the "
            f"transform graph, the same vocabulary; no transformed examples), the next child process:",
            f"  executor Do() {analysis_only['seconds']:.1f} s against {result['seconds']:.1f} s: "
            f"{analysis_only['seconds'] / result['seconds']:.2f}x; {read_only['rows']:,} row reads; "
            f"{analysis_only['seconds'] / parse['seconds']:.1f}x the parse floor",
        ]
        example_gen = result.get("example_gen")
        if example_gen:
            both, without = (example_gen["seconds"] + result["seconds"],
                             example_gen["seconds"] + analysis_only["seconds"])
            lines.append(
                f"  with ExampleGen (its own process, before the three; {example_gen['seconds']:.1f} s, "
                f"{example_gen['seconds'] / parse['seconds']:.1f}x the parse floor): ExampleGen + Transform "
                f"{both:.1f} s ({both / parse['seconds']:.1f}x) materializing, {without:.1f} s "
                f"({without / parse['seconds']:.1f}x) without")
    trainer_input = result.get("trainer_input")
    if trainer_input:
        rates = trainer_input["examples_per_s"]
        extra = trainer_input["examples"] * (1 / rates["on_the_fly"] - 1 / rates["transformed"])
        lines += [
            "",
            f"the Trainer's input, one pass over the train split ({trainer_input['examples']:,} examples, batch "
            f"{trainer_input['batch_size']}, the faster of {trainer_input['repeats']} alternating passes; first process):",
            f"  transformed examples (components.training.input_dataset, now): {rates['transformed']:,.0f} examples/s",
            f"  raw examples parsed and transformed per batch by the transform graph: {rates['on_the_fly']:,.0f} "
            f"examples/s ({rates['transformed'] / rates['on_the_fly']:.2f}x slower): {extra:.1f} s more per epoch",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--workdir", default=None, help="where data and ExampleGen output go (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "transform_profile"),
                        help="output path without extension (.json and .txt are written)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=("tf_example", "parquet", "analysis_only"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.examples, args.data, args.variant)
        return
    with tempfile.TemporaryDirectory(prefix="transform_profile-") as tmp:
        result = run(args.rows, args.files, args.workdir or tmp, args.timeout)
    results_files.write(args.out, result, format_report(result), sort_keys=True)


if __name__ == "__main__":
    main()
