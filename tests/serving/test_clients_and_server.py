"""The local serving process with the real TF runtime, driven by the REST and gRPC clients.

One server per module (127.0.0.1, ephemeral ports) serves a copy of the fixture model; scores are
compared with direct calls of the same SavedModel. The last test pushes a new version and checks that
the server follows it.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests

from serving.grpc_client import GrpcClient, tensor_proto
from serving.local_server.server import LocalServer
from serving.rest_client import RestClient
from serving.retry import RetryableError, RetryPolicy, ServingError, call_with_retries
from serving.signatures import InvalidRequestError
from tests.serving.conftest import MODEL_NAME, criteo_rows, to_example

MAX_BATCH = 64
FAST_RETRY = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)


@pytest.fixture(scope="module")
def base_dir(serving_base, tmp_path_factory):
    """A serving base directory of this module's own (the last test pushes a version into it)."""
    base = tmp_path_factory.mktemp("served")
    shutil.copytree(os.path.join(serving_base, MODEL_NAME), os.path.join(base, MODEL_NAME))
    return str(base)


@pytest.fixture(scope="module")
def server(base_dir):
    with LocalServer(base_dir, MODEL_NAME, rest_port=0, grpc_port=0, poll_seconds=0.3,
                     max_batch_size=MAX_BATCH) as running:
        assert running.repository.poll_once() == [1]
        yield running


@pytest.fixture(scope="module")
def direct(serving_base):
    """The same SavedModel called directly, without any server."""
    import tensorflow as tf

    return tf.saved_model.load(os.path.join(serving_base, MODEL_NAME, "1"))


@pytest.fixture(scope="module")
def rest(server):
    with RestClient(server.rest_url, MODEL_NAME, timeout_s=30, retry=FAST_RETRY) as client:
        yield client


@pytest.fixture(scope="module")
def grpc_client(server):
    with GrpcClient(server.grpc_target, MODEL_NAME, timeout_s=30, retry=FAST_RETRY) as client:
        yield client


def direct_raw(direct, rows):
    import tensorflow as tf

    tensors = {k: tf.constant([r[k] for r in rows], tf.string if isinstance(rows[0][k], str) else tf.int64)
               for k in rows[0]}
    return direct.signatures["predict_raw"](**tensors)["probability"].numpy()


def direct_examples(direct, rows):
    import tensorflow as tf

    examples = tf.constant([to_example(r) for r in rows])
    return direct.signatures["serving_default"](examples=examples)["probability"].numpy()


def request_count(server, api, status) -> int:
    pattern = rf'request_count\{{api="{api}",model_name="{MODEL_NAME}",status="{status}"\}} (\d+)'
    match = re.search(pattern, server.metrics.text())
    return int(match.group(1)) if match else 0


def post(server, body, path=f"/v1/models/{MODEL_NAME}:predict"):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(server.rest_url + path, data=data, timeout=30)


# -- scores ------------------------------------------------------------------------------------
def test_rest_and_grpc_scores_equal_the_savedmodel(rest, grpc_client, direct):
    rows = criteo_rows(16)
    expected = direct_raw(direct, rows)
    assert np.ptp(expected) > 0.05  # rows score differently, so a mix-up of rows would show
    np.testing.assert_allclose(rest.predict_raw(rows), expected, rtol=1e-6)
    np.testing.assert_allclose(grpc_client.predict_raw(rows), expected, rtol=1e-6)
    # serving_default on the same rows as serialized tf.Examples gives the same scores (docs/contracts.md).
    examples = [to_example(r) for r in rows]
    np.testing.assert_allclose(direct_examples(direct, rows), expected, rtol=1e-5)
    np.testing.assert_allclose(rest.predict_examples(examples), expected, rtol=1e-5)
    np.testing.assert_allclose(grpc_client.predict_examples(examples), expected, rtol=1e-5)
    assert grpc_client.last_model_version == 1


