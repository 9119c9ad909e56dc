"""Client for TF Serving's REST API (and the local server, which speaks the same API).

    client = RestClient("http://127.0.0.1:8501", model_name="ctr")
    client.predict_raw([{"I1": 3, ..., "C26": "e5ba7672"}])      # -> [0.031, ...]
    client.predict({"examples": [serialized_tf_example]})        # serving_default, columns

Requests are checked against the model's signature metadata (fetched once per version) before
they are sent: an unknown, missing or mistyped feature, a ragged or oversized batch raises
``InvalidRequestError`` (a ``ValueError``). Connection failures and HTTP 503 are retried with
bounded exponential backoff; every HTTP call has a timeout.
"""
from __future__ import annotations

import base64
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import requests

from serving import DEFAULT_MODEL_NAME
from serving.retry import RetryableError, RetryPolicy, ServingError, call_with_retries
from serving.signatures import (InvalidRequestError, SignatureSpec, pick_signature, rows_to_columns,
                                signatures_from_metadata_json, validate_columns)

__all__ = ["RestClient", "InvalidRequestError", "ServingError", "RetryPolicy"]

Rows = Sequence[Mapping[str, Any]]
Columns = Mapping[str, Sequence[Any]]
_HTTP_CODES = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "INVALID_ARGUMENT",
               429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 503: "UNAVAILABLE",
               504: "DEADLINE_EXCEEDED"}


def as_columns(inputs: Union[Rows, Columns]) -> Dict[str, List[Any]]:
    """Rows (list of {feature: value}) or columns ({feature: [values]}) -> columns."""
    if isinstance(inputs, Mapping):
        return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in inputs.items()}
    return rows_to_columns(inputs)


def _json_safe(value):
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class RestClient:
    def __init__(self, base_url: str, model_name: str = DEFAULT_MODEL_NAME, timeout_s: float = 5.0,
                 retry: RetryPolicy = RetryPolicy(), max_batch_size: int = 1024,
                 session: Optional[requests.Session] = None):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry = retry
        self.max_batch_size = max_batch_size
        self.session = session or requests.Session()
        self._signatures: Dict[Optional[int], Dict[str, SignatureSpec]] = {}

    def close(self) -> None:
        self.session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _model_url(self, version: Optional[int]) -> str:
        url = f"{self.base_url}/v1/models/{self.model_name}"
        return url if version is None else f"{url}/versions/{int(version)}"

    def _call(self, method: str, url: str, payload: Optional[dict] = None) -> dict:
        def attempt():
            try:
                response = self.session.request(method, url, json=payload, timeout=self.timeout_s)
            except requests.exceptions.ConnectionError as e:
                # Includes connection refused/reset: the server is (re)starting, worth a retry.
                # A read timeout is not retried: the request may still be running there.
                if isinstance(e, requests.exceptions.ReadTimeout):
                    raise ServingError("DEADLINE_EXCEEDED", f"no answer from {url} within {self.timeout_s}s") from None
                raise RetryableError("UNAVAILABLE", f"cannot reach {url}: {type(e).__name__}") from None
            except requests.exceptions.Timeout:
                raise ServingError("DEADLINE_EXCEEDED", f"no answer from {url} within {self.timeout_s}s") from None
            try:
                body = response.json()
            except ValueError:
                body = {"error": response.text[:200]}
            if response.status_code == 200:
                return body
            message = body.get("error", response.reason) if isinstance(body, dict) else str(body)[:200]
            code = _HTTP_CODES.get(response.status_code, f"HTTP_{response.status_code}")
            if response.status_code == 503:
                raise RetryableError(code, message)
            raise ServingError(code, message)

        return call_with_retries(attempt, self.retry)

    # -- model status and metadata ------------------------------------------------------------
    def status(self, version: Optional[int] = None) -> List[dict]:
        """TF Serving's model_version_status list: [{"version": "3", "state": "AVAILABLE", ...}]."""
        return self._call("GET", self._model_url(version))["model_version_status"]

    def metadata(self, version: Optional[int] = None) -> dict:
        return self._call("GET", self._model_url(version) + "/metadata")

    def signatures(self, version: Optional[int] = None, refresh: bool = False) -> Dict[str, SignatureSpec]:
        if refresh or version not in self._signatures:
            self._signatures[version] = signatures_from_metadata_json(self.metadata(version))
        return self._signatures[version]

    # -- predict -----------------------------------------------------------------------------
    def predict(self, inputs: Union[Rows, Columns], signature_name: str = "serving_default",
                version: Optional[int] = None, validate: bool = True) -> Dict[str, list]:
        """Run ``signature_name`` on rows or columns; returns {output name: [value per row]}.

        With ``validate`` the request is checked against the signature first (one metadata call
        per version, cached; pass ``refresh`` via ``signatures()`` after a schema change).
        """
        columns = as_columns(inputs)
        if validate:
            signature = pick_signature(self.signatures(version), signature_name)
            validate_columns(signature, columns, self.max_batch_size)
        payload = {"signature_name": signature_name, "inputs": {k: _json_safe(v) for k, v in columns.items()}}
        outputs = self._call("POST", self._model_url(version) + ":predict", payload)["outputs"]
        if not isinstance(outputs, dict):  # TF Serving drops the name of a signature's only output
            names = list(self.signatures(version)[signature_name].outputs) if validate else ["output"]
            outputs = {names[0]: outputs}
        return outputs

    def predict_raw(self, rows: Union[Rows, Columns], version: Optional[int] = None) -> List[float]:
        """Click probabilities of raw rows through the ``predict_raw`` signature (docs/contracts.md)."""
        return self.predict(rows, "predict_raw", version)["probability"]

    def predict_examples(self, examples: Sequence[bytes], version: Optional[int] = None) -> List[float]:
        """Click probabilities of serialized tf.Examples through ``serving_default``."""
        return self.predict({"examples": list(examples)}, "serving_default", version)["probability"]
