"""Issue #22 at scale: consecutive daily spans of Criteo-scale data through the whole local pipeline,
Group Adam against a tf_keras Adam baseline, measured per stage, per day and in serving.

    python -m benchmarks.scale_run                                # every (day, optimizer) not done yet, then --merge
    python -m benchmarks.scale_run --day 2 --optimizer group_adam  # one resumable invocation
    python -m benchmarks.scale_run --merge                        # parts -> benchmarks/results/scale_run.{json,txt}
    python -m benchmarks.scale_run --merge --import-parts benchmarks/results/scale_run.json  # + parts not rerun
    python -m benchmarks.scale_run --vocabulary 1000000           # vocabulary rows of one day, counted vs expected

Data: `pipelines.generator`'s ``criteo-scale`` preset, day N = span N (one truth; the tails drift from
day to day), ``--rows`` a day (default 10M), written once to ``<work>/data/day-N/`` and shared by both
optimizers. Each (day, optimizer) invocation runs the whole pipeline (`pipelines.pipeline.create_pipeline`
under LocalDagRunner, as `pipelines.local_runner` does) with its own output folder
``<work>/<optimizer>/`` (ML Metadata, pipeline root, serving directory): day 1 cold, day N > 1
warm-started from the version day N-1 pushed into that optimizer's serving directory (versions pushed
by a later day are removed first, so a day can be rerun; the later days' parts then move to
``parts/stale/``). Each invocation writes ``<work>/parts/day-N-<optimizer>.json``; ``--merge`` combines
the parts into one output with the issue's targets, met or not (or not measured yet).

Measured per invocation:
* per stage: wall time (ML Metadata's execution create/last-update times of each pipeline node; the
  data generation, the unpruned export and the serving measurements are stages of their own) and
  peak RSS: each stage runs in a child process, and the resident memory of that child and all its
  descendants (Beam workers, the ServingCheck's serving process) is summed every `--sample-s`
  seconds with psutil; a node's peak is the largest sum inside its execution window;
* per day: eval AUC (TFMA, eval split) against the day's Bayes-optimal AUC (the generator's, over the
  whole day), row sparsity, embedding rows, the per-epoch eval AUC (Keras) and steps, the warm start,
  the pushed SavedModel bytes (pruned, without the warmup file) against the unpruned export of the same
  trained model (`components.pruned_pusher.pruning.export_pruned(prune=False)`), parity, warmup requests;
* in serving, for the pushed (pruned) version and the unpruned export each, served by
  `serving/local_server/` in a fresh process: process start-up, load time (version published ->
  AVAILABLE), RSS after load and after the requests and peak (VmHWM), p50/p99 latency of
  ``serving_default`` requests of real eval rows at batch 1 and 64 over gRPC and REST (sequential
  requests with the client's request validation, after warm-up requests; both models are served at
  once and take turns request by request, so that a shared machine's load falls on both alike).
  ``--day N --optimizer X --remeasure-serving`` measures a finished day's two models again;
  ``--day N --optimizer X --repush`` first pushes that day's trained model again with the Pusher's
  current code (`pruning.prune_and_push`, into ``<work>/<optimizer>/repush/day-N/``, so the daily
  serving directory and the warm starts are untouched) and redoes its unpruned export: the part's push
  figures become the re-push's (the pipeline's own push is kept as ``push_as_run``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORK = os.path.join(REPO, "output", "scale_run")
DEFAULT_OUT = os.path.join(REPO, "benchmarks", "results", "scale_run")
OPTIMIZERS = ("group_adam", "adam")
DAYS = (1, 2, 3)
DEFAULT_ROWS = 10_000_000
PRESET = "criteo-scale"
MODEL_NAME = "ctr"
GIB = 1 << 30

# The issue's targets (each checked in `targets`).
MAX_DAY_SECONDS = 30 * 60
MAX_STAGE_RSS_BYTES = 16 * GIB
MAX_BAYES_GAP = 0.005
MAX_AUC_BELOW_ADAM = 0.001
MIN_ROW_SPARSITY = 0.80
MIN_SIZE_RATIO = 5.0
MIN_RSS_RATIO = 3.0
MAX_PARITY = 1e-6
MAX_WARM_STEPS_FRACTION = 0.5
MAX_DAY3_SIZE_GROWTH = 1.1
# "p99 latency no worse": the pruned model's p99 at most this factor of the unpruned one's (the
# machine is shared; repeated runs of one model differ by a few percent).
P99_TOLERANCE = 1.05


# ------------------------------------------------------------------------------------------------
# paths
# ------------------------------------------------------------------------------------------------
def data_dir(work: str, day: int) -> str:
    return os.path.join(work, "data", f"day-{day}")


def truth_path(work: str) -> str:
    return os.path.join(work, "data", "ground_truth.json")


def data_file(work: str, day: int) -> str:
    return os.path.join(data_dir(work, day), f"clicks-{day:05d}.tsv")


def output_dir(work: str, optimizer: str) -> str:
    return os.path.join(work, optimizer)


def part_path(work: str, day: int, optimizer: str) -> str:
    return os.path.join(work, "parts", f"day-{day}-{optimizer}.json")


def vocabulary_part_path(work: str, rows) -> str:
    return os.path.join(work, "parts", f"vocabulary-{rows}.json")


def vocabulary_result_path(out_prefix: str, rows) -> str:
    """The vocabulary check beside the merged output (committed: it needs no pipeline run)."""
    return f"{out_prefix}_vocabulary_{rows}.json"


def _write_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


def _read_json(path: str) -> Optional[Any]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def import_parts(work: str, merged_path: str) -> List[str]:
    """The parts of an earlier merged output (``--out``'s JSON) that `work` has no part of, written into
    `work`'s parts with ``imported_from``: so that days rerun in a new `work` merge with those not rerun."""
    merged = _read_json(merged_path)
    if merged is None or "days" not in merged:
        raise SystemExit(f"{merged_path}: not a merged scale_run output")
    imported = []
    for day_name, by_optimizer in sorted(merged["days"].items()):
        for optimizer, part in sorted(by_optimizer.items()):
            path = part_path(work, part["day"], optimizer)
            if os.path.exists(path):
                continue
            # A part imported into that output already keeps where it was first merged.
            _write_json(path, dict(part, imported_from=part.get("imported_from") or os.path.relpath(merged_path, REPO)))
            imported.append(f"{day_name}/{optimizer}")
    return imported


# ------------------------------------------------------------------------------------------------
# configuration of a day's run
# ------------------------------------------------------------------------------------------------
def parse_sets(values: Sequence[str]) -> Dict[str, Any]:
    """``key.path=VALUE`` (VALUE read as YAML) -> nested overrides for `pipelines.config.load_config`."""
    import yaml
    out: Dict[str, Any] = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE (e.g. trainer.epochs=2)")
        node = out
        parts = key.split(".")
        for name in parts[:-1]:
            node = node.setdefault(name, {})
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def day_config(work: str, day: int, optimizer: str, config_path: Optional[str], sets: Sequence[str]):
    """The PipelineConfig of one (day, optimizer): --config and --set, then this benchmark's fixed keys."""
    from pipelines.config import load_config
    overrides = parse_sets(sets)
    overrides.setdefault("trainer", {})["optimizer"] = optimizer
    overrides["output_dir"] = output_dir(work, optimizer)
    data = overrides.setdefault("data", {})
    data.update({"data_root": data_dir(work, day), "dataset_format": "criteo",
                 "input_pattern": "clicks-{SPAN:5}.tsv", "span_window": 1})
    serving = overrides.setdefault("serving", {})
    serving.update({"model_name": MODEL_NAME, "serving_dir": None})
    return load_config(config_path, overrides)


# ------------------------------------------------------------------------------------------------
# children: each stage runs in its own process, its memory sampled from the parent
# ------------------------------------------------------------------------------------------------
class TreeRss(threading.Thread):
    """Samples the summed RSS of a process and all its descendants: [(unix time, bytes)]."""

    def __init__(self, pid: int, interval_s: float):
        super().__init__(daemon=True)
        self.pid, self.interval_s = pid, interval_s
        self.samples: List[Tuple[float, int]] = []
        self._stop_event = threading.Event()

    def sample(self) -> Optional[int]:
        import psutil
        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.Error:
            return None
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = self.sample()
            if rss:
                self.samples.append((time.time(), rss))
            self._stop_event.wait(self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def peak_between(samples: Sequence[Tuple[float, int]], start: float, end: float) -> Optional[int]:
    """The largest sample in [start, end]; for a window shorter than the sampling interval, the larger
    of the samples just before and just after it."""
    inside = [rss for t, rss in samples if start <= t <= end]
    if inside:
        return max(inside)
    before = [rss for t, rss in samples if t < start][-1:]
    after = [rss for t, rss in samples if t > end][:1]
    return max(before + after) if before or after else None


def run_child(kind: str, opts, log_path: str, extra: Sequence[str] = ()) -> Dict[str, Any]:
    """``python -m benchmarks.scale_run --child KIND ...`` with its process tree's RSS sampled.

    Returns the child's result (its JSON) with ``wall_s``, ``started``, ``finished``, ``peak_rss_bytes``
    and the ``samples``; raises RuntimeError naming the log when the child fails.
    """
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    result_path = log_path + ".result.json"
    if os.path.exists(result_path):
        os.remove(result_path)
    argv = [sys.executable, "-m", "benchmarks.scale_run", "--child", kind, "--result", result_path,
            "--work", opts.work, "--rows", str(opts.rows), "--seed", str(opts.seed),
            "--serving-requests", str(opts.serving_requests)]
    if opts.day is not None:
        argv += ["--day", str(opts.day)]
    if opts.optimizer:
        argv += ["--optimizer", opts.optimizer]
    if opts.config:
        argv += ["--config", opts.config]
    for item in opts.set or []:
        argv += ["--set", item]
    argv += list(extra)
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([REPO] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    with open(log_path, "wb") as log:
        started = time.time()
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = TreeRss(proc.pid, opts.sample_s)
        sampler.start()
        try:
            code = proc.wait(timeout=opts.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            finished = time.time()
            sampler.stop()
    result = _read_json(result_path) or {}
    if code != 0 and not result.get("error"):
        tail = _log_tail(log_path)
        why = f"timed out after {opts.timeout_s:g}s" if code is None else f"exited with {code}"
        raise RuntimeError(f"{kind} child {why}; see {log_path}" + (f": {tail}" if tail else ""))
    result.update({"wall_s": round(finished - started, 2), "started": started, "finished": finished,
                   "peak_rss_bytes": max([rss for _, rss in sampler.samples] + [result.get("self_peak_rss_bytes") or 0])
                   or None,
                   "samples": sampler.samples})
    return result


def _log_tail(path: str, lines: int = 1) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read()[-20000:].decode("utf-8", "replace")
    except OSError:
        return ""
    found = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(found[-lines:])[:500]


# -- child: data ---------------------------------------------------------------------------------
def generated_report(work: str, day: int, rows: int, seed: int) -> Optional[Dict[str, Any]]:
    """The generator's report of day `day` when its file is there with `rows` rows of this preset."""
    from pipelines import generator
    truth = _read_json(truth_path(work))
    if not truth or truth.get("generator") != generator.preset_config(PRESET, seed).to_dict():
        return None
    report = (truth.get("sets") or {}).get(os.path.basename(data_file(work, day)))
    if not report or report.get("rows") != rows or not os.path.exists(data_file(work, day)):
        return None
    return report


def child_generate(opts) -> Dict[str, Any]:
    from pipelines import generator
    report = generator.generate(data_dir(opts.work, opts.day), opts.rows, generator.preset_config(PRESET, opts.seed),
                                span=opts.day, truth_path=truth_path(opts.work))
    return {"report": report}


# -- child: the pipeline ---------------------------------------------------------------------------
def stage_windows(metadata_path: str, pipeline_name: str, run_id: Optional[str]) -> Dict[str, Dict[str, Any]]:
    """node id -> {start, end, state} of each execution in the run `run_id`, from ML Metadata."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    store = metadata_store.MetadataStore(config)
    run = store.get_context_by_type_and_name("pipeline_run", run_id) if run_id else None
    if run is None:
        return {}
    node_type = store.get_context_type("node").id
    prefix = pipeline_name + "."
    out: Dict[str, Dict[str, Any]] = {}
    for execution in store.get_executions_by_context(run.id):
        nodes = [c.name for c in store.get_contexts_by_execution(execution.id) if c.type_id == node_type]
        name = nodes[0][len(prefix):] if nodes and nodes[0].startswith(prefix) else (nodes[0] if nodes else
                                                                                     str(execution.id))
        state = metadata_store_pb2.Execution.State.Name(execution.last_known_state)
        out[name] = {"start": execution.create_time_since_epoch / 1000.0,
                     "end": execution.last_update_time_since_epoch / 1000.0, "state": state}
    return out


def child_pipeline(opts) -> Dict[str, Any]:
    from serving.quiet import quiet_process
    quiet_process(False)
    from tfx import v1 as tfx

    from components.dataset_spec import load_spec
    from pipelines import summary as run_summary
    from pipelines.config import beam_pipeline_args
    from pipelines.local_runner import run_scratch
    from pipelines.pipeline import create_pipeline

    config = day_config(opts.work, opts.day, opts.optimizer, opts.config, opts.set or [])
    spec = load_spec(config.data.dataset_format)
    root = config.data.data_root
    input_bytes = sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(root) for n in names)
    result: Dict[str, Any] = {"config": config.to_dict(), "beam_pipeline_args": beam_pipeline_args(config, input_bytes)}
    started = time.time()
    try:
        with run_scratch(config.output_dir):
            tfx.orchestration.LocalDagRunner().run(create_pipeline(config, root, spec, input_bytes=input_bytes))
        result["status"] = "succeeded"
    except Exception as e:  # noqa: BLE001 -- recorded in the part; the parent reports it
        import traceback
        traceback.print_exc()  # into the child's log
        result["status"] = "failed"
        result["pipeline_error"] = (str(e).strip().splitlines() or [type(e).__name__])[-1][:500]
    result["pipeline_s"] = round(time.time() - started, 2)
    result["summary"] = run_summary.collect(config.metadata_sqlite, config.pipeline_name)
    result["stages"] = stage_windows(config.metadata_sqlite, config.pipeline_name, result["summary"].get("run_id"))
    result["transform_graph_uri"] = _latest_uri(config, "TransformGraph")
    return result


def _latest_uri(config, type_name: str) -> Optional[str]:
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    from pipelines.summary import _latest_run_artifacts
    connection = metadata_store_pb2.ConnectionConfig()
    connection.sqlite.filename_uri = config.metadata_sqlite
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    _, by_type = _latest_run_artifacts(metadata_store.MetadataStore(connection), config.pipeline_name)
    found = by_type.get(type_name) or []
    return found[0].uri if found else None


# -- child: the unpruned export ----------------------------------------------------------------------
def unpruned_dir(work: str, day: int, optimizer: str) -> str:
    return os.path.join(output_dir(work, optimizer), "unpruned", f"day-{day}")


def _eval_examples(examples_uri: str, limit: int) -> List[bytes]:
    from components.example_io import read_examples
    return read_examples([os.path.join(examples_uri, "Split-eval", "*")], limit)


def child_export(opts) -> Dict[str, Any]:
    """The like-for-like unpruned SavedModel of the day's trained model, with the same warmup file."""
    from serving.quiet import quiet_process
    quiet_process(False)
    from components.pruned_pusher import pruning
    inputs = json.loads(opts.child_args)
    out = unpruned_dir(opts.work, opts.day, opts.optimizer)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    started = time.time()
    report = pruning.export_pruned(inputs["trained_model_dir"], inputs["transform_graph_uri"], out, prune=False)
    export_s = time.time() - started
    saved_model_bytes = pruning.dir_size(out)  # like the push's size_after_bytes: before assets.extra
    warmups = 0
    if inputs.get("warmup_requests"):
        examples = _eval_examples(inputs["examples_uri"], int(inputs["warmup_requests"]))
        warmups = pruning.write_warmup_requests(out, examples, MODEL_NAME, int(inputs["warmup_requests"]))
    return {"dir": out, "saved_model_bytes": saved_model_bytes, "embedding_bytes": report.embedding_bytes_before,
            "embedding_rows": report.rows, "export_s": round(export_s, 2), "warmup_requests": warmups}


def repush_dir(work: str, day: int, optimizer: str) -> str:
    return os.path.join(output_dir(work, optimizer), "repush", f"day-{day}")


def _push_record(push: Dict[str, Any]) -> Dict[str, Any]:
    """The part's push figures from the pipeline summary's push section (the Pusher's properties)."""
    return {"pushed": bool(push.get("pushed")), "version": push.get("version"), "path": push.get("path"),
            "pruned_bytes": push.get("size_after_bytes", push.get("size_bytes")),
            "trained_model_bytes": push.get("size_before_bytes"),
            "embedding_bytes_before": push.get("embedding_bytes_before"),
            "embedding_bytes_after": push.get("embedding_bytes_after"),
            "id_map_bytes": push.get("id_map_bytes"), "compacted_tables": push.get("compacted_tables"),
            "vocabulary_lines": push.get("vocabulary_lines"),
            "vocabulary_lines_kept": push.get("vocabulary_lines_kept"),
            "parity_max_abs_error": push.get("parity_max_abs_error"),
            "warmup_requests": push.get("warmup_requests"), "warm_start_bytes": push.get("warm_start_bytes"),
            "reason": push.get("reason")}


def child_repush(opts) -> Dict[str, Any]:
    """The day's trained model through the Pusher's own prune-and-push, as the code is now."""
    from serving.quiet import quiet_process
    quiet_process(False)
    from components import push_defaults
    from components.pruned_pusher import pruning
    inputs = json.loads(opts.child_args)
    base = repush_dir(opts.work, opts.day, opts.optimizer)
    shutil.rmtree(base, ignore_errors=True)
    examples = _eval_examples(inputs["examples_uri"],
                              max(push_defaults.PARITY_EXAMPLES, push_defaults.WARMUP_REQUESTS))
    started = time.time()
    result = pruning.prune_and_push(inputs["trained_model_dir"], inputs["transform_graph_uri"], examples, base)
    report = result.report
    return {"push_s": round(time.time() - started, 2), "push": _push_record({
        "pushed": True, "version": str(result.version), "path": result.path,
        "size_after_bytes": result.size_after_bytes, "size_before_bytes": result.size_before_bytes,
        "embedding_bytes_before": report.embedding_bytes_before, "embedding_bytes_after": report.embedding_bytes_after,
        "id_map_bytes": report.id_map_bytes, "compacted_tables": report.compacted_tables,
        "vocabulary_lines": report.vocabulary_lines, "vocabulary_lines_kept": report.vocabulary_lines_kept,
        "parity_max_abs_error": result.parity_max_abs_error, "warmup_requests": result.warmup_requests})}


# -- child: serving ------------------------------------------------------------------------------------
def _proc_kib(pid: int, key: str) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _percentiles(values: Sequence[float]) -> Dict[str, Optional[float]]:
    import numpy as np
    if not values:
        return {"p50_ms": None, "p99_ms": None}
    array = np.asarray(values, np.float64) * 1e3
    return {"p50_ms": round(float(np.percentile(array, 50)), 3), "p99_ms": round(float(np.percentile(array, 99)), 3)}


def start_serving(version_dir: str, work_dir: str) -> Tuple[Any, Dict[str, Any]]:
    """A fresh `serving.local_server` process serving `version_dir`: (the process, its start-up, load
    time and RSS before and after the load)."""
    import requests as http

    from components.serving_check.check import ServingProcess

    base = os.path.join(work_dir, "base")
    os.makedirs(os.path.join(base, MODEL_NAME), exist_ok=True)
    server = ServingProcess(base, MODEL_NAME, os.path.join(work_dir, "serving.log"))
    out: Dict[str, Any] = {"version_dir": version_dir}
    try:
        url = f"{server.rest_url}/v1/models/{MODEL_NAME}"
        deadline = time.monotonic() + 300
        while True:  # listening
            if server.exited() or time.monotonic() > deadline:
                raise RuntimeError(server.exited() or "the serving process did not start within 300 s")
            try:
                http.get(url, timeout=2)
                break
            except http.RequestException:
                time.sleep(0.1)
        out["startup_s"] = round(time.monotonic() - server.started, 3)
        out["rss_idle_bytes"] = (_proc_kib(server.proc.pid, "VmRSS") or 0) * 1024
        published = time.monotonic()
        os.symlink(os.path.abspath(version_dir), os.path.join(base, MODEL_NAME, "1"))
        deadline = published + 1800
        while True:  # AVAILABLE
            if server.exited() or time.monotonic() > deadline:
                raise RuntimeError(server.exited() or "the version did not load within 1800 s")
            try:
                states = http.get(url, timeout=5).json().get("model_version_status", [])
            except (http.RequestException, ValueError):
                states = []
            if any(s.get("state") == "AVAILABLE" for s in states):
                break
            ended = [s for s in states if s.get("state") == "END"]
            if ended:
                raise RuntimeError(f"the version failed to load: {ended[0].get('status')}")
            time.sleep(0.05)
        out["load_s"] = round(time.monotonic() - published, 3)
        out["rss_loaded_bytes"] = (_proc_kib(server.proc.pid, "VmRSS") or 0) * 1024
    except BaseException:
        server.stop()
        raise
    return server, out


def interleaved_latency(clients: Dict[str, Any], examples: Sequence[bytes], requests: int,
                        batch: int) -> Dict[str, Dict[str, Any]]:
    """p50/p99 of `requests` timed requests of `batch` rows to each client, taking turns request by
    request (the order flips every round), so that the machine's load drifts over both alike."""
    windows = [list(examples[(i * batch) % len(examples):][:batch]) for i in range(requests)]
    windows = [w if len(w) == batch else list(examples[:batch]) for w in windows]
    for client in clients.values():
        for w in windows[:max(5, requests // 10)]:  # warm-up: connection, first calls
            client.predict_examples(w)
    latencies: Dict[str, List[float]] = {label: [] for label in clients}
    labels = list(clients)
    for i, w in enumerate(windows):
        for label in labels if i % 2 == 0 else labels[::-1]:
            t0 = time.perf_counter()  # with the client's request validation, as in production
            answer = clients[label].predict_examples(w)
            latencies[label].append(time.perf_counter() - t0)
            if len(answer) != len(w):
                raise RuntimeError(f"{label} batch {batch}: {len(answer)} answers to {len(w)} rows")
    return {label: dict(_percentiles(values), requests=len(values), batch=batch)
            for label, values in latencies.items()}


def serve_and_measure(version_dirs: Dict[str, str], examples: Sequence[bytes], requests: int, work_dir: str,
                      batches: Sequence[int] = (1, 64)) -> Dict[str, Dict[str, Any]]:
    """Serve each of `version_dirs` ({label: SavedModel folder}) in a fresh `serving.local_server`
    process (started and loaded one after the other), then time them side by side (see the module doc)."""
    from serving.grpc_client import GrpcClient
    from serving.rest_client import RestClient
    from serving.retry import NO_RETRY

    servers: Dict[str, Any] = {}
    out: Dict[str, Dict[str, Any]] = {}
    try:
        for label, version_dir in version_dirs.items():
            servers[label], out[label] = start_serving(version_dir, os.path.join(work_dir, label))
            out[label]["latency"] = {}
        with contextlib.ExitStack() as stack:
            for protocol in ("grpc", "rest"):
                clients = {}
                for label, server in servers.items():
                    client = (GrpcClient(server.grpc_target, MODEL_NAME, timeout_s=60, retry=NO_RETRY)
                              if protocol == "grpc" else
                              RestClient(server.rest_url, MODEL_NAME, timeout_s=60, retry=NO_RETRY))
                    clients[label] = stack.enter_context(client)
                for batch in batches:
                    for label, cell in interleaved_latency(clients, examples, requests, batch).items():
                        out[label]["latency"][f"{protocol}/batch{batch}"] = cell
        for label, server in servers.items():
            out[label]["rss_bytes"] = (_proc_kib(server.proc.pid, "VmRSS") or 0) * 1024
            # The kernel updates the high-water mark lazily: it can trail the RSS just read.
            out[label]["peak_rss_bytes"] = max((_proc_kib(server.proc.pid, "VmHWM") or 0) * 1024,
                                               out[label]["rss_bytes"])
    finally:
        for server in servers.values():
            server.stop()
    return out


def child_serving(opts) -> Dict[str, Any]:
    import tempfile
    from serving.quiet import quiet_process
    quiet_process(False)
    inputs = json.loads(opts.child_args)
    examples = _eval_examples(inputs["examples_uri"], 64 * 16)
    if not examples:
        raise RuntimeError(f"no eval examples under {inputs['examples_uri']}")
    version_dirs = {label: inputs[label] for label in ("pruned", "unpruned") if inputs.get(label)}
    with tempfile.TemporaryDirectory(prefix="scale-serve-") as tmp:
        out: Dict[str, Any] = serve_and_measure(version_dirs, examples, opts.serving_requests, tmp)
    out["examples"] = len(examples)
    return out


# -- child: vocabulary check -----------------------------------------------------------------------
def count_vocabulary(path: str, threshold: int = 10, train_fraction: float = 0.8, seed: int = 0) -> Dict[str, Any]:
    """Values of each categorical field seen >= `threshold` times in a generated file: in the whole
    file, and in a train split drawn as ExampleGen's hash split does (each row independently, with
    probability `train_fraction`: each value's count thinned binomially)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from pyarrow import csv

    from pipelines import generator
    names = ["label"] + generator.INT_COLUMNS + generator.CAT_COLUMNS
    table = csv.read_csv(path, read_options=csv.ReadOptions(column_names=names, block_size=64 << 20),
                         parse_options=csv.ParseOptions(delimiter="\t", quote_char=False),
                         convert_options=csv.ConvertOptions(include_columns=generator.CAT_COLUMNS,
                                                            column_types={c: pa.string() for c in generator.CAT_COLUMNS},
                                                            strings_can_be_null=True))
    rng = np.random.default_rng(seed)
    out: Dict[str, Any] = {"rows": table.num_rows, "fields": {}}
    for f in generator.CAT_COLUMNS:
        counts = pc.value_counts(table.column(f).drop_null()).field("counts").to_numpy()
        train = rng.binomial(counts, train_fraction)
        out["fields"][f] = {"distinct": int(counts.size), "at_threshold_file": int(np.count_nonzero(counts >= threshold)),
                            "at_threshold_train": int(np.count_nonzero(train >= threshold))}
    for key in ("distinct", "at_threshold_file", "at_threshold_train"):
        out[key] = sum(v[key] for v in out["fields"].values())
    return out


def child_vocabulary(opts) -> Dict[str, Any]:
    from pipelines import generator
    folder = os.path.join(opts.work, f"vocabulary-{opts.rows}")
    cfg = generator.preset_config(PRESET, opts.seed)
    started = time.time()
    report = generator.generate(os.path.join(folder, "data"), opts.rows, cfg, span=1,
                                truth_path=os.path.join(folder, "ground_truth.json"))
    generate_s = time.time() - started
    started = time.time()
    counted = count_vocabulary(report["path"])
    count_s = time.time() - started
    return {"generate_s": round(generate_s, 1), "count_s": round(count_s, 1), "counted": counted,
            "bytes": os.path.getsize(report["path"]), "bayes_auc": report["bayes_auc"]}


CHILDREN = {"generate": child_generate, "pipeline": child_pipeline, "export": child_export,
            "repush": child_repush, "serving": child_serving, "vocabulary": child_vocabulary}


def child_main(opts) -> int:
    try:
        result = CHILDREN[opts.child](opts)
    except Exception as e:  # noqa: BLE001 -- one line for the parent, the traceback in the log
        import traceback
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: " + ((str(e).strip().splitlines() or [""])[-1])[:500]}
        _write_json(opts.result, result)
        return 1
    # The child's own high-water mark: a child that ends within one sampling interval is sampled
    # at most once, maybe before it has loaded anything.
    import resource
    result["self_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    _write_json(opts.result, result)
    return 0


# ------------------------------------------------------------------------------------------------
# parent: one (day, optimizer)
# ------------------------------------------------------------------------------------------------
def _stage(result: Dict[str, Any]) -> Dict[str, Any]:
    return {"wall_s": result["wall_s"], "peak_rss_bytes": result["peak_rss_bytes"]}


def reset_serving_dir(work: str, day: int, optimizer: str) -> List[str]:
    """Leave in the optimizer's serving directory only the versions pushed by days before `day`."""
    from serving import model_versions
    model_dir = os.path.join(output_dir(work, optimizer), "serving", MODEL_NAME)
    keep = set()
    for earlier in range(1, day):
        part = _read_json(part_path(work, earlier, optimizer)) or {}
        version = (part.get("push") or {}).get("version")
        if version:
            keep.add(str(version))
    removed = []
    if os.path.isdir(model_dir):
        for name in sorted(os.listdir(model_dir)):
            if model_versions.is_version_name(name) and name not in keep:
                shutil.rmtree(os.path.join(model_dir, name))
                removed.append(name)
    return removed


def set_aside_later_parts(work: str, day: int, optimizer: str) -> List[str]:
    """A rerun day changes what later days warm-start from: their parts move to parts/stale/."""
    moved = []
    for later in DAYS:
        path = part_path(work, later, optimizer)
        if later > day and os.path.exists(path):
            stale = os.path.join(os.path.dirname(path), "stale", os.path.basename(path))
            os.makedirs(os.path.dirname(stale), exist_ok=True)
            os.replace(path, stale)
            moved.append(stale)
    return moved


def _quality(summary: Dict[str, Any], bayes_auc: Optional[float]) -> Dict[str, Any]:
    training = summary.get("training") or {}
    sparsity = training.get("sparsity") or {}
    evaluation = summary.get("evaluation") or {}
    history = training.get("history") or {}
    val_auc = next((v for k, v in sorted(history.items()) if k.startswith("val_") and "auc" in k), None)
    auc = evaluation.get("auc")
    early = training.get("early_stopping") or {}
    return {
        "eval_auc": auc, "bayes_auc": bayes_auc,
        "bayes_gap": round(bayes_auc - auc, 6) if auc is not None and bayes_auc is not None else None,
        "eval_examples": evaluation.get("example_count"),
        "binary_crossentropy": evaluation.get("binary_crossentropy"), "calibration": evaluation.get("calibration"),
        "row_sparsity": sparsity.get("fraction"), "embedding_rows": sparsity.get("rows"),
        "zero_rows": sparsity.get("zero_rows"), "steps": training.get("steps"), "epochs": training.get("epochs"),
        "val_auc_by_epoch": val_auc, "best_epoch": early.get("best_epoch"),
        "fit_s": training.get("fit_seconds"), "warm_start": training.get("warm_start"),
    }


def run_invocation(opts) -> Dict[str, Any]:
    """One (day, optimizer): data (once per day), the pipeline, the unpruned export, serving; the part."""
    work, day, optimizer = opts.work, opts.day, opts.optimizer
    if day > 1:
        previous = _read_json(part_path(work, day - 1, optimizer))
        if not previous or not (previous.get("push") or {}).get("pushed"):
            raise SystemExit(f"error: day {day} {optimizer} warm-starts from day {day - 1}'s pushed model: run "
                             f"--day {day - 1} --optimizer {optimizer} first (it has no pushed model yet)")
        if previous.get("rows") != opts.rows:
            raise SystemExit(f"error: day {day - 1} {optimizer} ran with {previous.get('rows')} rows, not {opts.rows}")
    logs = os.path.join(work, "logs")
    part: Dict[str, Any] = {"day": day, "optimizer": optimizer, "rows": opts.rows, "span": day, "preset": PRESET,
                            "seed": opts.seed, "config_file": opts.config, "sets": list(opts.set or []),
                            "started": datetime.datetime.now().isoformat(timespec="seconds"),
                            "machine": machine(probe=True), "stages": {}}
    part["serving_dir_reset"] = reset_serving_dir(work, day, optimizer)
    part["stale_parts"] = set_aside_later_parts(work, day, optimizer)
    # Data: generated once per day, shared by the optimizers.
    report = generated_report(work, day, opts.rows, opts.seed)
    if report is None:
        print(f"day {day}: generating {opts.rows:,} rows", flush=True)
        generated = run_child("generate", opts, os.path.join(logs, f"generate-day-{day}.log"))
        if generated.get("error"):
            raise RuntimeError(f"generating day {day}: {generated['error']}")
        report = generated["report"]
        part["stages"]["generate"] = _stage(generated)
    part["data"] = {"path": report["path"], "rows": report["rows"], "bayes_auc": report["bayes_auc"],
                    "bayes_logloss": report["bayes_logloss"], "ctr": report["ctr"],
                    "bytes": os.path.getsize(report["path"])}

    print(f"day {day} {optimizer}: pipeline", flush=True)
    pipe = run_child("pipeline", opts, os.path.join(logs, f"pipeline-day-{day}-{optimizer}.log"))
    if pipe.get("error"):
        raise RuntimeError(f"day {day} {optimizer}: {pipe['error']}")
    summary = pipe["summary"]
    part.update(status=pipe["status"], error=pipe.get("pipeline_error"), run_id=summary.get("run_id"),
                beam_pipeline_args=pipe.get("beam_pipeline_args"), pipeline_config=pipe.get("config"))
    part["pipeline"] = {"wall_s": pipe["pipeline_s"], "process_wall_s": pipe["wall_s"],
                        "peak_rss_bytes": pipe["peak_rss_bytes"]}
    for node, window in sorted(pipe["stages"].items(), key=lambda kv: kv[1]["start"]):
        part["stages"][node] = {"wall_s": round(window["end"] - window["start"], 2),
                                "peak_rss_bytes": peak_between(pipe["samples"], window["start"], window["end"]),
                                "state": window["state"]}
    part["quality"] = _quality(summary, report["bayes_auc"])
    part["push"] = _push_record(summary.get("push") or {})
    check = ((summary.get("gates") or {}).get("serving_check") or {}).get("measured")
    if check:
        part["serving_check"] = check
    training = summary.get("training") or {}
    part["examples_uri"] = (summary.get("ingestion") or {}).get("examples_uri")
    part["trained_model_dir"] = (os.path.join(training["model_uri"], "Format-Serving")
                                 if training.get("model_uri") else None)
    part["transform_graph_uri"] = pipe.get("transform_graph_uri")
    unpruned_export(opts, part)
    measure_serving(opts, part)
    part["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    _write_json(part_path(work, day, optimizer), part)
    return part


def unpruned_export(opts, part: Dict[str, Any]) -> None:
    """The like-for-like unpruned export of `part`'s trained model (a child process)."""
    if not (part.get("trained_model_dir") and part.get("transform_graph_uri") and part.get("examples_uri")):
        return
    day, optimizer = part["day"], part["optimizer"]
    print(f"day {day} {optimizer}: unpruned export", flush=True)
    exported = run_child("export", opts, os.path.join(opts.work, "logs", f"export-day-{day}-{optimizer}.log"), [
        "--child-args", json.dumps({"trained_model_dir": part["trained_model_dir"],
                                    "transform_graph_uri": part["transform_graph_uri"],
                                    "examples_uri": part["examples_uri"],
                                    "warmup_requests": (part.get("push") or {}).get("warmup_requests") or 0})])
    if exported.get("error"):
        part["unpruned"] = {"error": exported["error"]}
    else:
        part["stages"]["unpruned_export"] = _stage(exported)
        part["unpruned"] = {k: exported[k] for k in ("dir", "saved_model_bytes", "embedding_bytes",
                                                     "embedding_rows", "export_s", "warmup_requests")}


def measure_serving(opts, part: Dict[str, Any]) -> None:
    """The pushed (pruned) model and the unpruned export of `part`, served and timed side by side."""
    if not (part.get("push") or {}).get("pushed") or not part.get("examples_uri"):
        return
    day, optimizer = part["day"], part["optimizer"]
    print(f"day {day} {optimizer}: serving", flush=True)
    targets = {"examples_uri": part["examples_uri"], "pruned": part["push"]["path"],
               "unpruned": (part.get("unpruned") or {}).get("dir")}
    served = run_child("serving", opts, os.path.join(opts.work, "logs", f"serving-day-{day}-{optimizer}.log"),
                       ["--child-args", json.dumps(targets)])
    if served.get("error"):
        part["serving"] = {"error": served["error"]}
    else:
        part["stages"]["serving_measurement"] = _stage(served)
        part["serving"] = {k: served[k] for k in ("pruned", "unpruned", "examples") if k in served}
        part["serving"]["measured"] = datetime.datetime.now().isoformat(timespec="seconds")


def _written_during(part: Dict[str, Any], work: str, component: str, output: str) -> Optional[str]:
    """The artifact folder `component` wrote to `output` during `part`'s run (for parts written before
    the benchmark recorded it): the one whose mtime falls between the part's start and finish."""
    if not (part.get("started") and part.get("finished")):
        return None
    started, finished = (datetime.datetime.fromisoformat(part[k]).timestamp() for k in ("started", "finished"))
    written = [p for p in glob.glob(os.path.join(output_dir(work, part["optimizer"]), "pipeline_root",
                                                 component, output, "*"))
               if started <= os.path.getmtime(p) <= finished]
    return written[0] if len(written) == 1 else None


_RECORDED_LATER = {"examples_uri": ("ClickLogExampleGen", "examples", ""),
                   "trained_model_dir": ("Trainer", "model", "Format-Serving"),
                   "transform_graph_uri": ("Transform", "transform_graph", "")}


def finished_part(opts) -> Tuple[str, Dict[str, Any]]:
    """A finished (day, optimizer)'s part and its path, with the folders it names filled in."""
    path = part_path(opts.work, opts.day, opts.optimizer)
    part = _read_json(path)
    if not part:
        raise SystemExit(f"error: no part for day {opts.day} {opts.optimizer} under {opts.work}: run the day first")
    for key, (component, output, inside) in _RECORDED_LATER.items():
        if not part.get(key):
            found = _written_during(part, opts.work, component, output)
            part[key] = os.path.join(found, inside) if found and inside else found
    return path, part


def _missing(paths: Sequence[Optional[str]]) -> Optional[str]:
    return next((p or "(not recorded)" for p in paths if not p or not os.path.exists(p)), None)


def remeasure_serving(opts) -> Dict[str, Any]:
    """Serve a finished (day, optimizer)'s two models again and update its part."""
    path, part = finished_part(opts)
    missing = _missing([(part.get("push") or {}).get("path"), (part.get("unpruned") or {}).get("dir"),
                        part.get("examples_uri")])
    if missing:
        raise SystemExit(f"error: day {opts.day} {opts.optimizer}: {missing} is gone: rerun the day")
    measure_serving(opts, part)
    _write_json(path, part)
    return part


def repush(opts) -> Dict[str, Any]:
    """Push a finished (day, optimizer)'s trained model again with the current code, redo its
    unpruned export, serve both again; update its part (see the module doc)."""
    path, part = finished_part(opts)
    missing = _missing([part.get("trained_model_dir"), part.get("transform_graph_uri"), part.get("examples_uri")])
    if missing:
        raise SystemExit(f"error: day {opts.day} {opts.optimizer}: {missing} is gone: rerun the day")
    print(f"day {opts.day} {opts.optimizer}: re-push", flush=True)
    pushed = run_child("repush", opts, os.path.join(opts.work, "logs", f"repush-day-{opts.day}-{opts.optimizer}.log"),
                       ["--child-args", json.dumps({k: part[k] for k in _RECORDED_LATER})])
    if pushed.get("error"):
        raise SystemExit(f"error: day {opts.day} {opts.optimizer}: re-push: {pushed['error']}")
    part.setdefault("push_as_run", part.get("push"))
    part["push"] = dict(pushed["push"], repushed=datetime.datetime.now().isoformat(timespec="seconds"))
    part["stages"]["repush"] = _stage(pushed)
    unpruned_export(opts, part)
    measure_serving(opts, part)
    _write_json(path, part)
    return part


def run_vocabulary(opts) -> Dict[str, Any]:
    from pipelines import generator
    print(f"vocabulary: generating and counting {opts.rows:,} rows", flush=True)
    result = run_child("vocabulary", opts, os.path.join(opts.work, "logs", f"vocabulary-{opts.rows}.log"))
    if result.get("error"):
        raise RuntimeError(result["error"])
    cfg = generator.preset_config(PRESET, opts.seed)
    expected = generator.expected_vocabulary(cfg, opts.rows)
    at_10m = generator.expected_vocabulary(cfg, DEFAULT_ROWS)
    counted = result["counted"]
    ratio = counted["at_threshold_train"] / expected["total"] if expected["total"] else None
    part = {
        "rows": opts.rows, "preset": PRESET, "seed": opts.seed, "threshold": 10, "train_fraction": 0.8,
        "command": f"python -m benchmarks.scale_run --vocabulary {opts.rows}", "machine": machine(),
        "generate_s": result["generate_s"], "count_s": result["count_s"], "bytes": result["bytes"],
        "generate_peak_rss_bytes": result["peak_rss_bytes"], "bayes_auc": result["bayes_auc"],
        "counted": counted,
        "expected": {k: round(v, 1) for k, v in expected.items()},
        "counted_over_expected": round(ratio, 4) if ratio else None,
        "expected_at_10m": {k: round(v, 1) for k, v in at_10m.items()},
        "extrapolated_at_10m": round(at_10m["total"] * ratio) if ratio else None,
        "method": ("counted: values of each C field seen >= 10 times in the generated file (pyarrow value_counts), "
                   "train split by binomial thinning of each count (p = 0.8, ExampleGen's 8:2 hash split); "
                   "expected: pipelines.generator.expected_vocabulary, sum over values of P(Poisson(n p) >= 10) "
                   "with n the train rows where the field is present; extrapolated: the expectation at 10M rows "
                   "times counted/expected at this size"),
    }
    _write_json(vocabulary_part_path(opts.work, opts.rows), part)
    _write_json(vocabulary_result_path(opts.out, opts.rows), part)
    return part


def machine(probe: bool = False) -> Dict[str, Any]:
    """The machine; with `probe`, also its memory bandwidth now (benchmarks.machine_probe), which
    makes parts run on different days comparable: the Adam Trainer's dense update is memory-bound."""
    try:
        import psutil
        memory = psutil.virtual_memory().total
    except Exception:  # noqa: BLE001
        memory = None
    found = {"cpus": os.cpu_count(), "memory_bytes": memory, "python": platform.python_version(),
             "load_average": [round(x, 2) for x in os.getloadavg()]}
    if probe:
        from benchmarks.machine_probe import memory_bandwidth
        found["memory_bandwidth"] = {k: round(v, 2) for k, v in memory_bandwidth().items()}
    return found


# ------------------------------------------------------------------------------------------------
# merge: parts -> one output with the targets
# ------------------------------------------------------------------------------------------------
def steps_to_reach(quality: Dict[str, Any], target_auc: Optional[float]) -> Optional[float]:
    """Training steps until the per-epoch eval AUC first reaches `target_auc` (None if it never does).

    `steps` are the kept model's: with early stopping the Trainer restores the best epoch's weights and
    optimizer state, step counter included, so they are `best_epoch` epochs' worth, not `epochs`'."""
    aucs, steps, epochs = quality.get("val_auc_by_epoch"), quality.get("steps"), quality.get("epochs")
    if not aucs or not steps or not epochs or target_auc is None:
        return None
    per_epoch = steps / (quality.get("best_epoch") or epochs)
    for i, auc in enumerate(aucs):
        if auc >= target_auc:
            return round((i + 1) * per_epoch, 1)
    return None


def kept_epoch_auc(quality: Dict[str, Any]) -> Optional[float]:
    """The per-epoch eval AUC of the epoch the Trainer kept (early stopping's best, else the last)."""
    aucs = quality.get("val_auc_by_epoch")
    if not aucs:
        return None
    best = quality.get("best_epoch")  # 1-based
    return aucs[best - 1] if best and best <= len(aucs) else aucs[-1]


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return round(a / b, 3) if a and b else None


def day_rows(parts: Dict[Tuple[int, str], Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """The derived per-day figures of each part (what the text table and the targets use)."""
    rows: Dict[str, Dict[str, Any]] = {}
    for (day, optimizer), part in sorted(parts.items()):
        q, push, unpruned = part.get("quality") or {}, part.get("push") or {}, part.get("unpruned") or {}
        serving = part.get("serving") or {}
        stages = part.get("stages") or {}
        day1_q = (parts.get((1, optimizer)) or {}).get("quality") or {}
        day1_auc = kept_epoch_auc(day1_q)
        day1_steps = steps_to_reach(day1_q, day1_auc)
        row = {
            "day": day, "optimizer": optimizer, "status": part.get("status"),
            "pipeline_s": (part.get("pipeline") or {}).get("wall_s"),
            "max_stage_rss_bytes": max((s.get("peak_rss_bytes") or 0 for s in stages.values()), default=None),
            "eval_auc": q.get("eval_auc"), "bayes_auc": q.get("bayes_auc"), "bayes_gap": q.get("bayes_gap"),
            "row_sparsity": q.get("row_sparsity"), "embedding_rows": q.get("embedding_rows"),
            "steps": q.get("steps"),
            "steps_to_day1_auc": steps_to_reach(q, day1_auc) if day > 1 else day1_steps,
            "day1_steps_to_its_auc": day1_steps,
            "pruned_bytes": push.get("pruned_bytes"), "unpruned_bytes": unpruned.get("saved_model_bytes"),
            "size_ratio": _ratio(unpruned.get("saved_model_bytes"), push.get("pruned_bytes")),
            "parity": push.get("parity_max_abs_error"), "warmup_requests": push.get("warmup_requests"),
            "val_auc_by_epoch": q.get("val_auc_by_epoch"),
        }
        for label in ("pruned", "unpruned"):
            s = serving.get(label) or {}
            row[f"{label}_load_s"] = s.get("load_s")
            row[f"{label}_rss_bytes"] = s.get("rss_bytes")
            # what loading and serving the model added to the serving process (the TF runtime's own
            # memory, before any model, is the same for both)
            row[f"{label}_model_rss_bytes"] = (s["rss_bytes"] - s["rss_idle_bytes"]
                                               if s.get("rss_bytes") and s.get("rss_idle_bytes") else None)
            for key, cell in (s.get("latency") or {}).items():
                row[f"{label}_{key.replace('/', '_')}_p50_ms"] = cell.get("p50_ms")
                row[f"{label}_{key.replace('/', '_')}_p99_ms"] = cell.get("p99_ms")
        rows[f"day{day}/{optimizer}"] = row
    return rows


def _all(passed: Sequence[Optional[bool]]) -> Optional[bool]:
    """True when every check passed, False when one failed, None when one could not be measured."""
    return False if any(p is False for p in passed) else (None if not passed or any(p is None for p in passed) else True)


def _check(name: str, target: str, values: Dict[str, Any], by_day: Dict[str, Optional[bool]]) -> Dict[str, Any]:
    """A target and its verdict on each day it applies to (`by_day`: "day2" -> met?); met over all days."""
    return {"name": name, "target": target, "met": _all(list(by_day.values())), "by_day": by_day, "values": values}


def _per_day(days: Sequence[int], verdict) -> Dict[str, Optional[bool]]:
    return {f"day{d}": verdict(d) for d in days}


def _le(a, b):
    return None if a is None or b is None else a <= b


def targets(rows: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
    get = lambda day, opt: rows.get(f"day{day}/{opt}") or {}  # noqa: E731
    out = []
    for opt in OPTIMIZERS:
        values = {f"day{d}": {"pipeline_s": get(d, opt).get("pipeline_s"),
                              "max_stage_rss_gib": _gib(get(d, opt).get("max_stage_rss_bytes"))} for d in DAYS}
        out.append(_check(f"{opt}_day_time_and_memory",
                          f"{opt}: each day's run <= {MAX_DAY_SECONDS // 60} min end to end, peak RSS <= 16 GiB in "
                          "every stage", values,
                          _per_day(DAYS, lambda d, opt=opt: _all([
                              _le(get(d, opt).get("pipeline_s"), MAX_DAY_SECONDS),
                              _le(get(d, opt).get("max_stage_rss_bytes"), MAX_STAGE_RSS_BYTES)]))))
    ga = lambda d: get(d, "group_adam")  # noqa: E731
    ad = lambda d: get(d, "adam")  # noqa: E731
    out.append(_check("group_adam_auc_vs_bayes", f"Group Adam eval AUC within {MAX_BAYES_GAP} of Bayes every day",
                      {f"day{d}": {"auc": ga(d).get("eval_auc"), "bayes": ga(d).get("bayes_auc")} for d in DAYS},
                      _per_day(DAYS, lambda d: _le(ga(d).get("bayes_gap"), MAX_BAYES_GAP))))
    out.append(_check("group_adam_auc_vs_adam", f"Group Adam eval AUC >= Adam's - {MAX_AUC_BELOW_ADAM} every day",
                      {f"day{d}": {"group_adam": ga(d).get("eval_auc"), "adam": ad(d).get("eval_auc")} for d in DAYS},
                      _per_day(DAYS, lambda d: None if ga(d).get("eval_auc") is None or ad(d).get("eval_auc") is None
                               else ga(d)["eval_auc"] >= ad(d)["eval_auc"] - MAX_AUC_BELOW_ADAM)))
    out.append(_check("group_adam_row_sparsity", f"Group Adam row sparsity >= {MIN_ROW_SPARSITY:.0%} every day",
                      {f"day{d}": ga(d).get("row_sparsity") for d in DAYS},
                      _per_day(DAYS, lambda d: None if ga(d).get("row_sparsity") is None
                               else ga(d)["row_sparsity"] >= MIN_ROW_SPARSITY)))
    out.append(_check("pushed_size_vs_unpruned",
                      f"Group Adam's pushed SavedModel >= {MIN_SIZE_RATIO:g}x smaller than the unpruned export",
                      {f"day{d}": {"pruned": ga(d).get("pruned_bytes"), "unpruned": ga(d).get("unpruned_bytes")}
                       for d in DAYS},
                      _per_day(DAYS, lambda d: None if ga(d).get("size_ratio") is None
                               else ga(d)["size_ratio"] >= MIN_SIZE_RATIO)))
    out.append(_check("pushed_size_vs_adam", f"Group Adam's pushed SavedModel >= {MIN_SIZE_RATIO:g}x smaller than Adam's",
                      {f"day{d}": {"group_adam": ga(d).get("pruned_bytes"), "adam": ad(d).get("pruned_bytes")}
                       for d in DAYS},
                      _per_day(DAYS, lambda d: None if not ga(d).get("pruned_bytes") or not ad(d).get("pruned_bytes")
                               else ad(d)["pruned_bytes"] / ga(d)["pruned_bytes"] >= MIN_SIZE_RATIO)))
    out.append(_check("serving_rss", f"serving RSS >= {MIN_RSS_RATIO:g}x smaller (pruned vs unpruned, Group Adam)",
                      {f"day{d}": {"pruned": ga(d).get("pruned_rss_bytes"), "unpruned": ga(d).get("unpruned_rss_bytes"),
                                   "pruned_model": ga(d).get("pruned_model_rss_bytes"),
                                   "unpruned_model": ga(d).get("unpruned_model_rss_bytes")} for d in DAYS},
                      _per_day(DAYS, lambda d: None if not ga(d).get("pruned_rss_bytes") or not ga(d).get("unpruned_rss_bytes")
                               else ga(d)["unpruned_rss_bytes"] / ga(d)["pruned_rss_bytes"] >= MIN_RSS_RATIO)))
    out.append(_check("serving_load_time", "load time smaller (pruned vs unpruned, Group Adam)",
                      {f"day{d}": {"pruned": ga(d).get("pruned_load_s"), "unpruned": ga(d).get("unpruned_load_s")}
                       for d in DAYS},
                      _per_day(DAYS, lambda d: None if ga(d).get("pruned_load_s") is None
                               or ga(d).get("unpruned_load_s") is None
                               else ga(d)["pruned_load_s"] < ga(d)["unpruned_load_s"])))
    p99_keys = ("grpc_batch1", "grpc_batch64", "rest_batch1", "rest_batch64")
    p99_values = {f"day{d}/{key}": {"pruned": ga(d).get(f"pruned_{key}_p99_ms"),
                                    "unpruned": ga(d).get(f"unpruned_{key}_p99_ms")} for d in DAYS for key in p99_keys}

    def p99_day(d):
        cells = [p99_values[f"day{d}/{key}"] for key in p99_keys]
        return _all([None if c["pruned"] is None or c["unpruned"] is None else c["pruned"] <= P99_TOLERANCE * c["unpruned"]
                     for c in cells])
    out.append(_check("serving_p99", f"p99 latency no worse (pruned <= {P99_TOLERANCE:g} x unpruned, batch 1 and 64, "
                                     "gRPC and REST)", p99_values, _per_day(DAYS, p99_day)))
    out.append(_check("parity", f"parity <= {MAX_PARITY:g} (pruned vs trained model, Group Adam)",
                      {f"day{d}": ga(d).get("parity") for d in DAYS},
                      _per_day(DAYS, lambda d: _le(ga(d).get("parity"), MAX_PARITY))))

    def warm_day(d):
        day1_steps, steps = ga(d).get("day1_steps_to_its_auc"), ga(d).get("steps_to_day1_auc")
        if not day1_steps or not ga(d).get("val_auc_by_epoch"):
            return None
        # a warm day whose per-epoch AUC never reaches day 1's fails
        return steps is not None and steps <= MAX_WARM_STEPS_FRACTION * day1_steps
    out.append(_check("warm_start_steps",
                      f"warm-started days reach day 1's AUC in <= {MAX_WARM_STEPS_FRACTION:g} of day 1's steps "
                      "(per-epoch eval AUC: resolution one epoch)",
                      {f"day{d}": {"steps": ga(d).get("steps_to_day1_auc"), "day1_steps": ga(d).get("day1_steps_to_its_auc")}
                       for d in DAYS[1:]}, _per_day(DAYS[1:], warm_day)))
    out.append(_check("day3_size_growth", f"pushed model on day 3 <= {MAX_DAY3_SIZE_GROWTH:g} x day 1's",
                      {"day1": ga(1).get("pruned_bytes"), "day3": ga(3).get("pruned_bytes")},
                      {"day3": None if not ga(1).get("pruned_bytes") or not ga(3).get("pruned_bytes")
                       else ga(3)["pruned_bytes"] <= MAX_DAY3_SIZE_GROWTH * ga(1)["pruned_bytes"]}))
    return out


def _gib(value: Optional[float]) -> Optional[float]:
    return round(value / GIB, 3) if value else None


def merge(work: str, out_prefix: str) -> Dict[str, Any]:
    parts: Dict[Tuple[int, str], Dict[str, Any]] = {}
    for day in DAYS:
        for optimizer in OPTIMIZERS:
            part = _read_json(part_path(work, day, optimizer))
            if part is not None:
                parts[day, optimizer] = part
    checks = {}  # rows -> check: those beside the output, then the work folder's
    for path in sorted(glob.glob(vocabulary_result_path(out_prefix, "*"))) + \
            sorted(glob.glob(vocabulary_part_path(work, "*"))):
        check = _read_json(path)
        checks[check["rows"]] = check
    vocabulary = [checks[rows] for rows in sorted(checks)]
    rows = day_rows(parts)
    sizes = sorted({p.get("rows") for p in parts.values()})
    sets = sorted({tuple(p.get("sets") or []) for p in parts.values()})
    notes = []
    common = [v for v in (sets[0] if sets else ()) if all(v in other for other in sets)]
    if len(sets) > 1:
        notes.append("parts ran with different --set overrides besides the command's: " + "; ".join(
            f"day{d}/{o}: " + (" ".join(f"--set {v}" for v in parts[d, o].get("sets") or [] if v not in common)
                               or "none")
            for d, o in sorted(parts)))
    if len(sizes) > 1:
        notes.append(f"parts ran with different row counts {sizes}: compare within one size only")
    repushed = [f"day{d}/{o}" for d, o in sorted(parts) if (parts[d, o].get("push") or {}).get("repushed")]
    if repushed:
        notes.append("pushed and unpruned models of " + ", ".join(repushed) + " re-made from the day's trained model "
                     "by --repush with the Pusher's code as it is now (the pipeline's push: push_as_run in the JSON)")
    imported = {}
    for (d, o), part in sorted(parts.items()):
        if part.get("imported_from"):
            imported.setdefault(part["imported_from"], []).append(f"day{d}/{o} (run {str(part.get('started'))[:10]})")
    for source, names in imported.items():
        notes.append(f"imported from {source}, not rerun with the others: " + ", ".join(names))
    missing = [f"day {d} {o}" for d in DAYS for o in OPTIMIZERS if (d, o) not in parts]
    if missing:
        notes.append("not run yet: " + ", ".join(missing) + " (python -m benchmarks.scale_run --day N --optimizer X)")
    result = {
        "issue": 22, "preset": PRESET,
        "command": "python -m benchmarks.scale_run" + ("" if sizes in ([], [DEFAULT_ROWS]) else f" --rows {sizes[0]}")
                   + "".join(f" --set {value}" for value in common),
        "rows_per_day": sizes[0] if len(sizes) == 1 else sizes,
        "merged": datetime.datetime.now().isoformat(timespec="seconds"),
        "days": {f"day{d}": {o: parts[d, o] for o in OPTIMIZERS if (d, o) in parts} for d in DAYS},
        "summary": rows, "targets": targets(rows), "vocabulary_check": vocabulary, "missing": missing,
        "notes": notes,
    }
    _write_json(out_prefix + ".json", result)
    with open(out_prefix + ".txt", "w", encoding="utf-8") as f:
        f.write(render_text(result))
    return result


def _fmt(value, spec: str = "", none: str = "-") -> str:
    if value is None:
        return none
    return format(value, spec) if spec else str(value)


def _mb(value) -> str:
    return "-" if not value else f"{value / 1e6:.2f}"


def render_text(result: Dict[str, Any]) -> str:
    lines = [f"Issue #22 scale run: {result['preset']} data, {result['rows_per_day']} rows a day, days 1-3, "
             "Group Adam vs Adam (tf_keras); whole local pipeline (LocalDagRunner).",
             f"Command: {result['command']} (resumable: --day N --optimizer group_adam|adam, then --merge)", ""]
    header = (f"{'day/optimizer':<18}{'status':<11}{'run s':>8}{'max RSS GiB':>12}{'eval AUC':>10}{'Bayes':>8}"
              f"{'sparsity':>9}{'emb rows':>10}{'steps':>8}{'pushed MB':>10}{'unpruned MB':>12}{'ratio':>7}{'parity':>9}")
    lines += ["Per day", header, "-" * len(header)]
    for key, r in result["summary"].items():
        lines.append(f"{key:<18}{_fmt(r['status']):<11}{_fmt(r['pipeline_s'], '.0f'):>8}"
                     f"{_fmt(_gib(r['max_stage_rss_bytes']), '.2f'):>12}{_fmt(r['eval_auc'], '.4f'):>10}"
                     f"{_fmt(r['bayes_auc'], '.4f'):>8}{_fmt(r['row_sparsity'], '.3f'):>9}"
                     f"{_fmt(r['embedding_rows']):>10}{_fmt(r['steps']):>8}{_mb(r['pruned_bytes']):>10}"
                     f"{_mb(r['unpruned_bytes']):>12}{_fmt(r['size_ratio'], '.2f'):>7}{_fmt(r['parity'], '.1g'):>9}")
    lines += ["", "Serving (serving/local_server/, one fresh process per model; RSS after the timed requests, model MB "
                  "= that RSS minus the process's RSS before the model loaded; latency of serving_default, ms)"]
    header = (f"{'day/optimizer':<18}{'model':<10}{'load s':>8}{'RSS MB':>9}{'model MB':>10}"
              f"{'gRPC b1 p50/p99':>18}{'gRPC b64 p50/p99':>19}{'REST b1 p50/p99':>18}{'REST b64 p50/p99':>19}")
    lines += [header, "-" * len(header)]
    for key, r in result["summary"].items():
        for label in ("pruned", "unpruned"):
            if r.get(f"{label}_load_s") is None:
                continue
            cells = "".join(f"{_fmt(r.get(f'{label}_{c}_p50_ms'), '.2f') + '/' + _fmt(r.get(f'{label}_{c}_p99_ms'), '.2f'):>{w}}"
                            for c, w in (("grpc_batch1", 18), ("grpc_batch64", 19), ("rest_batch1", 18),
                                         ("rest_batch64", 19)))
            lines.append(f"{key:<18}{label:<10}{_fmt(r[f'{label}_load_s'], '.2f'):>8}{_mb(r[f'{label}_rss_bytes']):>9}"
                         f"{_mb(r.get(f'{label}_model_rss_bytes')):>10}{cells}")
    lines += ["", "Stages (wall s / peak RSS GiB of the stage's process tree)"]
    for day_key, by_opt in result["days"].items():
        for optimizer, part in by_opt.items():
            stages = ", ".join(f"{name} {_fmt(s.get('wall_s'), '.0f')}s/{_fmt(_gib(s.get('peak_rss_bytes')), '.2f')}"
                               for name, s in (part.get("stages") or {}).items())
            lines.append(f"  {day_key}/{optimizer}: {stages}")
    probes = [(f"{day_key}/{optimizer}", part["machine"]["memory_bandwidth"])
              for day_key, by_opt in result["days"].items() for optimizer, part in by_opt.items()
              if (part.get("machine") or {}).get("memory_bandwidth")]
    if probes:
        lines += ["", "Machine speed at the start of each part (benchmarks/machine_probe.py, NumPy; GB/s read + "
                      "written, best of 5): stream copy / random 64-byte rows"]
        lines += [f"  {key}: {bw['stream_gb_per_s']:.1f} / {bw['random_64b_rows_gb_per_s']:.2f}" for key, bw in probes]
        missing = [f"{d}/{o}" for d, by_opt in result["days"].items() for o, part in by_opt.items()
                   if not (part.get("machine") or {}).get("memory_bandwidth")]
        if missing:
            lines.append(f"  not probed (run before the probe existed): {', '.join(missing)}")
    for vocab in result.get("vocabulary_check") or []:
        c = vocab["counted"]
        lines += ["", f"Vocabulary check at {vocab['rows']:,} rows: {c['at_threshold_train']:,} values >= 10 in the train "
                      f"split (whole file {c['at_threshold_file']:,}; {c['distinct']:,} distinct), expected "
                      f"{vocab['expected']['total']:,.0f} (counted/expected {vocab['counted_over_expected']}); at 10M rows "
                      f"expected {vocab['expected_at_10m']['total']:,.0f}, extrapolated {vocab['extrapolated_at_10m']:,}"]
    lines += ["", "Targets (issue #22)"]
    for t in result["targets"]:
        verdict = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}[t["met"]]
        days = ", ".join(f"{day} {({True: 'met', False: 'not met', None: '-'})[met]}"
                         for day, met in (t.get("by_day") or {}).items())
        lines.append(f"  [{verdict}] {t['target']}" + (f" ({days})" if days else ""))
    if result.get("notes"):
        lines += [""] + [f"Note: {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
def run_all(opts) -> int:
    """Every (day, optimizer) without a part of this size, each as its own invocation, then the merge."""
    base = [sys.executable, "-m", "benchmarks.scale_run", "--work", opts.work, "--rows", str(opts.rows),
            "--seed", str(opts.seed), "--serving-requests", str(opts.serving_requests),
            "--timeout-s", str(opts.timeout_s), "--sample-s", str(opts.sample_s)]
    if opts.config:
        base += ["--config", opts.config]
    for item in opts.set or []:
        base += ["--set", item]
    for day in DAYS:
        for optimizer in OPTIMIZERS:
            part = _read_json(part_path(opts.work, day, optimizer))
            if part and part.get("rows") == opts.rows and part.get("status") == "succeeded" and not opts.redo:
                continue
            code = subprocess.call(base + ["--day", str(day), "--optimizer", optimizer], cwd=REPO)
            if code != 0:
                print(f"error: day {day} {optimizer} failed (exit {code}); rerun resumes from it", file=sys.stderr)
                return code
    merge(opts.work, opts.out)
    print(open(opts.out + ".txt", encoding="utf-8").read())
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_run", description=__doc__.splitlines()[0])
    parser.add_argument("--day", type=int, choices=DAYS, help="run one day (with --optimizer)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS)
    parser.add_argument("--merge", action="store_true", help="merge the parts under --work into --out")
    parser.add_argument("--import-parts", metavar="MERGED_JSON",
                        help="with --merge: first copy the parts of an earlier merged output that --work lacks")
    parser.add_argument("--vocabulary", type=int, metavar="ROWS",
                        help="generate one day of ROWS rows and count its vocabulary rows against the expectation")
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"rows a day (default {DEFAULT_ROWS:,})")
    parser.add_argument("--seed", type=int, default=7, help="generator seed (the truth)")
    parser.add_argument("--work", default=DEFAULT_WORK, help="data, pipeline outputs, parts and logs")
    parser.add_argument("--out", default=DEFAULT_OUT, help="merged output prefix: OUT.json and OUT.txt")
    parser.add_argument("--config", help="pipeline config YAML (pipelines/config.py keys)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="pipeline config override, e.g. trainer.epochs=2 (repeatable)")
    parser.add_argument("--serving-requests", type=int, default=2000,
                        help="timed requests per model and latency cell (p99 = the 20th slowest of 2000)")
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval")
    parser.add_argument("--timeout-s", type=float, default=4 * 3600, help="limit of each child process")
    parser.add_argument("--redo", action="store_true", help="without --day: rerun days that have a part")
    parser.add_argument("--remeasure-serving", action="store_true",
                        help="with --day and --optimizer: serve and time that finished day's models again")
    parser.add_argument("--repush", action="store_true",
                        help="with --day and --optimizer: push that finished day's trained model again with the "
                             "current Pusher code (into <work>/<optimizer>/repush/), redo its unpruned export, "
                             "serve both again")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--child-args", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    opts.work = os.path.abspath(opts.work)
    opts.out = os.path.abspath(opts.out)
    if opts.child:
        return child_main(opts)
    if opts.rows < 1:
        parser.error("--rows must be positive")
    if opts.vocabulary:
        opts.rows = opts.vocabulary
        part = run_vocabulary(opts)
        print(json.dumps({k: part[k] for k in ("rows", "counted_over_expected", "extrapolated_at_10m")}
                         | {"at_threshold_train": part["counted"]["at_threshold_train"],
                            "expected": part["expected"]["total"], "expected_at_10m": part["expected_at_10m"]["total"]},
                         indent=1))
        return 0
    if opts.import_parts and not opts.merge:
        parser.error("--import-parts goes with --merge")
    if opts.merge:
        if opts.import_parts:
            print("imported: " + (", ".join(import_parts(opts.work, os.path.abspath(opts.import_parts))) or "none"))
        merge(opts.work, opts.out)
        print(open(opts.out + ".txt", encoding="utf-8").read())
        return 0
    if (opts.day is None) != (opts.optimizer is None):
        parser.error("--day and --optimizer go together")
    if opts.remeasure_serving or opts.repush:
        if opts.day is None:
            parser.error(f"{'--repush' if opts.repush else '--remeasure-serving'} needs --day and --optimizer")
        part = repush(opts) if opts.repush else remeasure_serving(opts)
        print(json.dumps({label: {k: (part.get("serving") or {}).get(label, {}).get(k) for k in ("load_s", "rss_bytes")}
                          for label in ("pruned", "unpruned")}))
        return 0 if "error" not in (part.get("serving") or {}) else 1
    if opts.day is not None:
        part = run_invocation(opts)
        q = part.get("quality") or {}
        print(f"day {part['day']} {part['optimizer']}: {part.get('status')}, pipeline "
              f"{(part.get('pipeline') or {}).get('wall_s')} s, eval AUC {q.get('eval_auc')} (Bayes {q.get('bayes_auc')}), "
              f"row sparsity {q.get('row_sparsity')}; part {part_path(opts.work, opts.day, opts.optimizer)}")
        return 0 if part.get("status") == "succeeded" else 1
    return run_all(opts)


if __name__ == "__main__":
    sys.exit(main())
