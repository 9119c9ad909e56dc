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

Bad requests (malformed JSON, unknown or mistyped features, ragged or oversized batches) get HTTP 4xx
with ``{"error": "..."}`` or gRPC INVALID_ARGUMENT; nothing a client sends stops the server. Before a
first version is loaded, predict answers HTTP 503 / gRPC UNAVAILABLE, which the clients retry.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Mapping, Optional, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
DEFAULT_MAX_BODY_BYTES = 16 << 20
_VERSION_DIR = re.compile(r"^[0-9]+$")


class ModelNotFoundError(LookupError):
    """Unknown model name or version (HTTP 404 / NOT_FOUND)."""


class ModelNotReadyError(RuntimeError):
    """The model is known but no version is loaded yet (HTTP 503 / UNAVAILABLE: retry later)."""


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

    def run(self, signature: SignatureSpec, columns: Mapping[str, list]) -> Dict[str, np.ndarray]:
        tensors = {name: tf.constant(values, dtype=tf.dtypes.as_dtype(signature.inputs[name].dtype_enum))
                   for name, values in columns.items()}
        try:
            outputs = self.functions[signature.name](**tensors)
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as e:
            # e.g. a serialized tf.Example that does not parse: the request's fault, not the server's.
            raise InvalidRequestError(f"the model rejected the input: {e.message.splitlines()[0]}") from None
        return {name: value.numpy() for name, value in outputs.items()}


class ModelRepository:
    """Versions of one model under ``<base>/<name>/``: loads new ones, keeps the newest ``num_versions``."""

    def __init__(self, base_dir: str, model_name: str, num_versions: int = 1, poll_seconds: float = 2.0):
        self.base_dir = base_dir
        self.model_name = model_name
        self.model_dir = os.path.join(base_dir, model_name)
        self.num_versions = num_versions
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._versions: Dict[int, ServedVersion] = {}
        self._failed: Dict[int, Tuple[float, str]] = {}  # version -> (saved_model.pb mtime, error)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- versions on disk ---------------------------------------------------------------------
    def _candidates(self) -> List[int]:
        """Version folders that hold a complete SavedModel (the Pusher may still be copying others)."""
        try:
            names = os.listdir(self.model_dir)
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if _VERSION_DIR.match(n)
                      and os.path.isfile(os.path.join(self.model_dir, n, "saved_model.pb"))
                      and os.path.isdir(os.path.join(self.model_dir, n, "variables")))

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
                mtime = os.path.getmtime(os.path.join(path, "saved_model.pb"))
                with self._lock:
                    if self._failed.get(version, (None,))[0] == mtime:
                        continue  # failed before and unchanged: do not retry on every poll
                started = time.monotonic()
                try:
                    served = ServedVersion(version, path)
                except Exception as e:  # a broken version must not stop serving the others
                    message = str(e).splitlines()[0] if str(e) else type(e).__name__
                    with self._lock:
                        self._failed[version] = (mtime, message)
                    log.error("cannot load %s version %d from %s: %s", self.model_name, version, path, message)
                    continue
                with self._lock:
                    self._failed.pop(version, None)
                    self._versions[version] = served
                log.info("loaded %s version %d in %.1fs", self.model_name, version, time.monotonic() - started)
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
            rows += [(v, "END", "UNKNOWN", err) for v, (_, err) in sorted(self._failed.items())]
        if version is not None:
            rows = [r for r in rows if r[0] == version]
            if not rows:
                raise ModelNotFoundError(f"version {version} of model {model_name!r} is not loaded")
        return rows