def test_rest_row_and_column_formats(server, direct):
    rows = criteo_rows(5, offset=3)
    expected = direct_raw(direct, rows)
    by_rows = post(server, {"signature_name": "predict_raw", "instances": rows})
    assert by_rows.status_code == 200, by_rows.text
    np.testing.assert_allclose(by_rows.json()["predictions"], expected, rtol=1e-6)

    columns = {k: [r[k] for r in rows] for k in rows[0]}
    by_columns = post(server, {"signature_name": "predict_raw", "inputs": columns})
    assert by_columns.status_code == 200, by_columns.text
    np.testing.assert_allclose(by_columns.json()["outputs"], expected, rtol=1e-6)

    # serving_default (the default signature) has one input: bare b64 values in rows or columns.
    b64 = [{"b64": base64.b64encode(to_example(r)).decode()} for r in rows]
    for body, key in (({"instances": b64}, "predictions"), ({"inputs": b64}, "outputs"),
                      ({"instances": [{"examples": v} for v in b64]}, "predictions")):
        answer = post(server, body)
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(answer.json()[key], expected, rtol=1e-5)

    # A signature with several outputs answers one object per row (rows) or per output (columns).
    transformed = post(server, {"signature_name": "transform_features", "instances": b64[:2]}).json()
    assert len(transformed["predictions"]) == 2 and {"I1", "C1"} <= set(transformed["predictions"][0])
    transformed = post(server, {"signature_name": "transform_features", "inputs": b64[:2]}).json()
    assert len(transformed["outputs"]["C1"]) == 2


def test_status_and_metadata(rest, grpc_client, server):
    assert rest.status() == [{"version": "1", "state": "AVAILABLE",
                              "status": {"error_code": "OK", "error_message": ""}}]
    assert [(s["version"], s["state"]) for s in grpc_client.status()] == [(1, "AVAILABLE")]
    metadata = rest.metadata()
    assert metadata["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "1"}
    for client in (rest, grpc_client):
        signatures = client.signatures(refresh=True)
        assert set(signatures) == {"serving_default", "predict_raw", "transform_features"}
        raw = signatures["predict_raw"]
        assert len(raw.inputs) == 39 and raw.inputs["I1"].dtype == "DT_INT64" and raw.inputs["C1"].dtype == "DT_STRING"
        assert raw.inputs["C1"].shape == (-1,)
        assert set(raw.outputs) == {"probability"} and raw.outputs["probability"].dtype == "DT_FLOAT"
        assert signatures["serving_default"].inputs["examples"].dtype == "DT_STRING"
    metrics = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=10)
    assert metrics.status_code == 200 and request_count(server, "rest", "OK") > 0


# -- bad requests: 4xx / INVALID_ARGUMENT, and the server keeps serving ----------------------
def _good_columns(n=2):
    rows = criteo_rows(n)
    return {k: [r[k] for r in rows] for k in rows[0]}


def _with(columns, **changes):
    out = dict(columns)
    out.update(changes)
    return out


BAD_REST_BODIES = [
    ("{not json", 400, "malformed JSON"),
    ("[" * 100000, 400, "nested too deeply"),
    (b"\xff\xfe", 400, "malformed JSON"),
    ("[1, 2]", 400, "must be a JSON object"),
    ({"signature_name": "predict_raw"}, 400, "exactly one of"),
    ({"signature_name": "predict_raw", "instances": [], }, 400, "empty batch"),
    ({"signature_name": "nope", "inputs": {}}, 400, "signature 'nope' not in the model"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), I99=[1, 2])}, 400, "unknown feature 'I99'"),
    ({"signature_name": "predict_raw", "inputs": {k: v for k, v in _good_columns().items() if k != "C7"}}, 400,
     "missing feature 'C7'"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), I3=["a", "b"])}, 400,
     "feature 'I3' row 0: expected an integer"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), I3=[1.5, 2])}, 400,
     "feature 'I3' row 0: expected an integer"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), I3=[True, 2])}, 400,
     "feature 'I3' row 0: expected an integer"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), C2=["x", 7])}, 400,
     "feature 'C2' row 1: expected a string"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), C2=[["x"], "y"])}, 400,
     "feature 'C2' row 0: expected one DT_STRING value per row"),
    ({"signature_name": "predict_raw", "inputs": _with(_good_columns(), I3=[1, 2, 3])}, 400, "ragged batch"),
    ({"signature_name": "predict_raw", "inputs": _good_columns(MAX_BATCH + 1)}, 400,
     f"larger than the maximum of {MAX_BATCH}"),
    ({"signature_name": "predict_raw", "instances": [criteo_rows(1)[0], {"I1": 1}]}, 400,
     "row 1 names different features"),
    ({"instances": [{"b64": "###"}]}, 400, "not valid base64"),
    ({"instances": [{"b64": base64.b64encode(b"\x01garbage").decode()}]}, 400, "the model rejected the input"),
]


