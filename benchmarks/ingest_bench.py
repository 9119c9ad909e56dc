"""Ingestion throughput: ClickLogExampleGen (+ Transform) rows/s and peak memory.

    python -m benchmarks.ingest_bench --rows 100000 1000000 --transform \
        --out benchmarks/results/ingest

For each size, Criteo-layout logs are generated (``pipelines/generator.py``) as ``--files`` files
(ExampleGen parallelises per file). Each (stage, Beam mode) runs in its own child process so that
its peak memory is its own: the resident memory of the child and all its Beam worker processes,
summed and sampled every 0.2 s with psutil. Timings cover the executor's ``Do()`` only (not Python
and TensorFlow start-up), so rows/s is the pipeline's own rate.

Stages:
* ``examplegen``: the ClickLogExampleGen executor (parse, hash-split 8:2, write gzipped TFRecords).
* ``transform``: ``components/preprocessing.py``'s ``preprocessing_fn`` through
  ``tft_beam.AnalyzeAndTransformDataset`` on the ExampleGen output (both splits, analysed together),
  transformed rows counted, not written. This is Transform's Beam work without the TFX executor's
  statistics and materialisation, so it is a lower bound of the TFX Transform component's time.

Beam modes: DirectRunner ``in_memory`` (one worker) and ``multi_processing`` with one worker per
core (``--workers``, default: the CPU count).
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

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("in_memory", "multi_processing")


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
    start = time.perf_counter()
    executor.Do({}, {"examples": [examples]}, props)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rows": examples.get_int_custom_property("rows_emitted"),
            "rows_read": examples.get_int_custom_property("rows_read"),
            "rows_quarantined": examples.get_int_custom_property("rows_quarantined")}


def _child_transform(examples_dir: str, mode: str, workers: int) -> Dict:
    import functools

    import apache_beam as beam
    import tensorflow as tf
    import tensorflow_transform.beam as tft_beam
    from tensorflow_transform.tf_metadata import schema_utils
    from tfx_bsl.public import tfxio

    from components import preprocessing
    from components.dataset_spec import load_spec

    spec = load_spec("criteo")
    feature_spec = {spec.label: tf.io.VarLenFeature(tf.int64)}
    feature_spec.update({c: tf.io.VarLenFeature(tf.int64) for c in spec.int_columns})
    feature_spec.update({c: tf.io.VarLenFeature(tf.string) for c in spec.categorical_columns})
    schema = schema_utils.schema_from_feature_spec(feature_spec)
    pattern = os.path.join(examples_dir, "Split-*", "*.gz")
    source = tfxio.TFExampleRecord(file_pattern=pattern, schema=schema)
    fn = functools.partial(preprocessing.preprocessing_fn, custom_config={"dataset_spec": spec.to_json()})
    counted: Dict[str, int] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        with beam.Pipeline(argv=beam_args(mode, workers)) as p:
            with tft_beam.Context(temp_dir=tmp):
                raw = p | "Read" >> source.BeamSource()
                (transformed, _), _ = ((raw, source.TensorAdapterConfig())
                                       | "AnalyzeAndTransform" >> tft_beam.AnalyzeAndTransformDataset(
                                           fn, output_record_batches=True))
                _ = (transformed
                     | "Rows" >> beam.Map(lambda batch_and_unary: batch_and_unary[0].num_rows)
                     | "Sum" >> beam.CombineGlobally(sum)
                     | "Out" >> beam.io.WriteToText(os.path.join(tmp, "rows"), shard_name_template=""))
        with open(os.path.join(tmp, "rows")) as f:
            counted["rows"] = int(f.read().strip() or 0)
    return {"seconds": time.perf_counter() - start, "rows": counted["rows"]}


def child_main(args) -> None:
    if args.stage == "examplegen":
        result = _child_examplegen(args.data, args.examples, args.mode, args.workers)
    else:
        result = _child_transform(args.examples, args.mode, args.workers)
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


def run_child(stage: str, mode: str, workers: int, data: str, examples: str, timeout_s: float) -> Dict:
    import psutil

    cmd = [sys.executable, "-m", "benchmarks.ingest_bench", "--child", "--stage", stage, "--mode", mode,
           "--workers", str(workers), "--data", data, "--examples", examples]
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
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
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        for p in ps.children(recursive=True):
            p.kill()
        proc.kill()
        out, err = proc.communicate()
        done.set()
        return {"stage": stage, "mode": mode, "error": f"timed out after {timeout_s:.0f} s"}
    done.set()
    sampler.join()
    wall = time.perf_counter() - started
    line = next((l for l in out.splitlines() if l.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = (err or out).strip().splitlines()[-3:]
        return {"stage": stage, "mode": mode, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    result = json.loads(line[len("RESULT "):])
    result.update({"stage": stage, "mode": mode, "workers": 1 if mode == "in_memory" else workers,
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
    lines = [f"{'rows':>9} {'stage':<11} {'mode':<17} {'workers':>7} {'seconds':>8} {'rows/s':>9} {'peak MiB':>9}"
             f"  {'1-min load start->end':>21}"]
    for r in runs:
        if "error" in r:
            lines.append(f"{r.get('size', ''):>9} {r['stage']:<11} {r['mode']:<17} ERROR {r['error']}")
            continue
        lines.append(f"{r['size']:>9} {r['stage']:<11} {r['mode']:<17} {r['workers']:>7} {r['seconds']:>8.1f} "
                     f"{r['rows_per_s']:>9.0f} {r['peak_rss_mib']:>9.0f}"
                     + (f"  {r['load_average'][0]:>10.2f} -> {r['load_average'][1]:<7.2f}" if "load_average" in r else ""))
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
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per stage run")
    parser.add_argument("--workdir", default=None, help="where data and outputs go (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "ingest"),
                        help="writes OUT.json and OUT.txt")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="write one report (--out) from earlier reports' runs; later ones replace earlier")
    # child mode
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stage", choices=("examplegen", "transform"), help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--examples", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return
    if args.merge:
        merge(args.merge, args.out)
        return

    workdir = args.workdir or tempfile.mkdtemp(prefix="ingest_bench_")
    runs: List[Dict] = []
    load_before = os.getloadavg()
    for size in args.rows:
        t = time.perf_counter()
        data = generate_data(workdir, size, args.files)
        print(f"[{size}] generated {args.files} files in {time.perf_counter() - t:.0f} s", flush=True)
        for mode in args.modes:
            examples = os.path.join(workdir, f"examples-{size}-{mode}")
            r = run_child("examplegen", mode, args.workers, data, examples, args.timeout)
            r["size"] = size
            runs.append(r)
            print(format_table([r]).splitlines()[-1], flush=True)
            if args.transform and "error" not in r and (
                    args.transform_max_rows is None or size <= args.transform_max_rows):
                r = run_child("transform", mode, args.workers, data, examples, args.timeout)
                r["size"] = size
                runs.append(r)
                print(format_table([r]).splitlines()[-1], flush=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
               "load_average_before": [round(x, 2) for x in load_before],
               "load_average_after": [round(x, 2) for x in os.getloadavg()]}
    write_report(runs, [machine], args.files, args.out)


def combine(runs: List[Dict]) -> List[Dict]:
    """ExampleGen + Transform of the same size and mode as one "both" row."""
    combined = []
    keys = sorted({(r["size"], r["mode"]) for r in runs if "size" in r}, key=lambda k: (k[0], MODES.index(k[1])))
    for size, mode in keys:
        eg = next((r for r in runs if r.get("size") == size and r["mode"] == mode
                   and r["stage"] == "examplegen" and "error" not in r), None)
        tf_ = next((r for r in runs if r.get("size") == size and r["mode"] == mode
                    and r["stage"] == "transform" and "error" not in r), None)
        if eg and tf_:
            seconds = eg["seconds"] + tf_["seconds"]
            combined.append({"size": size, "stage": "both", "mode": mode, "workers": eg["workers"],
                             "seconds": round(seconds, 2), "rows_per_s": round(size / seconds, 1),
                             "peak_rss_mib": max(eg["peak_rss_mib"], tf_["peak_rss_mib"])})
    return combined


def write_report(runs: List[Dict], machines: List[Dict], files: int, out: str) -> None:
    report = {
        "benchmark": "ClickLogExampleGen (+ Transform) ingestion on generated Criteo-layout logs",
        "machine": machines[0] if len(machines) == 1 else machines,
        "files_per_set": files,
        "timing": "executor Do() / Beam pipeline wall time, excluding process and TensorFlow start-up",
        "peak_memory": "max over 0.2 s samples of the summed RSS of the stage's process tree",
        "runs": runs + combine(runs),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(report, f, indent=1)
    loads = "; ".join(f"load average before {m['load_average_before']}, after {m['load_average_after']}"
                      for m in machines)
    text = (f"{report['benchmark']}\n{machines[0]['cpus']} CPUs, {loads}"
            f"{' (one per merged run)' if len(machines) > 1 else ''}; {files} files per set\n"
            f"{report['timing']}; {report['peak_memory']}\n\n" + format_table(report["runs"]) + "\n")
    with open(out + ".txt", "w") as f:
        f.write(text)
    print(text)


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
    runs = sorted(by_key.values(), key=lambda r: (r["size"], MODES.index(r["mode"]), r["stage"] != "examplegen"))
    write_report(runs, machines, files, out)


if __name__ == "__main__":
    main()