class Metrics:
    """Request counts and latency sums in Prometheus text format (TF Serving's metric names)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Dict[Tuple[str, str, str], int] = {}
        self._latency_us: Dict[str, float] = {}

    def record(self, api: str, model: str, status: str, seconds: float) -> None:
        with self._lock:
            key = (api, model, status)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._latency_us[model] = self._latency_us.get(model, 0.0) + seconds * 1e6

    def text(self) -> str:
        lines = ["# TYPE :tensorflow:serving:request_count counter"]
        with self._lock:
            for (api, model, status), n in sorted(self._counts.items()):
                lines.append(f':tensorflow:serving:request_count{{api="{api}",model_name="{model}",status="{status}"}} {n}')
            lines.append("# TYPE :tensorflow:serving:request_latency_sum counter")
            for model, us in sorted(self._latency_us.items()):
                lines.append(f':tensorflow:serving:request_latency_sum{{model_name="{model}"}} {us:.0f}')
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


class RestHandler(BaseHTTPRequestHandler):
    server_version = "sparsectr-local-serving"
    protocol_version = "HTTP/1.1"  # keep-alive: a benchmark client reuses its connection

    # Set by make_rest_server.
    repository: ModelRepository
    metrics: Metrics
    max_batch_size: int
    max_body_bytes: int

    def log_message(self, fmt, *args):  # the access log goes to debug, not stderr
        log.debug("%s " + fmt, self.address_string(), *args)

    def _send(self, status: int, payload, content_type: str = "application/json") -> None:
        body = (payload if isinstance(payload, str) else json.dumps(payload)).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, {"error": message})

    def _route(self):
        path = self.path.split("?", 1)[0]
        match = _MODEL_PATH.match(path)
        if not match:
            return None
        version = int(match["version"]) if match["version"] else None
        return match["name"], version, match["rest"] or ""

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        route, model_name, outcome = None, "-", "OK"
        try:
            if method == "GET" and self.path.split("?", 1)[0] == "/monitoring/prometheus/metrics":
                self._send(200, self.metrics.text(), "text/plain; version=0.0.4")
                return
            route = self._route()
            if route is None:
                self._error(404, f"no such endpoint: {method} {self.path[:200]}")
                outcome = "NOT_FOUND"
                return
            model_name, version, rest = route
            if method == "GET" and rest == "":
                self._send(200, status_json(self.repository.status(model_name, version)))
            elif method == "GET" and rest == "/metadata":
                self._send(200, metadata_json(self.repository.get(model_name, version), model_name))
            elif method == "POST" and rest == ":predict":
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self.close_connection = True  # the unread body would be taken for the next request
                    self._error(411, "a predict request needs a Content-Length header")
                    outcome = "INVALID_ARGUMENT"
                    return
                if int(length) > self.max_body_bytes:
                    # Do not read it: answer and drop the connection.
                    self.close_connection = True
                    self._error(413, f"request body of {length} bytes is over the limit of {self.max_body_bytes}")
                    outcome = "INVALID_ARGUMENT"
                    return
                body = self.rfile.read(int(length))
                _, response = predict_json(self.repository, model_name, version, body, self.max_batch_size)
                self._send(200, response)
            else:
                self._error(405 if rest in ("", "/metadata", ":predict") else 404,
                            f"{method} is not supported on {self.path[:200]}")
                outcome = "INVALID_ARGUMENT"
        except InvalidRequestError as e:
            outcome = "INVALID_ARGUMENT"
            self._error(400, str(e))
        except ModelNotFoundError as e:
            outcome = "NOT_FOUND"
            self._error(404, str(e))
        except ModelNotReadyError as e:
            outcome = "UNAVAILABLE"
            self._error(503, str(e))
        except (BrokenPipeError, ConnectionResetError):
            outcome = "CANCELLED"
            self.close_connection = True
        except Exception as e:  # a bug must cost one request, not the server
            outcome = "INTERNAL"
            log.exception("internal error on %s %s", method, self.path[:200])
            try:
                self._error(500, f"internal error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            except OSError:
                self.close_connection = True
        finally:
            if route is not None:
                self.metrics.record("rest", model_name, outcome, time.monotonic() - started)

    def do_GET(self):
        self._handle("GET")

    def do_POST(self):
        self._handle("POST")

    def do_PUT(self):
        self._handle("PUT")

    def do_DELETE(self):
        self._handle("DELETE")


def make_rest_server(repository: ModelRepository, host: str, port: int, metrics: Metrics,
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                     max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> ThreadingHTTPServer:
    handler = type("BoundRestHandler", (RestHandler,), dict(
        repository=repository, metrics=metrics, max_batch_size=max_batch_size, max_body_bytes=max_body_bytes))
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


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


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, repository: ModelRepository, metrics: Metrics, max_batch_size: int):
        self.repository = repository
        self.metrics = metrics
        self.max_batch_size = max_batch_size

    def _served(self, model_spec) -> ServedVersion:
        version = model_spec.version.value if model_spec.HasField("version") else None
        return self.repository.get(model_spec.name, version)

    def Predict(self, request, context):
        started = time.monotonic()
        outcome = "OK"
        try:
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
        except Exception as e:
            code, message = _status_of(e)
            outcome = code.name
            context.abort(code, message)
        finally:
            self.metrics.record("grpc", request.model_spec.name, outcome, time.monotonic() - started)

    def GetModelMetadata(self, request, context):
        try:
            unsupported = sorted(set(request.metadata_field) - {"signature_def"})
            if unsupported or not request.metadata_field:
                raise InvalidRequestError(f"metadata_field must be ['signature_def'], got {list(request.metadata_field)}")
            served = self._served(request.model_spec)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = served.version
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            for name, sig in served.signature_defs.items():
                signature_map.signature_def[name].CopyFrom(sig)
            response.metadata["signature_def"].Pack(signature_map)
            return response
        except Exception as e:
            context.abort(*_status_of(e))


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
        except Exception as e:
            context.abort(*_status_of(e))


def _status_of(error: Exception) -> Tuple[grpc.StatusCode, str]:
    """The gRPC status for an exception raised while answering a call."""
    if isinstance(error, InvalidRequestError):
        code = grpc.StatusCode.INVALID_ARGUMENT
    elif isinstance(error, ModelNotFoundError):
        code = grpc.StatusCode.NOT_FOUND
    elif isinstance(error, ModelNotReadyError):
        code = grpc.StatusCode.UNAVAILABLE
    else:
        log.error("internal error in a gRPC call", exc_info=error)
        code = grpc.StatusCode.INTERNAL
    return code, (str(error).splitlines()[0] if str(error) else type(error).__name__)


def make_grpc_server(repository: ModelRepository, host: str, port: int, metrics: Metrics,
                     max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_message_bytes: int = DEFAULT_MAX_BODY_BYTES,
                     workers: int = 8) -> Tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"),
                         options=[("grpc.max_receive_message_length", max_message_bytes),
                                  ("grpc.max_send_message_length", max_message_bytes),
                                  ("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionServicer(repository, metrics, max_batch_size), server)
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
                 max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.repository = ModelRepository(base_dir, model_name, num_versions, poll_seconds)
        self.metrics = Metrics()
        self.host = host
        self._rest = make_rest_server(self.repository, host, rest_port, self.metrics, max_batch_size, max_body_bytes)
        self._grpc, self.grpc_port = make_grpc_server(self.repository, host, grpc_port, self.metrics,
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
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH_SIZE)
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")
    base = args.base or _default_base()
    if args.num_versions < 1 or args.max_batch_size < 1 or args.poll_seconds <= 0:
        print("error: --num-versions and --max-batch-size must be >= 1 and --poll-seconds > 0", file=sys.stderr)
        return 2
    try:
        server = LocalServer(base, args.model_name, args.host, args.rest_port, args.grpc_port, args.num_versions,
                             args.poll_seconds, args.max_batch_size)
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
