"""A local stand-in for TF Serving: the model's versions under a serving base directory, served with
the real TF runtime over TF Serving's REST and gRPC APIs.

    python -m serving.local_server [--base output/serving] [--model-name ctr]
                                   [--rest-port 8501] [--grpc-port 8500]

It loads ``<base>/<model-name>/<version>/`` with ``tf.saved_model.load``, polls for new versions and
serves the newest ``--num-versions`` (TF Serving's default "latest" policy), and answers:

* REST: ``POST /v1/models/<name>[/versions/<v>]:predict`` (``instances`` rows or ``inputs``
  columns, ``signature_name``; answers ``predictions`` / ``outputs``; bytes as ``{"b64": ...}``),
  ``GET /v1/models/<name>[/versions/<v>]`` (status), ``GET .../metadata``, and Prometheus metrics
  at ``/monitoring/prometheus/metrics``.
* gRPC: ``tensorflow.serving.PredictionService/Predict`` and ``GetModelMetadata``, and
  ``ModelService/GetModelStatus``, with TF Serving's request/response protos.

Bad requests (malformed JSON or tf.Example, unknown or mistyped features, ragged or oversized
batches, a version that is not an int64) get HTTP 4xx with ``{"error": "..."}`` or gRPC
INVALID_ARGUMENT and one log line; nothing a client sends stops the server. Before a first version is
loaded, predict answers HTTP 503 / gRPC UNAVAILABLE, which the clients retry.

What one client can take is bounded: a body over ``--max-body-bytes`` is refused (413) from its
Content-Length without being read; request bodies held at once are bounded in bytes and predictions
run at once in number (``--max-in-flight``); a request that finds no room within
``--queue-timeout-s`` gets HTTP 503 / gRPC RESOURCE_EXHAUSTED; a connection that sends nothing for
``--socket-timeout-s`` is closed. A version that failed to load is retried every
``--retry-failed-seconds`` (its files may still have been arriving).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# Quiet unless --verbose (serving/quiet.py): TF's C++ start-up lines and known-harmless warnings,
# set before TensorFlow loads.
from serving.quiet import quiet_logs, quiet_process  # noqa: E402

quiet_process(verbose="--verbose" in sys.argv[1:])

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from tensorflow.core.protobuf import saved_model_pb2  # noqa: E402
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,  # noqa: E402
                                     predict_pb2, prediction_service_pb2_grpc)

from serving.signatures import (DEFAULT_SIGNATURE, DTYPE_NAMES, InvalidRequestError, SignatureSpec,  # noqa: E402
                                pick_signature, rows_to_columns, signatures_from_proto, validate_columns)

log = logging.getLogger("serving.local_server")

DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_IN_FLIGHT = 64
# Bodies held at once, all requests together: four at the size limit. A JSON body takes ~12x its size
# in Python objects while it is parsed, so this bounds that memory to a few hundred MB.
DEFAULT_MAX_IN_FLIGHT_BYTES = 4 * DEFAULT_MAX_BODY_BYTES
DEFAULT_QUEUE_TIMEOUT_S = 2.0
DEFAULT_SOCKET_TIMEOUT_S = 15.0
DEFAULT_RETRY_FAILED_SECONDS = 30.0
INT64_MAX = (1 << 63) - 1
UNKNOWN_MODEL_LABEL = "__unknown__"
_VERSION_DIR = re.compile(r"^[0-9]+$")
_MAX_MESSAGE_CHARS = 500  # an error message may quote the client's input: keep answers and logs short


# -- what can go wrong, and what each API answers --------------------------------------------------
class ModelNotFoundError(LookupError):
    """Unknown model name or version (HTTP 404 / NOT_FOUND)."""


class ModelNotReadyError(RuntimeError):
    """The model is known but no version is loaded yet (HTTP 503 / UNAVAILABLE: retry later)."""


class EndpointNotFoundError(LookupError):
    """A REST path that is not part of the API."""


class MethodNotAllowedError(ValueError):
    """A REST method the path does not take (e.g. DELETE on a model)."""


class LengthRequiredError(InvalidRequestError):
    """A predict request without a usable Content-Length (the body could not be delimited)."""


class RequestTooLargeError(InvalidRequestError):
    """A body over --max-body-bytes, refused from its Content-Length before it is read."""


class RequestTimeoutError(RuntimeError):
    """The client stopped sending its body for longer than the socket timeout."""


class ServerBusyError(RuntimeError):
    """No room for the request within --queue-timeout-s: retry later (HTTP 503 / RESOURCE_EXHAUSTED)."""


@dataclasses.dataclass(frozen=True)
class ErrorStatus:
    http: int
    grpc: grpc.StatusCode

    @property
    def name(self) -> str:
        """The canonical status name, as the metrics and the clients report it."""
        return self.grpc.name


# The one mapping from an error to the answer of both APIs (first match wins, so subclasses come
# first). HTTP codes as TF Serving's REST server maps its statuses, plus 411/413 for the body limits.
ERROR_STATUS: Tuple[Tuple[type, ErrorStatus], ...] = (
    (RequestTooLargeError, ErrorStatus(413, grpc.StatusCode.INVALID_ARGUMENT)),
    (LengthRequiredError, ErrorStatus(411, grpc.StatusCode.INVALID_ARGUMENT)),
    (InvalidRequestError, ErrorStatus(400, grpc.StatusCode.INVALID_ARGUMENT)),
    (MethodNotAllowedError, ErrorStatus(405, grpc.StatusCode.UNIMPLEMENTED)),
    (EndpointNotFoundError, ErrorStatus(404, grpc.StatusCode.NOT_FOUND)),
    (ModelNotFoundError, ErrorStatus(404, grpc.StatusCode.NOT_FOUND)),
    (ModelNotReadyError, ErrorStatus(503, grpc.StatusCode.UNAVAILABLE)),
    (ServerBusyError, ErrorStatus(503, grpc.StatusCode.RESOURCE_EXHAUSTED)),
    (RequestTimeoutError, ErrorStatus(408, grpc.StatusCode.DEADLINE_EXCEEDED)),
)
INTERNAL = ErrorStatus(500, grpc.StatusCode.INTERNAL)


def error_status(error: BaseException) -> ErrorStatus:
    """The answer to a request that raised ``error``; anything unexpected is INTERNAL (a server bug)."""
    for kind, status in ERROR_STATUS:
        if isinstance(error, kind):
            return status
    return INTERNAL


def one_line(error: BaseException) -> str:
    text = str(error)
    line = text.splitlines()[0] if text.strip() else type(error).__name__
    return line if len(line) <= _MAX_MESSAGE_CHARS else line[:_MAX_MESSAGE_CHARS] + "..."


def answer_error(api: str, what: str, error: BaseException) -> Tuple[ErrorStatus, str]:
    """The status and one-line message for a request that raised ``error``, logged: one line for the
    client's mistakes, a traceback only for a server bug."""
    status = error_status(error)
    if status is INTERNAL:
        log.error("%s %s: internal error", api, what, exc_info=error)
        return status, f"internal error: {type(error).__name__}: {one_line(error)}"
    log.info("%s %s: %s %s", api, what, status.name, one_line(error))
    return status, one_line(error)