@pytest.mark.parametrize("body, status, message", BAD_REST_BODIES, ids=[m for _, _, m in BAD_REST_BODIES])
def test_rest_bad_request_gets_a_clear_4xx(server, rest, body, status, message):
    answer = post(server, body)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    error = answer.json()["error"]
    assert message in error and "\n" not in error
    assert len(rest.predict_raw(criteo_rows(1))) == 1  # still serving


def test_rest_unknown_model_version_method_and_oversized_body(server):
    assert requests.get(server.rest_url + "/v1/models/other", timeout=10).status_code == 404
    assert requests.get(server.rest_url + f"/v1/models/{MODEL_NAME}/versions/99", timeout=10).status_code == 404
    missing = post(server, {"instances": []}, path=f"/v1/models/{MODEL_NAME}/versions/99:predict")
    assert missing.status_code == 404 and "version 99" in missing.json()["error"]
    assert requests.delete(server.rest_url + f"/v1/models/{MODEL_NAME}", timeout=10).status_code == 405
    assert requests.get(server.rest_url + "/v2/anything", timeout=10).status_code == 404
    # A body over the limit is refused from its Content-Length alone, without reading it.
    connection = http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=10)
    connection.putrequest("POST", f"/v1/models/{MODEL_NAME}:predict")
    connection.putheader("Content-Length", str(1 << 40))
    connection.endheaders()
    answer = connection.getresponse()
    assert answer.status == 413 and "over the limit" in json.loads(answer.read())["error"]
    connection.close()


def _raw_grpc_predict(server, inputs, model_name=MODEL_NAME, signature="predict_raw"):
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, proto in inputs.items():
        request.inputs[name].CopyFrom(proto)
    with grpc.insecure_channel(server.grpc_target) as channel:
        return prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)


def _grpc_inputs(columns, **dtypes):
    return {k: tensor_proto([x.encode() if isinstance(x, str) else x for x in v],
                            dtypes.get(k, "DT_STRING" if k.startswith("C") else "DT_INT64"))
            for k, v in columns.items()}


def _short_tensor():
    proto = tensor_proto([1, 2], "DT_INT64")
    proto.tensor_shape.dim[0].size = 3  # claims 3 values, holds 2
    return proto


BAD_GRPC = [
    (lambda: _grpc_inputs(_with(_good_columns(), I99=[1, 2])), grpc.StatusCode.INVALID_ARGUMENT, "unknown feature 'I99'"),
    (lambda: _grpc_inputs(_with(_good_columns(), I3=["a", "b"]), I3="DT_STRING"), grpc.StatusCode.INVALID_ARGUMENT,
     "feature 'I3': expected DT_INT64, got DT_STRING"),
    (lambda: _grpc_inputs(_with(_good_columns(), I3=[1, 2, 3])), grpc.StatusCode.INVALID_ARGUMENT, "ragged batch"),
    (lambda: _grpc_inputs(_good_columns(MAX_BATCH + 1)), grpc.StatusCode.INVALID_ARGUMENT,
     f"larger than the maximum of {MAX_BATCH}"),
    (lambda: {**_grpc_inputs(_good_columns()), "I3": _short_tensor()}, grpc.StatusCode.INVALID_ARGUMENT,
     "needs 3 values"),
]


@pytest.mark.parametrize("make_inputs, code, message", BAD_GRPC, ids=[m for _, _, m in BAD_GRPC])
def test_grpc_bad_request_gets_invalid_argument(server, grpc_client, make_inputs, code, message):
    with pytest.raises(grpc.RpcError) as caught:
        _raw_grpc_predict(server, make_inputs())
    assert caught.value.code() == code and message in caught.value.details()
    assert len(grpc_client.predict_raw(criteo_rows(1))) == 1  # still serving


