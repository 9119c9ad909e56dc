"""TF Serving's REST API over a ModelRepository: predict, status, metadata and the metrics page."""
from __future__ import annotations

import json
import logging
import re
import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Mapping, Optional, Tuple

import numpy as np
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2

from serving.local_server.errors import (EndpointNotFoundError, ErrorStatus, InvalidRequestError,
                                         LengthRequiredError, MethodNotAllowedError, RequestTimeoutError,
                                         RequestTooLargeError, answer_error, one_line, parse_version)
from serving.local_server.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BODY_BYTES, DEFAULT_SOCKET_TIMEOUT_S
from serving.local_server.limits import RequestLimits
from serving.local_server.metrics import Metrics
from serving.local_server.repository import ModelRepository, ServedVersion
from serving.signatures import DEFAULT_SIGNATURE, pick_signature, rows_to_columns, validate_columns

# One logger for the whole server (operators and tests filter on its name).
log = logging.getLogger("serving.local_server")


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
