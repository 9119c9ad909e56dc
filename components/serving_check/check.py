"""Is a candidate SavedModel servable? Load it in a fresh serving process and ask it over TF Serving's APIs.

``check_candidate`` starts ``python -m serving.local_server`` (the project's serving process: the TF
runtime behind TF Serving's REST and gRPC APIs) in a new process over an empty model directory, then
publishes the candidate into it as version 1 -- the way the Pusher publishes a version that TF
Serving picks up -- and measures, from the outside, over the APIs only:

* ``load_s``: from publishing the version until ``GET /v1/models/<name>`` reports it ``AVAILABLE``
  (a version that fails to load is reported ``END`` with TF's error, which becomes the reason);
* the signatures (``GetModelMetadata``): ``serving_default`` takes ``examples`` (DT_STRING) and
  answers ``probability`` (DT_FLOAT); ``predict_raw`` when present;
* the warmup requests (``assets.extra/tf_serving_warmup_requests``, the PredictionLogs TF Serving
  replays at load): each is sent as it is over gRPC ``Predict`` and must be answered with one finite
  probability in [0, 1] per example;
* a sample of eval rows, one request per row over REST (``instances`` with ``b64``) and over gRPC, and
  once as a batch over each protocol through ``serving_default`` and ``predict_raw``: every answer
  must have the batch's shape and match the reference scores (the trained model's, computed by the
  caller) within ``max_score_diff``;
* p50/p99 latency per protocol over the single-row requests (warmup replays count for gRPC);
* ``peak_rss_mb``: the serving process's peak resident memory (``VmHWM``) after all of that.

Every limit is checked; the report says each value, its limit and the verdict, and ``reason`` names
what failed. Any failure -- the process dying, a load error, a wrong answer, a limit exceeded, a
timeout -- is a failed check (fail-closed); the process is always stopped.
"""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent import futures
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from components import push_defaults

SERVING_SIGNATURE = "serving_default"
RAW_SIGNATURE = "predict_raw"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
CHECK_VERSION = 1


class CheckFailed(Exception):
    """The candidate is not servable; the message is the one-line reason."""