def test_grpc_unknown_model_is_not_found(server):
    with pytest.raises(grpc.RpcError) as caught:
        _raw_grpc_predict(server, _grpc_inputs(_good_columns()), model_name="other")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_server_side_errors_reach_the_clients_as_serving_errors(rest, grpc_client):
    """With validation off, the server's own checks answer (and the clients say what it said)."""
    bad = _with(_good_columns(), I3=["a", "b"])
    with pytest.raises(ServingError, match="INVALID_ARGUMENT: feature 'I3' row 0: expected an integer"):
        rest.predict(bad, "predict_raw", validate=False)
    dtypes = {k: "DT_STRING" if k.startswith("C") or k == "I3" else "DT_INT64" for k in bad}
    with pytest.raises(ServingError, match="INVALID_ARGUMENT: feature 'I3': expected DT_INT64"):
        grpc_client.predict(bad, "predict_raw", validate=False, dtypes=dtypes)


# -- client-side validation: refused before anything is sent ----------------------------------
CLIENT_SIDE = [
    (lambda rows: [dict(r, I99=1) for r in rows], "unknown feature 'I99'"),
    (lambda rows: [dict(rows[0], I2="seven")] + rows[1:], "feature 'I2' row 0: expected an integer"),
    (lambda rows: [dict(rows[0], C5=None)] + rows[1:], "feature 'C5' row 0: expected a string"),
    (lambda rows: {**{k: [r[k] for r in rows] for k in rows[0]}, "C1": ["a"]}, "ragged batch"),
    (lambda rows: criteo_rows(MAX_BATCH + 1), f"larger than the maximum of {MAX_BATCH}"),
    (lambda rows: [], "empty batch"),
]


@pytest.mark.parametrize("make_bad, message", CLIENT_SIDE, ids=[m for _, m in CLIENT_SIDE])
def test_clients_refuse_bad_input_before_sending(server, make_bad, message):
    with RestClient(server.rest_url, MODEL_NAME, max_batch_size=MAX_BATCH) as rest_client, \
            GrpcClient(server.grpc_target, MODEL_NAME, max_batch_size=MAX_BATCH) as grpc_client:
        rest_client.signatures(), grpc_client.signatures()  # metadata fetched: the only calls allowed
        sent = {api: request_count(server, api, "INVALID_ARGUMENT") + request_count(server, api, "OK")
                for api in ("rest", "grpc")}
        for client in (rest_client, grpc_client):
            with pytest.raises(InvalidRequestError, match=re.escape(message)):
                client.predict_raw(make_bad(criteo_rows(2)))
        assert issubclass(InvalidRequestError, ValueError)
        assert {api: request_count(server, api, "INVALID_ARGUMENT") + request_count(server, api, "OK")
                for api in ("rest", "grpc")} == sent


# -- retries -----------------------------------------------------------------------------------
def test_retry_policy_backs_off_exponentially_and_stops():
    policy = RetryPolicy(max_attempts=5, initial_backoff_s=0.1, max_backoff_s=0.3, jitter=0.0)
    slept, attempts = [], []

    def always_unavailable():
        attempts.append(1)
        raise RetryableError("UNAVAILABLE", "down")

    with pytest.raises(RetryableError):
        call_with_retries(always_unavailable, policy, sleep=slept.append)
    assert len(attempts) == 5 and slept == pytest.approx([0.1, 0.2, 0.3, 0.3])

    attempts.clear()

    def not_retryable():
        attempts.append(1)
        raise ServingError("INVALID_ARGUMENT", "bad")

    with pytest.raises(ServingError):
        call_with_retries(not_retryable, policy, sleep=slept.append)
    assert len(attempts) == 1


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_clients_give_up_on_an_unreachable_server_after_bounded_retries():
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(RetryableError) as rest_error:
        RestClient(f"http://127.0.0.1:{port}", timeout_s=2, retry=FAST_RETRY).status()
    with GrpcClient(f"127.0.0.1:{port}", timeout_s=2, retry=FAST_RETRY) as client:
        with pytest.raises(RetryableError) as grpc_error:
            client.status()
    assert rest_error.value.code == grpc_error.value.code == "UNAVAILABLE"
    assert time.monotonic() - started < 15


