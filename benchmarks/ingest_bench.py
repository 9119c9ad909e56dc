"""Ingestion throughput: ClickLogExampleGen + Transform rows/s, CPU time and peak memory, beside a
parse floor.

    python -m benchmarks.ingest_bench --rows 100000 1000000 10000000 --transform \
        --out benchmarks/results/ingest

For each size, Criteo-layout logs are generated (``pipelines/generator.py``) as ``--files`` files
(ExampleGen parallelises per file). Each (stage, Beam mode) runs in its own child process so that
its peak memory is its own: the resident memory of the child and all its Beam worker processes,
summed and sampled every 0.2 s with psutil. Timings cover the stage's own work (the executor's
``Do()``), not Python and TensorFlow start-up. ``cpu_s`` is the CPU time of the child and its
worker processes over the same span (user + system, all threads): on a machine shared with other
jobs the wall time stretches with the load average, the CPU time much less.

Stages:
* ``parse_floor``: pyarrow's CSV reader (C++, multi-threaded) reading the same files, every
  column as bytes, rows counted: the floor any ingestion of these files stands on (the fastest
  of three reads).
* ``examplegen``: the ClickLogExampleGen executor (parse, quarantine, TFX's hash split 8:2,
  gzipped TFRecords).
* ``transform``: the pipeline's Transform executor (``components.fast_transform.Executor``, TFX's
  Transform with bulk input and output) on the ExampleGen output, as ``pipelines/pipeline.py``
  configures it (``preprocessing_fn``, the curated schema, statistics off): analysis, transform
  graph, and the transformed examples of both splits written; rows counted from those files
  afterwards (not timed).

Beam modes: DirectRunner ``in_memory`` (one worker) and ``multi_processing`` with one worker per
core (``--workers``, default: the CPU count).

The vocabulary's two counters (the spec's ``vocabulary_counter``: ``tft``, TF Transform's
``tft.vocabulary``; ``numpy``, ``components/frequent_values.py``), on an existing ExampleGen output
(e.g. a ``benchmarks/scale_run.py`` day)::

    python -m benchmarks.ingest_bench \
        --examples-dir output/scale_run/group_adam/pipeline_root/ClickLogExampleGen/examples/57 \
        --vocabulary tft numpy --modes multi_processing --out benchmarks/results/ingest_vocabulary

runs the Transform stage once per counter (stage ``transform``: the spec's default counter;
``transform_<counter>``: the other one) and reports each with the vocabulary it wrote, which must be
the same file. ``--vocabulary`` works with generated data (``--rows``) too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

from benchmarks import results_files
from components.dataset_spec import VOCABULARY_COUNTERS, load_spec

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("in_memory", "multi_processing")
PARSE_FLOOR_MODE = "pyarrow"  # the parse floor's "mode": pyarrow's own threads, no Beam
PARSE_FLOOR_REPEATS = 3


def beam_args(mode: str, workers: int) -> List[str]:
    if mode == "in_memory":
        return ["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    return ["--runner=DirectRunner", "--direct_running_mode=multi_processing", f"--direct_num_workers={workers}"]


# ------------------------------------------------------------------------------------------------
# child: one stage in one mode
# ------------------------------------------------------------------------------------------------
def _child_examplegen(data_dir: str, out_dir: str, mode: str, workers: int) -> Dict:
    from tfx.components.example_gen import driver as example_gen_driver
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
    from tfx.types import standard_artifacts
    from tfx.utils import proto_utils

    from components.click_log_example_gen import executor as executor_lib
    from components.click_log_example_gen.component import ClickLogExampleGen

    component = ClickLogExampleGen(input_base=data_dir, dataset_spec="criteo", max_bad_fraction=0.01)
    props = {k: (proto_utils.proto_to_json(v) if hasattr(v, "DESCRIPTOR") else v)
             for k, v in component.exec_properties.items() if v is not None}
    props = example_gen_driver.FileBasedDriver(None).resolve_exec_properties(props, None, None)
    examples = standard_artifacts.Examples()
    examples.uri = out_dir
    executor = executor_lib.Executor(BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args(mode, workers), tmp_dir=os.path.join(out_dir, ".tmp"), unique_id="bench"))
    clock = _Clock()
    executor.Do({}, {"examples": [examples]}, props)
    return {**clock.stop(), "rows": examples.get_int_custom_property("rows_emitted"),
            "rows_read": examples.get_int_custom_property("rows_read"),
            "rows_quarantined": examples.get_int_custom_property("rows_quarantined")}


class _Clock:
    """Wall and CPU seconds from now: this process (all threads) and its reaped children (Beam's
    worker processes)."""

    def __init__(self):
        self._wall, self._cpu, self._times = time.perf_counter(), time.process_time(), os.times()

    def stop(self) -> Dict:
        times = os.times()
        children = (times.children_user + times.children_system
                    - self._times.children_user - self._times.children_system)
        return {"seconds": time.perf_counter() - self._wall,
                "cpu_s": round(time.process_time() - self._cpu + children, 2)}


def _child_transform(examples_dir: str, out_dir: str, mode: str, workers: int,
                     vocabulary_counter: Optional[str] = None, preprocessing_fn: Optional[str] = None,
                     parquet: bool = False, materialize: bool = True) -> Dict:
    """Transform's executor on `examples_dir` (ExampleGen's gzipped tf.Example TFRecords, or with
    `parquet` the same splits as TFX's Parquet payload); without `materialize`, the analysis and the
    transform graph only, no transformed examples (TFX's Transform(materialize=False))."""
    import dataclasses
    import hashlib
    import json as json_

    import tensorflow_transform as tft
    from tfx.dsl.components.base.base_beam_executor import BaseBeamExecutor
    from tfx.types import standard_artifacts

    from components import distributed, fast_transform
    from components.dataset_spec import load_spec
    from components.preprocessing import VOCABULARY_NAME
    from components.schema import schema_text

    spec = load_spec("criteo")
    spec = dataclasses.replace(spec, vocabulary_counter=vocabulary_counter or spec.vocabulary_counter)
    os.makedirs(os.path.join(out_dir, "schema"), exist_ok=True)
    with open(os.path.join(out_dir, "schema", "schema.pbtxt"), "w") as f:
        f.write(schema_text(spec))
    artifacts = {}
    for key, kind, uri in (("examples", standard_artifacts.Examples, examples_dir),
                           ("schema", standard_artifacts.Schema, os.path.join(out_dir, "schema")),
                           ("transform_graph", standard_artifacts.TransformGraph, os.path.join(out_dir, "graph")),
                           ("transformed_examples", standard_artifacts.Examples,
                            os.path.join(out_dir, "transformed"))):
        artifacts[key] = kind()
        artifacts[key].uri = uri
    artifacts["examples"].split_names = '["train", "eval"]'
    if parquet:
        from tfx.components.util import examples_utils
        from tfx.proto import example_gen_pb2

        examples_utils.set_payload_format(artifacts["examples"], example_gen_pb2.PayloadFormat.FORMAT_PARQUET)
        examples_utils.set_file_format(artifacts["examples"], example_gen_pb2.FileFormat.Name(
            example_gen_pb2.FileFormat.FILE_FORMAT_PARQUET))
    executor = fast_transform.Executor(BaseBeamExecutor.Context(
        beam_pipeline_args=beam_args(mode, workers), tmp_dir=os.path.join(out_dir, ".tmp"), unique_id="bench"))
    outputs = {"transform_graph": [artifacts["transform_graph"]]}
    if materialize:
        outputs["transformed_examples"] = [artifacts["transformed_examples"]]
    clock = _Clock()
    executor.Do({"examples": [artifacts["examples"]], "schema": [artifacts["schema"]]}, outputs,
                {"preprocessing_fn": preprocessing_fn or "components.preprocessing.preprocessing_fn",
                 "custom_config": json_.dumps({"dataset_spec": spec.to_json()}),
                 "disable_statistics": 1, "force_tf_compat_v1": 0})
    result = clock.stop()
    # Without materializing, the rows Transform analyzed and the Trainer will transform: ExampleGen's.
    rows_root = os.path.join(out_dir, "transformed") if materialize else examples_dir
    result["rows"] = distributed.count_records(os.path.join(rows_root, "Split-*", "*"))
    with open(tft.TFTransformOutput(os.path.join(out_dir, "graph")).vocabulary_file_by_name(VOCABULARY_NAME), "rb") as f:
        vocabulary = f.read()
    result["vocabulary_lines"] = vocabulary.count(b"\n")
    result["vocabulary_sha256"] = hashlib.sha256(vocabulary).hexdigest()
    return result


def _child_parse_floor(data_dir: str, repeats: int = PARSE_FLOOR_REPEATS) -> Dict:
    """pyarrow reading every file of the set, every column as bytes; the fastest of ``repeats``
    reads (a floor: on a shared machine one read can be slowed several times by other jobs)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"f{i}" for i in range(40)]
    options = dict(read_options=pacsv.ReadOptions(column_names=names),
                   parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
                   convert_options=pacsv.ConvertOptions(column_types={n: pa.binary() for n in names}))
    paths = sorted(os.path.join(data_dir, f) for f in os.listdir(data_dir))
    best = None
    for _ in range(repeats):
        clock = _Clock()
        rows = 0
        for path in paths:
            with open(path, "rb") as f:
                for batch in pacsv.open_csv(f, **options):
                    rows += batch.num_rows
        result = {**clock.stop(), "rows": rows}
        if best is None or result["seconds"] < best["seconds"]:
            best = result
    best["repeats"] = repeats
    return best


def child_main(args) -> None:
    if args.stage == "examplegen":
        result = _child_examplegen(args.data, args.examples, args.mode, args.workers)
    elif args.stage == "parse_floor":
        result = _child_parse_floor(args.data)
    else:
        result = _child_transform(args.examples, args.out_dir, args.mode, args.workers, args.vocabulary_counter,
                                  args.preprocessing_fn, materialize=not args.no_materialize)
    print("RESULT " + json.dumps(result), flush=True)


# ------------------------------------------------------------------------------------------------
# parent: data, children, memory sampling, report
# ------------------------------------------------------------------------------------------------
def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


_MODE_ORDER = (PARSE_FLOOR_MODE,) + MODES
_STAGE_ORDER = ("parse_floor", "examplegen", "transform", "transform_tft", "transform_numpy", "both")
# The committed figures before issue #18 (benchmarks/results/ingest.json at commit cf6da16; Transform
# then was tft_beam's AnalyzeAndTransformDataset alone, rows counted and not written: less work
# than the Transform executor measured now), for the speed-up column.
BEFORE_ISSUE_18 = {(100000, "in_memory"): 490.0, (100000, "multi_processing"): 376.0,
                   (1000000, "in_memory"): 1873.0, (1000000, "multi_processing"): 2554.0}


def _default_counter() -> str:
    return load_spec("criteo").vocabulary_counter


def _mode_rank(mode: str) -> int:
    return _MODE_ORDER.index(mode) if mode in _MODE_ORDER else len(_MODE_ORDER)


def run_child(stage: str, mode: str, workers: int, data: str, examples: str, timeout_s: float,
              out_dir: Optional[str] = None, vocabulary_counter: Optional[str] = None,
              preprocessing_fn: Optional[str] = None, materialize: bool = True) -> Dict:
    import psutil

    cmd = [sys.executable, "-m", "benchmarks.ingest_bench", "--child", "--stage", stage, "--mode", mode,
           "--workers", str(workers), "--data", data, "--examples", examples]
    if out_dir:
        cmd += ["--out-dir", out_dir]
    if vocabulary_counter:
        cmd += ["--vocabulary-counter", vocabulary_counter]
    if preprocessing_fn:
        cmd += ["--preprocessing-fn", preprocessing_fn]
    if not materialize:
        cmd += ["--no-materialize"]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    # stderr to a file: TensorFlow and Beam log a lot over a 10M-row run.
    with tempfile.TemporaryFile("w+") as err_file:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err_file, text=True)
        ps = psutil.Process(proc.pid)
        peak = [0]
        done = threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _tree_rss(ps))
                done.wait(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for p in ps.children(recursive=True):
                p.kill()
            proc.kill()
            proc.communicate()
            done.set()
            return {"stage": stage, "mode": mode, "error": f"timed out after {timeout_s:.0f} s"}
        done.set()
        sampler.join()
        err_file.seek(0)
        err = err_file.read()[-20000:]
    wall = time.perf_counter() - started
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (err or out).strip().splitlines()[-3:]
        return {"stage": stage, "mode": mode, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result = json.loads(line[len("RESULT "):])
    variant = f"_{vocabulary_counter}" if vocabulary_counter not in (None, _default_counter()) else ""
    if stage == "transform":
        result["vocabulary_counter"] = vocabulary_counter or _default_counter()
    result.update({"stage": stage + variant, "mode": mode,
                   "workers": {"in_memory": 1, PARSE_FLOOR_MODE: os.cpu_count()}.get(mode, workers),
                   "rows_per_s": round(result["rows"] / result["seconds"], 1),
                   "seconds": round(result["seconds"], 2), "process_wall_s": round(wall, 2),
                   "peak_rss_mib": round(peak[0] / 2 ** 20, 1),
                   "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]})
    return result


def generate_data(root: str, rows: int, files: int) -> str:
    from pipelines.generator import generate

    data = os.path.join(root, f"data-{rows}", "logs")
    if not os.path.isdir(data):
        per_file = [rows // files + (1 if i < rows % files else 0) for i in range(files)]
        for span, n in enumerate(per_file):
            generate(data, n, span=span)
    return data


def format_table(runs: List[Dict]) -> str:
    width = max([11] + [len(r["stage"]) for r in runs])
    lines = [f"{'rows':>9} {'stage':<{width}} {'mode':<17} {'workers':>7} {'seconds':>8} {'rows/s':>9} {'CPU s':>7}"
             f" {'peak MiB':>9}  {'1-min load start->end':>21}"]
    for r in runs:
        if "error" in r:
            lines.append(f"{r.get('size', ''):>9} {r['stage']:<{width}} {r['mode']:<17} ERROR {r['error']}")
            continue
        cpu = f"{r['cpu_s']:>7.1f}" if r.get("cpu_s") is not None else f"{'':>7}"
        lines.append(f"{r['size']:>9} {r['stage']:<{width}} {r['mode']:<17} {r['workers']:>7} {r['seconds']:>8.1f} "
                     f"{r['rows_per_s']:>9.0f} {cpu} {r['peak_rss_mib']:>9.0f}"
                     + (f"  {r['load_average'][0]:>10.2f} -> {r['load_average'][1]:<7.2f}" if "load_average" in r else "")
                     + (f"  vocabulary {r['vocabulary_lines']:,} lines, sha256 {r['vocabulary_sha256'][:12]}"
                        if r.get("vocabulary_sha256") else ""))
    return "\n".join(lines)


def format_summary(runs: List[Dict]) -> str:
    """Per size and mode: ExampleGen + Transform against the parse floor and the figures before
    issue #18; per size: multi-processing against in-memory; Transform with the default vocabulary
    counter against the other one."""
    lines = []
    by_key = {(r["size"], r["stage"], r["mode"]): r for r in runs if "error" not in r}
    for (size, stage, mode), other in sorted(by_key.items()):
        default = by_key.get((size, "transform", mode)) if stage.startswith("transform_") else None
        if default:
            same = other.get("vocabulary_sha256") == default.get("vocabulary_sha256")
            name = default.get("vocabulary_counter", "default")
            lines.append(f"{size:>9} {mode:<17} Transform, vocabulary counter {name} vs "
                         f"{stage[len('transform_'):]}: {other['seconds'] / default['seconds']:.2f}x faster "
                         f"({other['seconds']:.0f} -> {default['seconds']:.0f} s), peak "
                         f"{other['peak_rss_mib'] / 1024:.1f} -> {default['peak_rss_mib'] / 1024:.1f} GiB; "
                         + ("the same vocabulary file" if same else "DIFFERENT VOCABULARY FILES"))
    for size in sorted({r["size"] for r in runs if "size" in r}):
        floor = by_key.get((size, "parse_floor", PARSE_FLOOR_MODE))
        for mode in MODES:
            both = by_key.get((size, "both", mode))
            if not both:
                continue
            parts = [f"{size:>9} {mode:<17} ExampleGen + Transform {both['seconds']:.1f} s, "
                     f"{both['rows_per_s']:,.0f} rows/s"]
            if floor:
                parts.append(f"{both['seconds'] / floor['seconds']:.0f}x the parse floor ({floor['seconds']:.2f} s)")
            before = BEFORE_ISSUE_18.get((size, mode))
            if before:
                parts.append(f"{both['rows_per_s'] / before:.1f}x the rows/s before issue #18 ({before:,.0f})")
            lines.append("; ".join(parts))
        single, multi = by_key.get((size, "both", "in_memory")), by_key.get((size, "both", "multi_processing"))
        if single and multi:
            lines.append(f"{size:>9} multi_processing / in_memory: {single['seconds'] / multi['seconds']:.2f}x")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[100000, 1000000])
    parser.add_argument("--files", type=int, default=4, help="files per generated set (parallelism unit)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--transform", action="store_true", help="also run the Transform stage")
    parser.add_argument("--transform-max-rows", type=int, default=None,
                        help="run the Transform stage only for sizes up to this many rows")
    parser.add_argument("--no-parse-floor", action="store_true", help="skip the parse-floor row")
    parser.add_argument("--no-materialize", action="store_true",
                        help="Transform without materializing (data.materialize_transformed: false)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per stage run")
    parser.add_argument("--workdir", default=None, help="where data and outputs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep ExampleGen/Transform outputs in the workdir")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "ingest"),
                        help="writes OUT.json and OUT.txt")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="write one report (--out) from earlier reports' runs; later ones replace earlier")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("examplegen", "transform", "parse_floor"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=_MODE_ORDER, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--examples-dir", help="an existing ExampleGen output: run only the Transform stage on it")
    parser.add_argument("--vocabulary", nargs="+", default=None, choices=VOCABULARY_COUNTERS,
                        help="Transform once per vocabulary counter (the spec's vocabulary_counter; default: "
                             "the spec's default only)")
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    parser.add_argument("--vocabulary-counter", choices=VOCABULARY_COUNTERS, help=argparse.SUPPRESS)
    parser.add_argument("--preprocessing-fn", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.merge:
        merge(args.merge, args.out)
        return

    import shutil

    workdir = args.workdir or tempfile.mkdtemp(prefix="ingest_bench_")
    runs: List[Dict] = []
    load_before = os.getloadavg()

    def record(r: Dict, size: int) -> Dict:
        r["size"] = size
        runs.append(r)
        print(format_table([r]).splitlines()[-1], flush=True)
        return r

    counters = args.vocabulary or [_default_counter()]
    if args.examples_dir:
        for variant in counters:
            for mode in args.modes:
                out_dir = os.path.join(workdir, f"transform-{variant}-{mode}")
                r = run_child("transform", mode, args.workers, "-", os.path.abspath(args.examples_dir), args.timeout,
                              out_dir, vocabulary_counter=variant)
                record(r, r.get("rows", 0))
                if not args.keep:
                    shutil.rmtree(out_dir, ignore_errors=True)
    for size in [] if args.examples_dir else args.rows:
        t = time.perf_counter()
        data = generate_data(workdir, size, args.files)
        print(f"[{size}] generated {args.files} files in {time.perf_counter() - t:.0f} s", flush=True)
        if not args.no_parse_floor:
            record(run_child("parse_floor", PARSE_FLOOR_MODE, args.workers, data, "-", args.timeout), size)
        for mode in args.modes:
            examples = os.path.join(workdir, f"examples-{size}-{mode}")
            r = record(run_child("examplegen", mode, args.workers, data, examples, args.timeout), size)
            if args.transform and "error" not in r and (
                    args.transform_max_rows is None or size <= args.transform_max_rows):
                for variant in counters:
                    out_dir = os.path.join(workdir, f"transform-{size}-{mode}-{variant}")
                    record(run_child("transform", mode, args.workers, data, examples, args.timeout, out_dir,
                                     vocabulary_counter=variant, materialize=not args.no_materialize), size)
                    if not args.keep:
                        shutil.rmtree(out_dir, ignore_errors=True)
            if not args.keep:
                shutil.rmtree(examples, ignore_errors=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    write_report(runs, [machine], args.files, args.out,
                 transform=TRANSFORM_NOT_MATERIALIZED if args.no_materialize else TRANSFORM_MATERIALIZED)


def combine(runs: List[Dict]) -> List[Dict]:
    """ExampleGen + Transform of the same size and mode as one "both" row."""
    combined = []
    keys = sorted({(r["size"], r["mode"]) for r in runs if "size" in r and r["mode"] in MODES},
                  key=lambda k: (k[0], _mode_rank(k[1])))
    for size, mode in keys:
        eg = next((r for r in runs if r.get("size") == size and r["mode"] == mode
                   and r["stage"] == "examplegen" and "error" not in r), None)
        tf_ = next((r for r in runs if r.get("size") == size and r["mode"] == mode
                    and r["stage"] == "transform" and "error" not in r), None)
        if eg and tf_:
            seconds = eg["seconds"] + tf_["seconds"]
            row = {"size": size, "stage": "both", "mode": mode, "workers": eg["workers"],
                   "seconds": round(seconds, 2), "rows_per_s": round(size / seconds, 1),
                   "peak_rss_mib": max(eg["peak_rss_mib"], tf_["peak_rss_mib"])}
            if eg.get("cpu_s") is not None and tf_.get("cpu_s") is not None:
                row["cpu_s"] = round(eg["cpu_s"] + tf_["cpu_s"], 2)
            combined.append(row)
    return combined


TRANSFORM_MATERIALIZED = ("the pipeline's Transform executor (components.fast_transform.Executor), transformed "
                          "examples written")
TRANSFORM_NOT_MATERIALIZED = ("the pipeline's Transform executor (components.fast_transform.Executor) without "
                              "materializing (data.materialize_transformed: false): the analysis and the transform "
                              "graph only; its rows are ExampleGen's, which the Trainer transforms per batch")


def write_report(runs: List[Dict], machines: List[Dict], files: int, out: str,
                 transform: str = TRANSFORM_MATERIALIZED) -> None:
    report = {
        "benchmark": "ClickLogExampleGen + Transform ingestion on generated Criteo-layout logs",
        "machine": machines[0] if len(machines) == 1 else machines,
        "files_per_set": files,
        "timing": "executor Do() wall time, excluding process and TensorFlow start-up; CPU s: user+system "
                  "of the stage's process and its Beam workers over the same span",
        "peak_memory": "max over 0.2 s samples of the summed RSS of the stage's process tree",
        "transform": transform,
        "before_issue_18_both_rows_per_s": {f"{k[0]} {k[1]}": v for k, v in BEFORE_ISSUE_18.items()},
        "runs": runs + combine(runs),
    }
    loads = "; ".join(f"load average before {m['load_average_before']}, after {m['load_average_after']}"
                      for m in machines)
    text = (f"{report['benchmark']}\n{machines[0]['cpus']} CPUs, {loads}"
            f"{' (one per merged run)' if len(machines) > 1 else ''}; {files} files per set\n"
            f"{report['timing']}; {report['peak_memory']}\nTransform: {report['transform']}\n\n"
            + format_table(report["runs"]) + "\n\n" + format_summary(report["runs"]))
    results_files.write(out, report, text)


def merge(paths: List[str], out: str) -> None:
    """Runs of several reports in one; a later report's (size, stage, mode) replaces an earlier one's."""
    by_key: Dict = {}
    machines, files = [], None
    for path in paths:
        with open(path) as f:
            report = json.load(f)
        for m in report["machine"] if isinstance(report["machine"], list) else [report["machine"]]:
            if m not in machines:
                machines.append(m)
        files = report["files_per_set"] if files is None else files
        if report["files_per_set"] != files:
            raise SystemExit(f"cannot merge {path}: {report['files_per_set']} files per set, not {files}")
        for r in report["runs"]:
            if r["stage"] != "both":
                by_key[(r["size"], r["stage"], r["mode"])] = r
    runs = sorted(by_key.values(), key=lambda r: (r["size"], _mode_rank(r["mode"]), _STAGE_ORDER.index(r["stage"])))
    write_report(runs, machines, files, out)


if __name__ == "__main__":
    main()
