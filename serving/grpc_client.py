"""Client for TF Serving's gRPC API: PredictionService (Predict, GetModelMetadata), ModelService status.

    with GrpcClient("127.0.0.1:8500", model_name="ctr") as client:
        client.predict_raw([{"I1": 3, ..., "C26": "e5ba7672"}])      # -> [0.031, ...]

Same contract as ``serving.rest_client.RestClient``: requests are validated against the model's
signature metadata before they are sent (``InvalidRequestError``), each call has a deadline, and
UNAVAILABLE and a busy server's RESOURCE_EXHAUSTED are retried with bounded exponential backoff.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import grpc
import numpy as np

from serving import DEFAULT_MODEL_NAME
from serving.rest_client import Columns, Rows, as_columns
from serving.retry import RetryableError, RetryPolicy, ServingError, call_with_retries
from serving.signatures import InvalidRequestError, SignatureSpec, pick_signature, signatures_from_proto, validate_columns

__all__ = ["GrpcClient", "InvalidRequestError", "ServingError", "RetryPolicy", "tensor_proto"]


def _protos():
    # Imported on first use: tensorflow_serving.apis pulls in TensorFlow (a few seconds).
    from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                         predict_pb2, prediction_service_pb2_grpc)
    return get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc, predict_pb2, prediction_service_pb2_grpc


def tensor_proto(values: Sequence[Any], dtype: str):
    """A rank-1 TensorProto of ``dtype`` (TF Serving enum name) from validated Python values."""
    from tensorflow.core.framework import tensor_pb2, types_pb2

    proto = tensor_pb2.TensorProto(dtype=types_pb2.DataType.Value(dtype))
    array = np.asarray(values, dtype=object if dtype == "DT_STRING" else None)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=size)
    flat = array.reshape(-1).tolist()
    field = {"DT_STRING": "string_val", "DT_INT64": "int64_val", "DT_INT32": "int_val", "DT_FLOAT": "float_val",
             "DT_DOUBLE": "double_val", "DT_BOOL": "bool_val"}.get(dtype)
    if field is None:
        raise InvalidRequestError(f"inputs of type {dtype} are not supported by this client")
    try:
        getattr(proto, field).extend(flat)
    except (TypeError, ValueError) as e:
        raise InvalidRequestError(f"cannot encode values as {dtype}: {e}") from None
    return proto


class GrpcClient:
    def __init__(self, target: str, model_name: str = DEFAULT_MODEL_NAME, timeout_s: float = 5.0,
                 retry: RetryPolicy = RetryPolicy(), max_batch_size: int = 1024,
                 max_message_bytes: int = 16 << 20, channel: Optional[grpc.Channel] = None):
        self.target = target
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.retry = retry
        self.max_batch_size = max_batch_size
        self.channel = channel or grpc.insecure_channel(target, options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes)])
        (self._metadata_pb2, self._status_pb2, model_grpc, self._predict_pb2, prediction_grpc) = _protos()
        self._prediction = prediction_grpc.PredictionServiceStub(self.channel)
        self._model_service = model_grpc.ModelServiceStub(self.channel)
        self._signatures: Dict[Optional[int], Dict[str, SignatureSpec]] = {}

    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, method, request):
        def attempt():
            try:
                return method(request, timeout=self.timeout_s)
            except grpc.RpcError as e:
                code = e.code()
                details = e.details() or ""
                # UNAVAILABLE: no version loaded yet, or the server restarting. RESOURCE_EXHAUSTED: a server
                # at its limit of calls in progress -- but not gRPC's own refusal of a message over the size
                # limit, which would be refused again.
                if code == grpc.StatusCode.UNAVAILABLE or (
                        code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" not in details):
                    raise RetryableError(code.name, details) from None
                raise ServingError(code.name, details) from None

        return call_with_retries(attempt, self.retry)

    def _model_spec(self, target, version: Optional[int], signature_name: Optional[str] = None):
        target.name = self.model_name
        if version is not None:
            target.version.value = int(version)
        if signature_name:
            target.signature_name = signature_name

    # -- status and metadata ---------------------------------------------------------------------
    def status(self, version: Optional[int] = None) -> List[dict]:
        """[{"version": 3, "state": "AVAILABLE", "error_code": 0, "error_message": ""}] (ModelService)."""
        request = self._status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, version)
        response = self._call(self._model_service.GetModelStatus, request)
        state_name = self._status_pb2.ModelVersionStatus.State.Name
        return [{"version": s.version, "state": state_name(s.state), "error_code": s.status.error_code,
                 "error_message": s.status.error_message} for s in response.model_version_status]

    def signatures(self, version: Optional[int] = None, refresh: bool = False) -> Dict[str, SignatureSpec]:
        if refresh or version not in self._signatures:
            request = self._metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
            self._model_spec(request.model_spec, version)
            response = self._call(self._prediction.GetModelMetadata, request)
            signature_map = self._metadata_pb2.SignatureDefMap()
            if not response.metadata["signature_def"].Unpack(signature_map):
                raise ServingError("INTERNAL", "GetModelMetadata answered without a SignatureDefMap")
            self._signatures[version] = signatures_from_proto(signature_map.signature_def)
        return self._signatures[version]

    # -- predict -------------------------------------------------------------------------------
    def predict(self, inputs: Rows | Columns, signature_name: str = "serving_default",
                version: Optional[int] = None, validate: bool = True,
                dtypes: Optional[Dict[str, str]] = None) -> Dict[str, np.ndarray]:
        """Run ``signature_name`` on rows or columns; returns {output name: numpy array}.

        Without ``validate``, ``dtypes`` ({feature: "DT_INT64"}) says how to encode each feature
        (default: from the signature metadata).
        """
        from tensorflow import make_ndarray

        columns = as_columns(inputs)
        if validate or dtypes is None:
            signature = pick_signature(self.signatures(version), signature_name)
            dtypes = dtypes or {name: spec.dtype for name, spec in signature.inputs.items()}
        if validate:
            columns, _ = validate_columns(signature, columns, self.max_batch_size)
        request = self._predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, version, signature_name)
        for name, values in columns.items():
            if name not in dtypes:
                raise InvalidRequestError(f"no dtype known for feature {name!r}")
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
            request.inputs[name].CopyFrom(tensor_proto(values, dtypes[name]))
        response = self._call(self._prediction.Predict, request)
        self.last_model_version = response.model_spec.version.value
        return {name: make_ndarray(proto) for name, proto in response.outputs.items()}

    def predict_raw(self, rows: Rows | Columns, version: Optional[int] = None) -> List[float]:
        """Click probabilities of raw rows through the ``predict_raw`` signature (docs/contracts.md)."""
        return self.predict(rows, "predict_raw", version)["probability"].tolist()

    def predict_examples(self, examples: Sequence[bytes], version: Optional[int] = None) -> List[float]:
        """Click probabilities of serialized tf.Examples through ``serving_default``."""
        return self.predict({"examples": list(examples)}, "serving_default", version)["probability"].tolist()