@dataclasses.dataclass(frozen=True)
class Limits:
    max_load_seconds: float = push_defaults.MAX_LOAD_SECONDS
    max_peak_rss_mb: float = push_defaults.MAX_PEAK_RSS_MB
    max_p99_latency_ms: float = push_defaults.MAX_P99_LATENCY_MS
    max_score_diff: float = push_defaults.MAX_SCORE_DIFF
    startup_timeout_seconds: float = push_defaults.STARTUP_TIMEOUT_SECONDS


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_status_mb(pid: int, key: str) -> Optional[float]:
    """VmRSS / VmHWM of a Linux process in MiB (None where /proc has no such file)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        return None
    return None


def _percentile(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else None


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


class ServingProcess:
    """``python -m serving.local_server`` over ``<base>/<model_name>/`` in a fresh process."""

    def __init__(self, base_dir: str, model_name: str, log_path: str):
        self.base_dir, self.model_name, self.log_path = base_dir, model_name, log_path
        self.rest_port, self.grpc_port = _free_port(), _free_port()
        repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([repo_root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
        self._log = open(log_path, "wb")
        self.listening: Optional[futures.Future] = None  # start_serving's watch of its start-up
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "serving.local_server", "--base", base_dir, "--model-name", model_name,
             "--host", "127.0.0.1", "--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port),
             "--poll-seconds", "0.1", "--retry-failed-seconds", "3600"],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=repo_root, start_new_session=True)

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1] if lines else ""

    def exited(self) -> Optional[str]:
        code = self.proc.poll()
        if code is None:
            return None
        tail = self.log_tail()
        return f"the serving process exited with code {code}" + (f": {_one_line(tail)}" if tail else "")

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        self._log.close()


def _wait_until_listening(server: ServingProcess, timeout_s: float) -> float:
    import requests
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reason = server.exited()
        if reason:
            raise CheckFailed(reason)
        try:
            requests.get(f"{server.rest_url}/v1/models/{server.model_name}", timeout=2)
            return time.monotonic() - server.started
        except requests.exceptions.RequestException:
            time.sleep(0.1)
    raise CheckFailed(f"the serving process did not start listening within {timeout_s:g}s")


def start_serving(work_dir: str, model_name: str, limits: Limits = Limits()) -> ServingProcess:
    """A serving process over ``<work_dir>/base/<model_name>/``, empty until `check_candidate` publishes
    the candidate there; its start-up (Python, TensorFlow, the ports) is watched in a thread, so that
    it overlaps whatever the caller does meanwhile. Hand it to `check_candidate` (same `work_dir`),
    which stops it; stop it yourself if you do not."""
    base = os.path.join(work_dir, "base")
    os.makedirs(os.path.join(base, model_name), exist_ok=True)
    server = ServingProcess(base, model_name, os.path.join(work_dir, "serving-0.log"))
    watcher = futures.ThreadPoolExecutor(1, thread_name_prefix="serving-check-startup")
    server.listening = watcher.submit(_wait_until_listening, server, limits.startup_timeout_seconds)
    watcher.shutdown(wait=False)
    return server


def _listening_after(server: ServingProcess, timeout_s: float) -> float:
    """Seconds from the start of `server` until it answered (its watcher's, if `start_serving` made it)."""
    return server.listening.result() if server.listening is not None else _wait_until_listening(server, timeout_s)


def _wait_until_available(server: ServingProcess, published_at: float, timeout_s: float) -> float:
    """Seconds from publishing the version until the REST status says AVAILABLE."""
    import requests
    deadline = published_at + timeout_s
    while True:
        reason = server.exited()
        if reason:
            raise CheckFailed(reason)
        try:
            response = requests.get(f"{server.rest_url}/v1/models/{server.model_name}", timeout=5)
            states = response.json().get("model_version_status", []) if response.status_code == 200 else []
        except (requests.exceptions.RequestException, ValueError):
            states = []
        for state in states:
            if str(state.get("version")) != str(CHECK_VERSION):
                continue
            if state.get("state") == "AVAILABLE":
                return time.monotonic() - published_at
            if state.get("state") == "END":
                message = (state.get("status") or {}).get("error_message") or "unknown error"
                raise CheckFailed(f"the serving process cannot load the candidate: {_one_line(message)}")
        if time.monotonic() > deadline:
            raise CheckFailed(f"the candidate did not load within {timeout_s:g}s (max_load_seconds)")
        time.sleep(0.05)


def _check_signatures(signatures) -> None:
    sig = signatures.get(SERVING_SIGNATURE)
    if sig is None:
        raise CheckFailed(f"the served model has no {SERVING_SIGNATURE} signature (has: {', '.join(sorted(signatures))})")
    if set(sig.inputs) != {"examples"} or sig.inputs["examples"].dtype != "DT_STRING":
        raise CheckFailed(f"{SERVING_SIGNATURE} must take one DT_STRING input 'examples', takes "
                          f"{ {n: s.dtype for n, s in sig.inputs.items()} }")
    if "probability" not in sig.outputs or sig.outputs["probability"].dtype != "DT_FLOAT":
        raise CheckFailed(f"{SERVING_SIGNATURE} must answer a DT_FLOAT 'probability', answers "
                          f"{ {n: s.dtype for n, s in sig.outputs.items()} }")


def _scores(values: Any, batch: int, what: str) -> np.ndarray:
    """The answer as a float64 vector of `batch` probabilities, or CheckFailed naming what is wrong."""
    if values is None:
        raise CheckFailed(f"{what}: no 'probability' in the answer")
    array = np.asarray(values, dtype=object)
    if array.shape != (batch,):
        raise CheckFailed(f"{what}: probability has shape {list(array.shape)} for a batch of {batch} "
                          f"(expected [{batch}])")
    try:
        out = array.astype(np.float64)
    except (TypeError, ValueError):
        raise CheckFailed(f"{what}: probability is not numeric") from None
    bad = [float(v) for v in out if not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    if bad:
        raise CheckFailed(f"{what}: probability {bad[0]!r} is not a finite number in [0, 1]")
    return out


def _read_warmup_requests(candidate_dir: str) -> List[Any]:
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    path = os.path.join(candidate_dir, WARMUP_FILE)
    if not tf.io.gfile.exists(path):
        return []
    requests_ = []
    try:
        for record in tf.data.TFRecordDataset(path):
            log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
            if log.WhichOneof("log_type") != "predict_log":
                raise CheckFailed(f"{WARMUP_FILE}: record {len(requests_)} is a {log.WhichOneof('log_type')}, "
                                  "not a predict_log")
            requests_.append(log.predict_log.request)
    except tf.errors.OpError as e:
        raise CheckFailed(f"{WARMUP_FILE} is not a readable TFRecord file: {_one_line(e.message)}") from None
    return requests_


def _raw_columns(signature, examples: Sequence[bytes]) -> Dict[str, list]:
    """tf.Examples as ``predict_raw`` columns (docs/contracts.md: missing int 0, missing string "")."""
    import tensorflow as tf
    columns: Dict[str, list] = {name: [] for name in signature.inputs}
    for serialized in examples:
        features = tf.train.Example.FromString(serialized).features.feature
        for name, spec in signature.inputs.items():
            feature = features.get(name)
            if spec.dtype == "DT_STRING":
                values = feature.bytes_list.value if feature is not None else []
                columns[name].append(values[0].decode("utf-8", "replace") if values else "")
            else:
                values = (feature.int64_list.value or feature.float_list.value) if feature is not None else []
                columns[name].append(int(values[0]) if values else 0)
    return columns


def _max_diff(got: np.ndarray, reference: np.ndarray) -> float:
    return float(np.max(np.abs(got - reference))) if len(got) else 0.0


def check_candidate(candidate_dir: str, examples: Sequence[bytes], reference_scores: Sequence[float],
                    model_name: str = push_defaults.MODEL_NAME, limits: Limits = Limits(),
                    work_dir: Optional[str] = None, server: Optional[ServingProcess] = None) -> Dict[str, Any]:
    """Serve `candidate_dir` (a local SavedModel folder) in a fresh process and check it; returns the report.

    `examples` are serialized raw tf.Examples and `reference_scores` their probabilities from the
    trained model. `server`: a fresh process from `start_serving(work_dir, ...)`, started earlier (else
    one is started here); it is stopped here either way. The report always has ``passed`` and
    ``reason``; it never raises for a candidate that is not servable.
    """
    from serving.grpc_client import GrpcClient
    from serving.rest_client import RestClient
    from serving.retry import NO_RETRY, ServingError
    from serving.signatures import InvalidRequestError

    examples = list(examples)
    reference = np.asarray(reference_scores, np.float64)
    if len(reference) != len(examples) or not examples:
        raise ValueError(f"need one reference score per example and at least one example, got "
                         f"{len(examples)} examples and {len(reference)} scores")
    report: Dict[str, Any] = {"candidate": candidate_dir, "model_name": model_name,
                              "limits": dataclasses.asdict(limits), "sample_rows": len(examples)}
    measured: Dict[str, Any] = {}
    report["measured"] = measured
    if server is not None and work_dir is None:
        server.stop()
        raise ValueError("a server from start_serving comes with its work_dir")
    own_work = work_dir is None
    work_dir = work_dir or tempfile.mkdtemp(prefix="serving-check-")
    started = time.monotonic()
    try:
        if not os.path.isfile(os.path.join(candidate_dir, "saved_model.pb")):
            raise CheckFailed(f"the candidate has no saved_model.pb ({candidate_dir})")
        if not os.path.isdir(os.path.join(candidate_dir, "variables")):
            raise CheckFailed(f"the candidate has no variables/ folder ({candidate_dir}); the Pusher's exports always "
                              "have one and the serving process loads only complete versions")
        warmups = _read_warmup_requests(candidate_dir)
        base = os.path.join(work_dir, "base")
        os.makedirs(os.path.join(base, model_name), exist_ok=True)
        for attempt in range(3):
            if server is None:
                server = ServingProcess(base, model_name, os.path.join(work_dir, f"serving-{attempt}.log"))
            try:
                measured["startup_s"] = round(_listening_after(server, limits.startup_timeout_seconds), 3)
                break
            except CheckFailed as e:
                # The free ports were taken between choosing and binding them: new ports, once or twice.
                if "cannot listen" not in str(e) or attempt == 2:
                    raise
                server.stop()
                server = None
        published_at = time.monotonic()
        os.symlink(os.path.abspath(candidate_dir), os.path.join(base, model_name, str(CHECK_VERSION)))
        measured["load_s"] = round(_wait_until_available(server, published_at, limits.max_load_seconds), 3)

        latencies: Dict[str, List[float]] = {"rest": [], "grpc": []}
        diffs: List[float] = []
        with RestClient(server.rest_url, model_name, timeout_s=30, retry=NO_RETRY) as rest, \
                GrpcClient(server.grpc_target, model_name, timeout_s=30, retry=NO_RETRY) as grpc_client:
            try:
                signatures = grpc_client.signatures(CHECK_VERSION)
                _check_signatures(signatures)
                # The warmup file, record by record, as TF Serving replays it at load.
                import grpc
                from tensorflow import make_ndarray
                from tensorflow_serving.apis import prediction_service_pb2_grpc
                stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc_client.channel)
                for i, request in enumerate(warmups):
                    if request.model_spec.name != model_name:
                        raise CheckFailed(f"warmup request {i} names model {request.model_spec.name!r}, "
                                          f"not {model_name!r}")
                    batch = max((t.tensor_shape.dim[0].size for t in request.inputs.values() if t.tensor_shape.dim),
                                default=1)
                    t0 = time.perf_counter()
                    try:
                        response = stub.Predict(request, timeout=30)
                    except grpc.RpcError as e:
                        raise CheckFailed(f"warmup request {i} failed: {e.code().name}: "
                                          f"{_one_line(e.details() or '')}") from None
                    latencies["grpc"].append(time.perf_counter() - t0)
                    if "probability" not in response.outputs:
                        raise CheckFailed(f"warmup request {i}: no 'probability' in the answer "
                                          f"({sorted(response.outputs)})")
                    _scores(make_ndarray(response.outputs["probability"]).tolist(), batch, f"warmup request {i}")
                measured["warmup_requests"] = len(warmups)

                # The sample, one row per request, over both protocols.
                for i, example in enumerate(examples):
                    t0 = time.perf_counter()
                    answer = rest.predict({"examples": [example]}, SERVING_SIGNATURE, CHECK_VERSION)
                    latencies["rest"].append(time.perf_counter() - t0)
                    got = _scores(answer.get("probability"), 1, f"REST {SERVING_SIGNATURE} row {i}")
                    diffs.append(_max_diff(got, reference[i:i + 1]))
                    t0 = time.perf_counter()
                    answer = grpc_client.predict({"examples": [example]}, SERVING_SIGNATURE, CHECK_VERSION)
                    latencies["grpc"].append(time.perf_counter() - t0)
                    got = _scores(answer.get("probability"), 1, f"gRPC {SERVING_SIGNATURE} row {i}")
                    diffs.append(_max_diff(got, reference[i:i + 1]))
                # And as one batch, through serving_default and (when the model has it) predict_raw.
                batch = len(examples)
                calls = [("REST", rest, SERVING_SIGNATURE, {"examples": examples}),
                         ("gRPC", grpc_client, SERVING_SIGNATURE, {"examples": examples})]
                if RAW_SIGNATURE in signatures:
                    raw = _raw_columns(signatures[RAW_SIGNATURE], examples)
                    calls += [("REST", rest, RAW_SIGNATURE, raw), ("gRPC", grpc_client, RAW_SIGNATURE, raw)]
                for protocol, client, signature, columns in calls:
                    answer = client.predict(columns, signature, CHECK_VERSION)
                    got = _scores(answer.get("probability"), batch, f"{protocol} {signature} batch of {batch}")
                    diffs.append(_max_diff(got, reference))
                measured["signatures_checked"] = sorted({c[2] for c in calls})
            except (ServingError, InvalidRequestError) as e:
                raise CheckFailed(f"the serving process answered an error: {_one_line(str(e))}") from None
        for protocol, values in latencies.items():
            measured[f"p50_ms_{protocol}"] = round(1000 * _percentile(values, 50), 3) if values else None
            measured[f"p99_ms_{protocol}"] = round(1000 * _percentile(values, 99), 3) if values else None
            measured[f"requests_{protocol}"] = len(values)
        measured["max_score_diff"] = max(diffs) if diffs else None
        reason = server.exited()
        if reason:
            raise CheckFailed(reason)
        measured["rss_mb"] = _round(_proc_status_mb(server.proc.pid, "VmRSS"))
        measured["peak_rss_mb"] = _round(_proc_status_mb(server.proc.pid, "VmHWM"))
        report["checks"] = _limit_checks(measured, limits)
        failed = [c for c in report["checks"].values() if not c["passed"]]
        report["passed"] = not failed
        report["reason"] = "; ".join(c["reason"] for c in failed) if failed else "servable within every limit"
    except CheckFailed as e:
        report["passed"] = False
        report["reason"] = str(e)
        report.setdefault("checks", {})
        if server is not None:
            report["serving_log_tail"] = _one_line(server.log_tail())
    finally:
        if server is not None:
            server.stop()
        if own_work:
            shutil.rmtree(work_dir, ignore_errors=True)
    report["duration_s"] = round(time.monotonic() - started, 2)
    return report


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 1)


