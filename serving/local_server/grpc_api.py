"""TF Serving's gRPC API over a ModelRepository: PredictionService (Predict, GetModelMetadata) and
ModelService (GetModelStatus), with TF Serving's protos."""
from __future__ import annotations

import time
from concurrent import futures
from typing import Dict, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_service_pb2_grpc,
                                     predict_pb2, prediction_service_pb2_grpc)

from serving.local_server.errors import InvalidRequestError, answer_error, error_status
from serving.local_server.defaults import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_BODY_BYTES
from serving.local_server.limits import RequestLimits
from serving.local_server.metrics import Metrics
from serving.local_server.repository import ModelRepository, ServedVersion
from serving.signatures import DTYPE_NAMES, SignatureSpec, pick_signature, validate_columns


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
