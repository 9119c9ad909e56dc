"""The local serving process under many, slow, large and malformed requests (loopback only).

One server per module (127.0.0.1, ephemeral ports) with a short socket timeout and a fast retry of
failed versions; the last test pushes a version whose variables arrive after its saved_model.pb.
"""
from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import re
import selectors
import shutil
import socket
import statistics
import time
from typing import List, Tuple

import grpc
import pytest
import requests

from serving.grpc_client import GrpcClient, tensor_proto
from serving.local_server.cli import build_parser
from serving.local_server.defaults import DEFAULT_MAX_BODY_BYTES
from serving.local_server.errors import ERROR_STATUS, INTERNAL, error_status
from serving.local_server.metrics import Metrics
from serving.local_server.server import LocalServer
from serving.rest_client import RestClient
from serving.retry import RetryableError, RetryPolicy
from tests.serving.conftest import MODEL_NAME, criteo_rows, to_example

SOCKET_TIMEOUT_S = 2.0
# Well under the socket timeout: a request turned away by the stalled uploads of one test must not
# outwait them.
QUEUE_TIMEOUT_S = 0.25
FAST_RETRY = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.05)
PREDICT_PATH = f"/v1/models/{MODEL_NAME}:predict"


@pytest.fixture(scope="module")
def base_dir(serving_base, tmp_path_factory):
    base = tmp_path_factory.mktemp("hardened")
    shutil.copytree(os.path.join(serving_base, MODEL_NAME), os.path.join(base, MODEL_NAME))
    return str(base)


@pytest.fixture(scope="module")
def server(base_dir):
    with LocalServer(base_dir, MODEL_NAME, rest_port=0, grpc_port=0, poll_seconds=0.2, retry_failed_seconds=0.5,
                     socket_timeout_s=SOCKET_TIMEOUT_S, queue_timeout_s=QUEUE_TIMEOUT_S) as running:
        assert running.repository.poll_once() == [1]
        yield running


def predict_body(rows=1) -> bytes:
    return json.dumps({"signature_name": "predict_raw", "instances": criteo_rows(rows)}).encode()


def connect(server, timeout=10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout)