def _limit_checks(measured: Dict[str, Any], limits: Limits) -> Dict[str, Dict[str, Any]]:
    p99 = [v for v in (measured.get("p99_ms_rest"), measured.get("p99_ms_grpc")) if v is not None]
    rows = [("load_s", measured.get("load_s"), limits.max_load_seconds, "s", "load time"),
            ("peak_rss_mb", measured.get("peak_rss_mb"), limits.max_peak_rss_mb, " MB", "peak RSS"),
            ("p99_latency_ms", max(p99) if p99 else None, limits.max_p99_latency_ms, " ms", "p99 latency"),
            ("max_score_diff", measured.get("max_score_diff"), limits.max_score_diff, "", "max |score - trained score|")]
    checks = {}
    for name, value, limit, unit, label in rows:
        if value is None:
            # Not measurable here (e.g. no /proc): fail-closed for everything but memory off Linux.
            passed = name == "peak_rss_mb" and not os.path.isdir("/proc")
            reason = f"{label} not measured"
        else:
            passed = value <= limit
            reason = f"{label} {value:.4g}{unit} {'<=' if passed else '>'} limit {limit:g}{unit}"
        checks[name] = {"value": value, "limit": limit, "passed": bool(passed), "reason": reason}
    return checks


def summary_line(report: Dict[str, Any]) -> str:
    """One line for logs and the run summary."""
    m = report.get("measured", {})
    if report.get("skipped"):
        return f"skipped ({report.get('reason')})"
    parts = []
    if m.get("load_s") is not None:
        parts.append(f"loaded in {m['load_s']:.2f}s")
    if m.get("peak_rss_mb") is not None:
        parts.append(f"peak RSS {m['peak_rss_mb']:.0f} MB")
    if m.get("p99_ms_rest") is not None:
        parts.append(f"p99 REST {m['p99_ms_rest']:.1f} ms, gRPC {m['p99_ms_grpc']:.1f} ms")
    if m.get("max_score_diff") is not None:
        parts.append(f"max |Δscore| {m['max_score_diff']:.2g}")
    if m.get("warmup_requests") is not None:
        parts.append(f"{m['warmup_requests']} warmup requests")
    verdict = "PASS" if report.get("passed") else f"FAIL: {report.get('reason')}"
    return (", ".join(parts) + " -> " if parts else "") + verdict