def test_clients_retry_503_until_the_first_version_is_pushed(serving_base, tmp_path):
    """A server started before any push answers 503/UNAVAILABLE; the clients' retries ride it out."""
    with LocalServer(str(tmp_path), MODEL_NAME, rest_port=0, grpc_port=0, poll_seconds=0.2) as early:
        with pytest.raises(RetryableError, match="no version of model 'ctr' is loaded yet"):
            RestClient(early.rest_url, retry=FAST_RETRY).predict_raw(criteo_rows(1))
        with pytest.raises(RetryableError):
            GrpcClient(early.grpc_target, retry=FAST_RETRY).predict_raw(criteo_rows(1))

        def push():
            time.sleep(0.5)
            staging = tmp_path / "staging-1"
            shutil.copytree(os.path.join(serving_base, MODEL_NAME, "1"), staging)
            os.makedirs(tmp_path / MODEL_NAME, exist_ok=True)
            os.rename(staging, tmp_path / MODEL_NAME / "1")

        pusher = threading.Thread(target=push)
        pusher.start()
        patient = RetryPolicy(max_attempts=200, initial_backoff_s=0.1, max_backoff_s=0.3)
        scores = RestClient(early.rest_url, timeout_s=30, retry=patient).predict_raw(criteo_rows(3))
        pusher.join()
        assert len(scores) == 3 and all(0.0 < s < 1.0 for s in scores)


# -- the demo path and `make serve`'s defaults -------------------------------------------------
def test_demo_scores_click_log_lines_through_both_clients(server, direct):
    from components.dataset_spec import load_spec
    from pipelines.demo import examples_from_lines, score_examples

    spec = load_spec("criteo")
    rows = criteo_rows(4)
    # Criteo TSV lines: label, then the fields in file order; empty = missing, as ExampleGen reads them.
    lines = ["\t".join(["1" if i % 2 else "0"] + [str(r[c.name]) for c in spec.file_columns[1:]]) + "\n"
             for i, r in enumerate(rows)]
    lines.insert(2, "not\ta\tcriteo\tline\n")
    examples, labels = examples_from_lines(lines, "criteo", max_rows=3)
    assert len(examples) == 3 and labels == ["0", "1", "0"]
    result = score_examples(examples, server.rest_url, server.grpc_target, MODEL_NAME)
    np.testing.assert_allclose(result["rest"], direct_raw(direct, rows[:3]), rtol=1e-5)
    np.testing.assert_allclose(result["grpc"], result["rest"], rtol=1e-6)


# -- a new version is followed (keep last: it changes what the module's server serves) ---------
def test_server_follows_a_newly_pushed_version(server, base_dir, rest, grpc_client, direct):
    rows = criteo_rows(4)
    # A half-copied version (no variables/ yet) is not loaded; the Pusher's finished copy is.
    partial = os.path.join(base_dir, MODEL_NAME, "3")
    os.makedirs(partial)
    shutil.copy(os.path.join(base_dir, MODEL_NAME, "1", "saved_model.pb"), partial)
    shutil.copytree(os.path.join(base_dir, MODEL_NAME, "1"), os.path.join(base_dir, MODEL_NAME, "2"))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if [s["version"] for s in rest.status()] == ["2"]:
            break
        time.sleep(0.3)
    assert [(s["version"], s["state"]) for s in rest.status()] == [("2", "AVAILABLE")]
    np.testing.assert_allclose(grpc_client.predict_raw(rows), direct_raw(direct, rows), rtol=1e-6)
    assert grpc_client.last_model_version == 2
    assert rest.metadata()["model_spec"]["version"] == "2"
    # Only the newest version is served (TF Serving's default policy): version 1 is gone.
    with pytest.raises(ServingError, match="NOT_FOUND"):
        rest.predict_raw(rows, version=1)
    np.testing.assert_allclose(rest.predict_raw(rows, version=2), direct_raw(direct, rows), rtol=1e-6)
    shutil.rmtree(partial)

    # A newer version that cannot be loaded is reported, and the previous one keeps serving.
    broken = os.path.join(base_dir, MODEL_NAME, "4")
    os.makedirs(os.path.join(broken, "variables"))
    with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
        f.write(b"not a SavedModel")
    assert server.repository.poll_once() == [2]
    states = {s["version"]: (s["state"], s["status"]["error_code"]) for s in rest.status()}
    assert states == {"2": ("AVAILABLE", "OK"), "4": ("END", "UNKNOWN")}
    assert len(rest.predict_raw(rows)) == 4 and rest.metadata()["model_spec"]["version"] == "2"