def parse_version(text: str) -> int:
    """A model version from a request path: TF Serving's versions are int64."""
    if not _VERSION_DIR.match(text) or len(text) > 19 or int(text) > INT64_MAX:
        raise InvalidRequestError(f"version {text[:30]}{'...' if len(text) > 30 else ''} is not a valid "
                                  "version number (a non-negative int64)")
    return int(text)


# -- the model's versions ----------------------------------------------------------------------
_TF_ERROR_NOISE = re.compile(r"^(Graph execution error:|Detected at node|<stack traces unavailable>|\s|\[\[)")
_TF_FUNCTION_PREFIX = re.compile(r"^(\{\{function_node [^}]*\}\}\s*)+")
_TF_QUOTED_VALUE = re.compile(r"(input), value: '.*'(?=\s*\[\[|\s*$)", re.DOTALL)


def tf_error_line(message: str) -> str:
    """The line of a TF runtime error that says what was wrong with the input, not where in the graph.

    A quoted input value is dropped: it is the client's own bytes (a serialized tf.Example holds
    newlines and binary, and may be megabytes).
    """
    message = _TF_QUOTED_VALUE.sub(r"\1", message)
    lines = [line for line in message.splitlines() if line.strip()]
    for line in lines:
        if not _TF_ERROR_NOISE.match(line):
            return _TF_FUNCTION_PREFIX.sub("", line).split("\t [[")[0].split(" [[")[0].strip()
    return lines[0] if lines else "no message"


_EMPTY_VALUE = {"DT_STRING": b"", "DT_BOOL": False, "DT_FLOAT": 0.0, "DT_DOUBLE": 0.0, "DT_HALF": 0.0}