def read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """Everything the server sends until it closes the connection; fails at ``deadline``."""
    data = b""
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"connection still open at the deadline (received {data[:80]!r})") from None
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def grpc_predict_examples(server, examples):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["examples"].CopyFrom(tensor_proto(examples, "DT_STRING"))
    with grpc.insecure_channel(server.grpc_target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


# -- many clients at once ------------------------------------------------------------------------
def burst(server, clients: int, body: bytes, seconds: float) -> Tuple[List[bytes], List[str]]:
    """``clients`` connections opened at once, each sending one predict: (status lines, errors).

    One thread drives all of them with a selector: 200 client threads would fight the server's own
    threads for the GIL of this one process and measure that instead.
    """
    request = (f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body
    selector = selectors.DefaultSelector()
    for _ in range(clients):
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", server.rest_port))
        selector.register(sock, selectors.EVENT_WRITE, {"out": request, "in": b""})
    statuses, errors = [], []
    deadline = time.monotonic() + seconds
    while selector.get_map() and time.monotonic() < deadline:
        for key, events in selector.select(timeout=0.5):
            sock, state = key.fileobj, key.data
            try:
                if events & selectors.EVENT_WRITE:
                    state["out"] = state["out"][sock.send(state["out"]):]
                    if not state["out"]:
                        selector.modify(sock, selectors.EVENT_READ, state)
                    continue
                chunk = sock.recv(65536)
                if chunk:
                    state["in"] += chunk
                    continue
                statuses.append(state["in"].split(b"\r\n", 1)[0])
            except OSError as e:
                errors.append(f"{type(e).__name__}: {e}")
            selector.unregister(sock)
            sock.close()
    errors += ["no answer in time"] * len(selector.get_map())
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    return statuses, errors


def test_200_parallel_predicts_all_connect_and_succeed(base_dir):
    # A server of its own, where a burst waits for its turn instead of getting 503s: this is about
    # connections (a listen backlog of 5 reset them), not about the limits tested below.
    with LocalServer(base_dir, MODEL_NAME, rest_port=0, grpc_port=0, queue_timeout_s=60) as burst_server:
        started = time.monotonic()
        statuses, errors = burst(burst_server, 200, predict_body(), seconds=60)
        assert errors == [], f"{len(errors)} of 200 failed, e.g. {errors[:3]}"
        assert set(statuses) == {b"HTTP/1.1 200 OK"} and len(statuses) == 200
        assert time.monotonic() - started < 60


def test_keep_alive_requests_do_not_wait_for_delayed_acks(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    body = predict_body()
    latencies = []
    for _ in range(30):
        started = time.perf_counter()
        connection.request("POST", PREDICT_PATH, body=body)
        answer = connection.getresponse()
        answer.read()
        latencies.append(time.perf_counter() - started)
        assert answer.status == 200 and answer.getheader("Connection") != "close"
    connection.close()
    # Without TCP_NODELAY each answer's body waits for the client's delayed ACK of its headers (~40 ms).
    assert statistics.median(latencies) < 0.02, [f"{t * 1000:.1f} ms" for t in latencies]


# -- slow and large clients ---------------------------------------------------------------------
def test_stalled_connections_neither_block_predicts_nor_stay_open(server):
    stalled = []
    for i in range(100):
        sock = connect(server)
        if i % 2:  # headers cut off mid-line
            sock.sendall(b"POST " + PREDICT_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        else:  # complete headers, a body that stops after 10 of 1000 bytes
            sock.sendall(b"POST " + PREDICT_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b"{" * 10)
        stalled.append(sock)
    try:
        started = time.monotonic()
        answer = requests.post(server.rest_url + PREDICT_PATH, data=predict_body(), timeout=10)
        assert answer.status_code == 200 and time.monotonic() - started < 5
        deadline = time.monotonic() + SOCKET_TIMEOUT_S + 10
        for i, sock in enumerate(stalled):
            received = read_until_closed(sock, deadline)
            # The server closed each one; a body that stopped coming was told why.
            assert received == b"" if i % 2 else received.startswith(b"HTTP/1.1 408 "), received[:80]
    finally:
        for sock in stalled:
            sock.close()


def test_oversized_body_is_refused_before_it_is_sent(server):
    assert DEFAULT_MAX_BODY_BYTES == 8 << 20
    sock = connect(server)
    try:
        sock.sendall(b"POST " + PREDICT_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     + f"Content-Length: {(8 << 20) + 1}\r\n\r\n".encode())
        received = read_until_closed(sock, time.monotonic() + 5)  # answered and closed, no body sent
    finally:
        sock.close()
    assert received.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in received
    assert b"over the limit of 8388608" in received


def test_unusable_content_length_is_a_client_error(server):
    for length, status in [("\u00b2", 411), ("9" * 5000, 413), ("-1", 411)]:
        connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
        connection.putrequest("POST", PREDICT_PATH)
        connection.putheader("Content-Length", length)
        connection.endheaders()
        answer = connection.getresponse()
        assert answer.status == status and "error" in json.loads(answer.read()), length[:10]
        connection.close()


def test_bodies_held_at_once_are_bounded_in_bytes(server):
    """Four stalled uploads at the size limit fill the byte budget: the next request gets a quick 503
    without its body being read; once the stalled ones time out, requests run again."""
    budget = server.limits.body_bytes.capacity
    assert budget == 4 * DEFAULT_MAX_BODY_BYTES
    holders = []
    try:
        for _ in range(budget // DEFAULT_MAX_BODY_BYTES):
            sock = connect(server)
            sock.sendall(b"POST " + PREDICT_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         + f"Content-Length: {DEFAULT_MAX_BODY_BYTES}\r\n\r\n".encode() + b"{")
            holders.append(sock)
        deadline = time.monotonic() + 5
        while server.limits.body_bytes.used < budget and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.limits.body_bytes.used == budget
        busy = requests.post(server.rest_url + PREDICT_PATH, data=predict_body(), timeout=10)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert "server busy: request bytes" in busy.json()["error"]
        for sock in holders:
            read_until_closed(sock, time.monotonic() + SOCKET_TIMEOUT_S + 10)
    finally:
        for sock in holders:
            sock.close()
    assert requests.post(server.rest_url + PREDICT_PATH, data=predict_body(), timeout=10).status_code == 200
    assert server.limits.body_bytes.used == 0


def test_predictions_in_flight_are_bounded_on_both_apis(server):
    predictions = server.limits.predictions
    with predictions.hold(predictions.capacity):  # as if that many predictions were running
        started = time.monotonic()
        busy = requests.post(server.rest_url + PREDICT_PATH, data=predict_body(), timeout=10)
        assert busy.status_code == 503 and "server busy: predictions" in busy.json()["error"]
        with pytest.raises(grpc.RpcError) as caught:
            grpc_predict_examples(server, [to_example(criteo_rows(1)[0])])
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # Both clients retry a busy server, boundedly.
        with pytest.raises(RetryableError, match="UNAVAILABLE: server busy"):
            RestClient(server.rest_url, retry=FAST_RETRY).predict_raw(criteo_rows(1))
        with GrpcClient(server.grpc_target, retry=FAST_RETRY) as client:
            with pytest.raises(RetryableError, match="RESOURCE_EXHAUSTED: server busy"):
                client.predict_raw(criteo_rows(1))
        assert time.monotonic() - started < 6 * QUEUE_TIMEOUT_S + 10
    assert len(RestClient(server.rest_url, retry=FAST_RETRY).predict_raw(criteo_rows(2))) == 2


# -- client mistakes: 4xx / INVALID_ARGUMENT, one log line --------------------------------------
def _no_traceback_logged(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "serving.local_server" and r.exc_info]


@pytest.mark.parametrize("example", [b"\xff" * 20, "half"], ids=["binary", "truncated"])
def test_malformed_tf_example_is_invalid_argument_on_both_apis(server, caplog, example):
    if example == "half":
        whole = to_example(criteo_rows(1)[0])
        example = whole[:len(whole) // 2]
    caplog.set_level(logging.INFO, logger="serving.local_server")
    answer = requests.post(server.rest_url + PREDICT_PATH, timeout=10,
                           json={"instances": [{"b64": base64.b64encode(example).decode()}]})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"] == "the model rejected the input: Could not parse example input"
    with pytest.raises(grpc.RpcError) as caught:
        grpc_predict_examples(server, [example])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "the model rejected the input: Could not parse example input"
    assert _no_traceback_logged(caplog) == []
    logged = [r.getMessage() for r in caplog.records if "INVALID_ARGUMENT" in r.getMessage()]
    assert len(logged) == 2 and all("\n" not in line for line in logged)


def test_out_of_range_version_is_a_client_error(server, caplog):
    caplog.set_level(logging.INFO, logger="serving.local_server")
    for version, status in [("5" * 5000, 400), (str(1 << 63), 400), (str((1 << 63) - 1), 404)]:
        url = f"{server.rest_url}/v1/models/{MODEL_NAME}/versions/{version}"
        for answer in (requests.get(url, timeout=10),
                       requests.post(url + ":predict", data=predict_body(), timeout=10)):
            assert answer.status_code == status, answer.text[:200]
            assert len(answer.json()["error"]) < 200
    assert _no_traceback_logged(caplog) == []


def test_one_error_table_maps_every_error_for_both_apis():
    assert error_status(ValueError("a bug")) is INTERNAL
    for kind, status in ERROR_STATUS:
        assert error_status(kind("x")) is status
        assert 400 <= status.http < 600 and status.grpc != grpc.StatusCode.OK


# -- metrics -------------------------------------------------------------------------------------
_METRIC_LINE = re.compile(r'^(# TYPE \S+ counter|:tensorflow:serving:\w+\{(\w+="([^"\\\n]|\\.)*",?)+\} \d+)$')


def test_metric_labels_are_escaped_and_unknown_models_share_one_label(server):
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)

    def get(path):
        connection.request("GET", path)
        answer = connection.getresponse()
        return answer.status, answer.read()

    assert get('/v1/models/evil"}%20injected{x="1')[0] == 404
    _, first = get("/monitoring/prometheus/metrics")
    for i in range(300):
        assert get(f"/v1/models/bogus{i}")[0] == 404
    _, page = get("/monitoring/prometheus/metrics")
    connection.close()
    text = page.decode()
    assert "evil" not in text and "bogus" not in text
    assert re.search(r'request_count\{api="rest",model_name="__unknown__",status="NOT_FOUND"\} \d+', text)
    # The counts grew, not the page: the same series, a few more digits.
    assert len(text.splitlines()) == len(first.decode().splitlines()) and len(page) < len(first) + 20
    assert all(_METRIC_LINE.match(line) for line in text.splitlines()), text

    metrics = Metrics(['quoted"model\\name'])
    metrics.record("rest", 'quoted"model\\name', "OK", 0.001)
    assert 'model_name="quoted\\"model\\\\name"' in metrics.text()
    assert all(_METRIC_LINE.match(line) for line in metrics.text().splitlines())


def test_cli_takes_the_limits():
    defaults = {a.dest: a.default for a in build_parser()._actions}
    assert defaults["max_body_bytes"] == 8 << 20 and defaults["max_in_flight"] >= 1
    assert defaults["socket_timeout_s"] > 0 and defaults["retry_failed_seconds"] > 0


# -- versions (keep last: this changes the version the module's server serves) -------------------
def test_version_whose_variables_arrive_late_is_loaded_on_retry(server, base_dir):
    source = os.path.join(base_dir, MODEL_NAME, "1")
    late = os.path.join(base_dir, MODEL_NAME, "2")
    os.makedirs(os.path.join(late, "variables"))
    shutil.copy(os.path.join(source, "saved_model.pb"), late)  # the pb first, variables still copying
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and 2 not in {v for v, *_ in server.repository.status(MODEL_NAME)}:
        time.sleep(0.1)
    assert [(v, state) for v, state, *_ in server.repository.status(MODEL_NAME)] == [(1, "AVAILABLE"), (2, "END")]
    pb_mtime = os.path.getmtime(os.path.join(late, "saved_model.pb"))
    shutil.rmtree(os.path.join(late, "variables"))
    shutil.copytree(os.path.join(source, "variables"), os.path.join(late, "variables"))
    if os.path.isdir(os.path.join(source, "assets")):
        shutil.copytree(os.path.join(source, "assets"), os.path.join(late, "assets"))
    assert os.path.getmtime(os.path.join(late, "saved_model.pb")) == pb_mtime
    while time.monotonic() < deadline and server.repository.poll_once() != [2]:
        time.sleep(0.2)
    assert [(v, state) for v, state, *_ in server.repository.status(MODEL_NAME)] == [(2, "AVAILABLE")]
    assert len(RestClient(server.rest_url, retry=FAST_RETRY).predict_raw(criteo_rows(2), version=2)) == 2