class ServedVersion:
    """One loaded version: the TF object, its callable signatures and their SignatureDefs."""

    def __init__(self, version: int, path: str):
        self.version = version
        self.path = path
        # The SignatureDefs as TF Serving reports them come from saved_model.pb itself.
        saved_model = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            saved_model.ParseFromString(f.read())
        self.signature_defs = saved_model.meta_graphs[0].signature_def
        self.signatures: Dict[str, SignatureSpec] = signatures_from_proto(self.signature_defs)
        self.loaded = tf.saved_model.load(path)
        self.functions = {name: self.loaded.signatures[name] for name in self.signatures}
        self._warm_up()

    def _warm_up(self) -> None:
        """Call each signature once on a one-row batch of empty values before the version serves.

        TF instantiates a function on its first call, and concurrent first calls each do it: a burst
        of 200 predicts on a fresh version took ~30 s on 2 cores instead of under 1 s (TF Serving's
        answer is its warmup requests). A signature that rejects empty values is left cold.
        """
        for signature in self.signatures.values():
            if not all(spec.shape is None or len(spec.shape) == 1 for spec in signature.inputs.values()):
                continue
            columns = {name: [_EMPTY_VALUE.get(spec.dtype, 0)] for name, spec in signature.inputs.items()}
            try:
                self.run(signature, columns)
            except Exception as e:  # noqa: BLE001 -- only a warm-up: the first request pays instead
                log.debug("no warm-up call of signature %r: %s", signature.name, one_line(e))

    def run(self, signature: SignatureSpec, columns: Mapping[str, list]) -> Dict[str, np.ndarray]:
        tensors = {name: tf.constant(values, dtype=tf.dtypes.as_dtype(signature.inputs[name].dtype_enum))
                   for name, values in columns.items()}
        try:
            outputs = self.functions[signature.name](**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            # e.g. a serialized tf.Example that does not parse: the request's fault, not the server's.
            raise InvalidRequestError(f"the model rejected the input: {tf_error_line(e.message)}") from None
        except UnicodeDecodeError as e:
            # TF's error message quoted the client's bytes (a tf.Example that is not one) and TF could
            # not decode its own message: still the request's fault.
            message = e.object.decode("utf-8", "replace") if isinstance(e.object, bytes) else str(e.object)
            raise InvalidRequestError(f"the model rejected the input: {tf_error_line(message)}") from None
        return {name: value.numpy() for name, value in outputs.items()}


@dataclasses.dataclass
class _LoadFailure:
    mtime: float  # of saved_model.pb when the load failed
    failed_at: float  # time.monotonic()
    message: str


class ModelRepository:
    """Versions of one model under ``<base>/<name>/``: loads new ones, keeps the newest ``num_versions``."""

    def __init__(self, base_dir: str, model_name: str, num_versions: int = 1, poll_seconds: float = 2.0,
                 retry_failed_seconds: float = DEFAULT_RETRY_FAILED_SECONDS):
        self.base_dir = base_dir
        self.model_name = model_name
        self.model_dir = os.path.join(base_dir, model_name)
        self.num_versions = num_versions
        self.poll_seconds = poll_seconds
        self.retry_failed_seconds = retry_failed_seconds
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._versions: Dict[int, ServedVersion] = {}
        self._failed: Dict[int, _LoadFailure] = {}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- versions on disk ---------------------------------------------------------------------
    def _candidates(self) -> List[int]:
        """Version folders that hold a complete SavedModel (the Pusher may still be copying others)."""
        try:
            names = os.listdir(self.model_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _VERSION_DIR.match(n) and len(n) <= 19 and int(n) <= INT64_MAX
                      and os.path.isfile(os.path.join(self.model_dir, n, "saved_model.pb"))
                      and os.path.isdir(os.path.join(self.model_dir, n, "variables")))

    def _should_try(self, version: int, mtime: float) -> bool:
        """Not after a failure, until saved_model.pb changes or --retry-failed-seconds pass: a copy that
        was still under way (variables after the pb) completes without touching the pb."""
        failure = self._failed.get(version)
        return (failure is None or failure.mtime != mtime
                or time.monotonic() - failure.failed_at >= self.retry_failed_seconds)

    def poll_once(self) -> List[int]:
        """Load the newest versions that are not loaded yet, unload older ones; returns the loaded versions.

        Like TF Serving's availability-preserving policy, an old version is unloaded only once a newer
        one is serving: a version that fails to load leaves the previous one in place.
        """
        with self._poll_lock:  # the poll thread and explicit callers never load the same version twice
            on_disk = self._candidates()
            for version in on_disk[-self.num_versions:]:
                with self._lock:
                    if version in self._versions:
                        continue
                path = os.path.join(self.model_dir, str(version))
                try:
                    mtime = os.path.getmtime(os.path.join(path, "saved_model.pb"))
                except FileNotFoundError:
                    continue  # removed since the scan
                with self._lock:
                    if not self._should_try(version, mtime):
                        continue
                    retry = version in self._failed
                started = time.monotonic()
                try:
                    served = ServedVersion(version, path)
                except Exception as e:  # a broken version must not stop serving the others
                    message = one_line(e)
                    with self._lock:
                        self._failed[version] = _LoadFailure(mtime, time.monotonic(), message)
                    log.error("cannot load %s version %d from %s: %s (retrying every %gs)", self.model_name,
                              version, path, message, self.retry_failed_seconds)
                    continue
                with self._lock:
                    self._failed.pop(version, None)
                    self._versions[version] = served
                log.info("loaded %s version %d in %.1fs%s", self.model_name, version, time.monotonic() - started,
                         " (after a failed attempt)" if retry else "")
            with self._lock:
                # Versions removed from disk go; of the rest, the newest num_versions stay.
                keep = sorted(v for v in self._versions if v in on_disk)[-self.num_versions:]
                for version in sorted(set(self._versions) - set(keep)):
                    del self._versions[version]
                    log.info("unloaded %s version %d", self.model_name, version)
                for version in [v for v in self._failed if v not in on_disk]:
                    del self._failed[version]
                return sorted(self._versions)

    def start(self) -> None:
        def loop():
            while not self._stop.wait(self.poll_seconds):
                try:
                    self.poll_once()
                except Exception:  # keep polling whatever one scan hit (e.g. a folder removed mid-scan)
                    log.exception("version poll failed")
        self._thread = threading.Thread(target=loop, name="version-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)

    # -- lookups ---------------------------------------------------------------------------------
    def get(self, model_name: str, version: Optional[int] = None) -> ServedVersion:
        if model_name != self.model_name:
            raise ModelNotFoundError(f"model {model_name!r} is not served here (serving {self.model_name!r})")
        with self._lock:
            if version is None:
                if not self._versions:
                    raise ModelNotReadyError(f"no version of model {model_name!r} is loaded yet "
                                             f"(waiting for versions under {self.model_dir})")
                return self._versions[max(self._versions)]
            if version not in self._versions:
                raise ModelNotFoundError(f"version {version} of model {model_name!r} is not loaded "
                                         f"(loaded: {sorted(self._versions) or 'none'})")
            return self._versions[version]

    def status(self, model_name: str, version: Optional[int] = None) -> List[Tuple[int, str, str, str]]:
        """[(version, state, error_code, error_message)] as TF Serving's GetModelStatus reports them."""
        if model_name != self.model_name:
            raise ModelNotFoundError(f"model {model_name!r} is not served here (serving {self.model_name!r})")
        with self._lock:
            rows = [(v, "AVAILABLE", "OK", "") for v in sorted(self._versions)]
            rows += [(v, "END", "UNKNOWN", f.message) for v, f in sorted(self._failed.items())]
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise ModelNotFoundError(f"version {version} of model {model_name!r} is not loaded")
        return rows


# -- admission: what the requests in progress may hold ------------------------------------------
class Budget:
    """A capacity that concurrent requests take from and give back (bytes of body, running predictions).

    A request that finds no room waits at most ``wait_s`` and then gets ServerBusyError: an overload
    turns into quick 503s the clients back off from, instead of unbounded memory or threads.
    """

    def __init__(self, what: str, capacity: int, wait_s: float):
        if capacity < 1:
            raise ValueError(f"{what}: capacity must be >= 1, got {capacity}")
        self.what = what
        self.capacity = capacity
        self.wait_s = wait_s
        self._used = 0
        self._changed = threading.Condition()

    @property
    def used(self) -> int:
        with self._changed:
            return self._used

    @contextlib.contextmanager
    def hold(self, amount: int) -> Iterator[None]:
        amount = min(amount, self.capacity)  # one request alone always fits (its own limit is checked apart)
        deadline = time.monotonic() + self.wait_s
        with self._changed:
            while self._used + amount > self.capacity:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerBusyError(f"server busy: {self.what} in use {self._used} of {self.capacity}; "
                                          "retry later")
                self._changed.wait(left)
            self._used += amount
        try:
            yield
        finally:
            with self._changed:
                self._used -= amount
                self._changed.notify_all()


class RequestLimits:
    """The two budgets shared by REST and gRPC: request bytes held (memory) and predictions running.

    A body's bytes are taken before it is read and the prediction slot only once it is in, so clients
    that trickle their bodies hold memory they declared, never the slots that others' predictions need.
    """

    def __init__(self, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
                 max_in_flight_bytes: int = DEFAULT_MAX_IN_FLIGHT_BYTES,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S):
        self.body_bytes = Budget("request bytes", max_in_flight_bytes, queue_timeout_s)
        self.predictions = Budget("predictions", max_in_flight, queue_timeout_s)


class Metrics:
    """Request counts and latency sums in Prometheus text format (TF Serving's metric names).

    Model names come from clients: any name not served here is counted as ``__unknown__``, so that
    bogus names neither grow the page without bound nor reach it unescaped.
    """

    def __init__(self, model_names: Iterable[str] = ()):
        self._model_names = frozenset(model_names)
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str, str], int] = {}
        self._latency_us: Dict[str, float] = {}

    def record(self, api: str, model: str, status: str, seconds: float) -> None:
        model = model if model in self._model_names else UNKNOWN_MODEL_LABEL
        with self._lock:
            key = (api, model, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._latency_us[model] = self._latency_us.get(model, 0.0) + seconds * 1e6

    @staticmethod
    def label(value: str) -> str:
        """A label value as the Prometheus text format escapes it: backslash, double quote, line feed."""
        return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    def text(self) -> str:
        q = self.label
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (api, model, status), n in sorted(self._counts.items()):
                lines.append(f':tensorflow:serving:request_count{{api="{q(api)}",model_name="{q(model)}",'
                             f'status="{q(status)}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency_sum counter")
            for model, us in sorted(self._latency_us.items()):
                lines.append(f':tensorflow:serving:request_latency_sum{{model_name="{q(model)}"}} {us:.0f}')
        return "\n".join(lines) + "\n"


# -- REST ---------------------------------------------------------------------------------------
def _json_value(array: np.ndarray):
    if array.dtype.kind in ("S", "O"):
        flat = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.reshape(-1).tolist()]
        return np.array(flat, dtype=object).reshape(array.shape).tolist()
    return array.tolist()


def predict_json(repository: ModelRepository, model_name: str, version: Optional[int], body: bytes,
                 max_batch_size: int) -> Tuple[ServedVersion, dict]:
    """TF Serving's REST predict on a JSON body; returns (version served, response object)."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise InvalidRequestError(f"malformed JSON body: {e}") from None
    except RecursionError:
        raise InvalidRequestError("malformed JSON body: nested too deeply") from None
    if not isinstance(request, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    unknown = set(request) - {"signature_name", "instances", "inputs"}
    if unknown:
        raise InvalidRequestError(f"unknown request keys {sorted(unknown)} (expected signature_name and "
                                  "instances or inputs)")
    if ("instances" in request) == ("inputs" in request):
        raise InvalidRequestError("the request must have exactly one of 'instances' (rows) or 'inputs' (columns)")
    signature_name = request.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        raise InvalidRequestError("signature_name must be a string")
    served = repository.get(model_name, version)
    signature = pick_signature(served.signatures, signature_name)
    single_input = next(iter(signature.inputs)) if len(signature.inputs) == 1 else None
    row_format = "instances" in request
    if row_format:
        instances = request["instances"]
        if not isinstance(instances, list):
            raise InvalidRequestError("'instances' must be a list of rows")
        if not instances:
            raise InvalidRequestError("empty batch: no rows")
        if single_input and not (isinstance(instances[0], dict) and set(instances[0]) != {"b64"}):
            columns = {single_input: instances}  # TF Serving: bare values for a one-input signature
        else:
            columns = rows_to_columns(instances)
    else:
        inputs = request["inputs"]
        columns = {single_input: inputs} if single_input and not isinstance(inputs, dict) else inputs
    converted, _ = validate_columns(signature, columns, max_batch_size, json_strings=True)
    outputs = {name: _json_value(value) for name, value in served.run(signature, converted).items()}
    if row_format:
        if len(outputs) == 1:
            return served, {"predictions": next(iter(outputs.values()))}
        names = sorted(outputs)
        rows = len(outputs[names[0]])
        return served, {"predictions": [{n: outputs[n][i] for n in names} for i in range(rows)]}
    return served, {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}


def status_json(rows) -> dict:
    return {"model_version_status": [
        {"version": str(v), "state": state, "status": {"error_code": code, "error_message": message}}
        for v, state, code, message in rows]}


def metadata_json(served: ServedVersion, model_name: str) -> dict:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, sig in served.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(sig)
    return {"model_spec": {"name": model_name, "signature_name": "", "version": str(served.version)},
            "metadata": {"signature_def": json_format.MessageToDict(signature_map, preserving_proto_field_name=True)}}


_MODEL_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>[0-9]+))?"
                         r"(?P<rest>/metadata|:predict)?$")
_METRICS_PATH = "/monitoring/prometheus/metrics"
_CONTENT_LENGTH = re.compile(r"^[0-9]+$")


class ClientGoneError(ConnectionError):
    """The client closed its connection before its body was in: nobody to answer."""


class RestServer(ThreadingHTTPServer):
    """``ThreadingHTTPServer`` hardened for many clients at once.

    socketserver listens with a backlog of 5: a burst of parallel clients overflows it and the
    kernel resets their connections. Accepted sockets get TCP_NODELAY: an answer's headers and body
    must not wait for the client's delayed ACK (~40 ms per keep-alive request).
    """

    request_queue_size = 1024
    daemon_threads = True

    def get_request(self):
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, address

    def handle_error(self, request, client_address):
        # socketserver prints a traceback to stderr; a client that hung up is not worth one.
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.debug("connection from %s ended: %s", client_address, one_line(error))
        else:
            log.error("error on a connection from %s", client_address, exc_info=error)


class RestHandler(BaseHTTPRequestHandler):
    server_version = "sparsectr-local-serving"
    protocol_version = "HTTP/1.1"  # keep-alive: a benchmark client reuses its connection
    # Buffered writes: an answer's headers and body leave in one segment (flushed in _send).
    wbufsize = 64 << 10

    # Set by make_rest_server. ``timeout`` (StreamRequestHandler) is the socket timeout: a client
    # silent that long, between requests or inside one, has its connection closed.
    repository: ModelRepository
    metrics: Metrics
    limits: RequestLimits
    max_batch_size: int
    max_body_bytes: int

    def log_message(self, fmt, *args):  # the access log goes to debug, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload, content_type: str = "application/json",
              headers: Mapping[str, str] = {}) -> None:
        body = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _route(self, method: str) -> Tuple[str, Optional[int], str]:
        path = self.path.split("?", 1)[0]
        match = _MODEL_PATH.match(path)
        if not match:
            raise EndpointNotFoundError(f"no such endpoint: {method} {path[:200]}")
        version = parse_version(match["version"]) if match["version"] else None
        return match["name"], version, match["rest"] or ""

    def _content_length(self) -> int:
        length = self.headers.get("Content-Length")
        if length is None or self.headers.get("Transfer-Encoding") or not _CONTENT_LENGTH.match(length):
            raise LengthRequiredError("a predict request needs a Content-Length header")
        # Compared as text first: int() of thousands of digits is slow and refused by Python.
        if len(length) > len(str(self.max_body_bytes)) or int(length) > self.max_body_bytes:
            raise RequestTooLargeError(f"request body of {length[:30]} bytes is over the limit of "
                                       f"{self.max_body_bytes}")
        return int(length)

    def _read_body(self, length: int) -> bytes:
        try:
            body = self.rfile.read(length)
        except TimeoutError:
            raise RequestTimeoutError(f"request body not received: nothing came for {self.timeout}s") from None
        if len(body) < length:
            raise ClientGoneError(f"connection closed after {len(body)} of {length} body bytes")
        return body

    def _predict(self, model_name: str, version: Optional[int]) -> None:
        length = self._content_length()
        with self.limits.body_bytes.hold(length):
            body = self._read_body(length)
            self._body_read = True
            with self.limits.predictions.hold(1):
                _, response = predict_json(self.repository, model_name, version, body, self.max_batch_size)
        self._send(200, response)

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        path = self.path.split("?", 1)[0]
        # Requests that name a model are counted (TF Serving's metrics are per model).
        model_name, outcome = None, "OK"
        self._body_read = False
        try:
            if method == "GET" and path == _METRICS_PATH:
                self._send(200, self.metrics.text(), "text/plain; version=0.0.4")
                return
            model_name, version, rest = self._route(method)
            if method == "GET" and rest == "":
                self._send(200, status_json(self.repository.status(model_name, version)))
            elif method == "GET" and rest == "/metadata":
                self._send(200, metadata_json(self.repository.get(model_name, version), model_name))
            elif method == "POST" and rest == ":predict":
                self._predict(model_name, version)
            else:
                raise MethodNotAllowedError(f"{method} is not supported on {path[:200]}")
        except (ClientGoneError, BrokenPipeError, ConnectionResetError) as e:
            outcome = "CANCELLED"
            self.close_connection = True
            log.debug("rest %s %s: client gone: %s", method, path[:200], one_line(e))
        except Exception as e:  # noqa: BLE001 -- mapped to an answer; a bug costs one request, not the server
            status, message = answer_error("rest", f"{method} {path[:200]}", e)
            outcome = status.name
            self._send_error(status, message)
        finally:
            if self._body_unread():
                self.close_connection = True
            if model_name is not None:
                self.metrics.record("rest", model_name, outcome, time.monotonic() - started)

    def _body_unread(self) -> bool:
        """Whether the request declared a body that was not read: it would be taken for the next request,
        so the connection must close after the answer."""
        declared = self.headers.get("Transfer-Encoding") or self.headers.get("Content-Length", "0") != "0"
        return bool(declared) and not self._body_read

    def _send_error(self, status: ErrorStatus, message: str) -> None:
        if self._body_unread():
            self.close_connection = True  # before answering, so that the answer says Connection: close
        headers = {"Retry-After": "1"} if status.http == 503 else {}
        try:
            self._send(status.http, {"error": message}, headers=headers)
        except OSError:
            self.close_connection = True

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")


def make_rest_server(repository: ModelRepository, host: str, port: int, metrics: Metrics, limits: RequestLimits,
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
                     socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S) -> RestServer:
    handler = type("BoundRestHandler", (RestHandler,), dict(
        repository=repository, metrics=metrics, limits=limits, max_batch_size=max_batch_size,
        max_body_bytes=max_body_bytes, timeout=socket_timeout_s))
    return RestServer((host, port), handler)


# -- gRPC ---------------------------------------------------------------------------------------
def _tensor_columns(signature: SignatureSpec, inputs, max_batch_size: int) -> Dict[str, list]:
    """PredictRequest.inputs (TensorProtos) -> validated columns; dtype/shape/batch checks first."""
    unknown = sorted(set(inputs) - set(signature.inputs))
    if unknown:
        raise InvalidRequestError(f"unknown feature{'s' if len(unknown) > 1 else ''} "
                                  f"{', '.join(map(repr, unknown[:5]))} for signature {signature.name!r} "
                                  f"(expects: {', '.join(sorted(signature.inputs))})")
    columns = {}
    for name, proto in inputs.items():
        spec = signature.inputs[name]
        if proto.dtype != spec.dtype_enum:
            got = DTYPE_NAMES.get(proto.dtype, str(proto.dtype))
            raise InvalidRequestError(f"feature {name!r}: expected {spec.dtype}, got {got}")
        shape = [d.size for d in proto.tensor_shape.dim]
        if not shape:
            raise InvalidRequestError(f"feature {name!r}: expected a tensor with a batch dimension, got a scalar")
        if shape[0] > max_batch_size:
            raise InvalidRequestError(f"batch of {shape[0]} rows is larger than the maximum of {max_batch_size}")
        if not proto.tensor_content:
            count = len(proto.string_val) + len(proto.int64_val) + len(proto.float_val) + len(
                proto.double_val) + len(proto.int_val) + len(proto.bool_val) + len(proto.half_val)
            if count != int(np.prod(shape)):
                raise InvalidRequestError(f"feature {name!r}: shape {shape} needs {int(np.prod(shape))} values, "
                                          f"the tensor has {count}")
        try:
            array = tf.make_ndarray(proto)
        except (ValueError, TypeError) as e:
            raise InvalidRequestError(f"feature {name!r}: not a valid TensorProto: {e}") from None
        columns[name] = array.tolist()
    converted, _ = validate_columns(signature, columns, max_batch_size)
    return converted


def _abort(context, method: str, error: Exception) -> None:
    """Answer a failed call with the status of ``error`` (ERROR_STATUS, as REST); raises."""
    status, message = answer_error("grpc", method, error)
    context.abort(status.grpc, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: ModelRepository, metrics: Metrics, limits: RequestLimits, max_batch_size: int):
        self.repository = repository
        self.metrics = metrics
        self.limits = limits
        self.max_batch_size = max_batch_size

    def _served(self, model_spec) -> ServedVersion:
        version = model_spec.version.value if model_spec.HasField("version") else None
        return self.repository.get(model_spec.name, version)

    def Predict(self, request, context):
        started = time.monotonic()
        outcome = "OK"
        try:
            # The message is already in memory (at most --max-body-bytes: grpc.max_receive_message_length);
            # its bytes count against the budget REST bodies share, and it takes a prediction slot.
            with self.limits.body_bytes.hold(request.ByteSize()), self.limits.predictions.hold(1):
                return self._predict(request)
        except Exception as e:  # noqa: BLE001 -- mapped to a status by ERROR_STATUS
            outcome = error_status(e).name
            _abort(context, "Predict", e)
        finally:
            self.metrics.record("grpc", request.model_spec.name, outcome, time.monotonic() - started)

    def _predict(self, request):
        served = self._served(request.model_spec)
        signature = pick_signature(served.signatures, request.model_spec.signature_name or None)
        if request.output_filter:
            missing = sorted(set(request.output_filter) - set(signature.outputs))
            if missing:
                raise InvalidRequestError(f"output_filter names unknown outputs {missing}")
        columns = _tensor_columns(signature, request.inputs, self.max_batch_size)
        outputs = served.run(signature, columns)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = served.version
        response.model_spec.signature_name = signature.name
        for name, value in outputs.items():
            if not request.output_filter or name in request.output_filter:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        try:
            unsupported = sorted(set(request.metadata_field) - {"signature_def"})
            if unsupported or not request.metadata_field:
                raise InvalidRequestError("metadata_field must be ['signature_def'], "
                                          f"got {list(request.metadata_field)}")
            served = self._served(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = served.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in served.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(sig)
            response.metadata["signature_def"].Pack(signature_map)
            return response
        except Exception as e:  # noqa: BLE001 -- mapped to a status by ERROR_STATUS
            _abort(context, "GetModelMetadata", e)


class ModelStatusServicer(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, repository: ModelRepository):
        self.repository = repository

    def GetModelStatus(self, request, context):
        try:
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            response = get_model_status_pb2.GetModelStatusResponse()
            for v, state, code, message in self.repository.status(spec.name, version):
                entry = response.model_version_status.add()
                entry.version = v
                entry.state = get_model_status_pb2.ModelVersionStatus.State.Value(state)
                entry.status.error_code = 0 if code == "OK" else 2  # error_codes.proto: OK=0, UNKNOWN=2
                entry.status.error_message = message
            return response
        except Exception as e:  # noqa: BLE001 -- mapped to a status by ERROR_STATUS
            _abort(context, "GetModelStatus", e)


def make_grpc_server(repository: ModelRepository, host: str, port: int, metrics: Metrics, limits: RequestLimits,
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_message_bytes: int = DEFAULT_MAX_BODY_BYTES,
                     workers: int = 8) -> Tuple[grpc.Server, int]:
    # maximum_concurrent_rpcs bounds the calls queued for a worker: past it the gRPC runtime answers
    # RESOURCE_EXHAUSTED at once, as the Budgets do after their wait.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes),
                                  ("grpc.so_reuseport", 0)],
                         maximum_concurrent_rpcs=limits.predictions.capacity)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(repository, metrics, limits, max_batch_size), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelStatusServicer(repository), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot bind gRPC to {host}:{port}")
    return server, bound


# -- the process ---------------------------------------------------------------------------------
class LocalServer:
    """REST + gRPC on one ModelRepository; ``start()`` returns once both ports are bound."""

    def __init__(self, base_dir: str, model_name: str = "ctr", host: str = "127.0.0.1", rest_port: int = 8501,
                 grpc_port: int = 8500, num_versions: int = 1, poll_seconds: float = 2.0,
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, *,
                 max_in_flight: int = DEFAULT_MAX_IN_FLIGHT, max_in_flight_bytes: Optional[int] = None,
                 queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S, socket_timeout_s: float = DEFAULT_SOCKET_TIMEOUT_S,
                 retry_failed_seconds: float = DEFAULT_RETRY_FAILED_SECONDS):
        self.repository = ModelRepository(base_dir, model_name, num_versions, poll_seconds, retry_failed_seconds)
        self.metrics = Metrics([model_name])
        # At least one body at the size limit must fit, or such a request could never run.
        self.limits = RequestLimits(max_in_flight, max(max_in_flight_bytes or 4 * max_body_bytes, max_body_bytes),
                                    queue_timeout_s)
        self.host = host
        self._rest = make_rest_server(self.repository, host, rest_port, self.metrics, self.limits, max_batch_size,
                                      max_body_bytes, socket_timeout_s)
        self._grpc, self.grpc_port = make_grpc_server(self.repository, host, grpc_port, self.metrics, self.limits,
                                                      max_batch_size, max_body_bytes)
        self.rest_port = self._rest.server_address[1]
        self._rest_thread: Optional[threading.Thread] = None

    @property
    def rest_url(self) -> str:
        return f"http://{self.host}:{self.rest_port}"

    @property
    def grpc_target(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def start(self) -> "LocalServer":
        self.repository.poll_once()
        self.repository.start()
        self._grpc.start()
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, kwargs={"poll_interval": 0.2},
                                             name="rest", daemon=True)
        self._rest_thread.start()
        return self

    def stop(self) -> None:
        self._rest.shutdown()
        self._rest.server_close()
        self._grpc.stop(grace=1).wait(5)
        self.repository.stop()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _default_base() -> str:
    from pipelines.config import PipelineConfig
    return PipelineConfig().serving_dir


def build_parser() -> argparse.ArgumentParser:
    from pipelines.config import ServingConfig

    parser = argparse.ArgumentParser(prog="python -m serving.local_server", description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="serving base directory (default: output/serving, "
                        "where `make demo` pushes)")
    parser.add_argument("--model-name", default=ServingConfig().model_name)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 to serve other machines)")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500)
    parser.add_argument("--num-versions", type=int, default=1, help="serve the newest N versions")
    parser.add_argument("--poll-seconds", type=float, default=2.0, help="how often to look for new versions")
    parser.add_argument("--retry-failed-seconds", type=float, default=DEFAULT_RETRY_FAILED_SECONDS,
                        help="how often to retry a version that failed to load")
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                        help="largest REST body / gRPC message; a larger one gets 413 unread")
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT,
                        help="predictions running at once, REST and gRPC together")
    parser.add_argument("--max-in-flight-bytes", type=int, default=None,
                        help="request bytes held at once (default: 4 x --max-body-bytes)")
    parser.add_argument("--queue-timeout-s", type=float, default=DEFAULT_QUEUE_TIMEOUT_S,
                        help="how long a request waits for room before a 503 / RESOURCE_EXHAUSTED")
    parser.add_argument("--socket-timeout-s", type=float, default=DEFAULT_SOCKET_TIMEOUT_S,
                        help="close a REST connection silent this long")
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    quiet_logs(args.verbose, min_level=logging.NOTSET)  # our INFO lines stay; known-harmless ones go
    base = args.base or _default_base()
    if min(args.num_versions, args.max_batch_size, args.max_body_bytes, args.max_in_flight,
           args.max_in_flight_bytes or 1) < 1 or min(args.poll_seconds, args.socket_timeout_s) <= 0 \
            or min(args.retry_failed_seconds, args.queue_timeout_s) < 0:
        print("error: --num-versions, --max-batch-size, --max-body-bytes, --max-in-flight[-bytes] must be >= 1, "
              "--poll-seconds and --socket-timeout-s > 0, --retry-failed-seconds and --queue-timeout-s >= 0",
              file=sys.stderr)
        return 2
    try:
        server = LocalServer(base, args.model_name, args.host, args.rest_port, args.grpc_port, args.num_versions,
                             args.poll_seconds, args.max_batch_size, args.max_body_bytes,
                             max_in_flight=args.max_in_flight, max_in_flight_bytes=args.max_in_flight_bytes,
                             queue_timeout_s=args.queue_timeout_s, socket_timeout_s=args.socket_timeout_s,
                             retry_failed_seconds=args.retry_failed_seconds)
    except OSError as e:
        print(f"error: cannot listen on {args.host} ports {args.rest_port}/{args.grpc_port}: {e}", file=sys.stderr)
        return 2
    server.start()
    versions = server.repository.poll_once()
    print(f"serving model {args.model_name!r} from {os.path.join(base, args.model_name)}: "
          f"REST {server.rest_url}/v1/models/{args.model_name}, gRPC {server.grpc_target}; "
          + (f"version {versions[-1]} loaded" if versions else
             "no version yet, waiting for one (run `make demo` to push a model)"), flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        while not stopped.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
