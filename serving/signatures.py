"""Signature metadata of a served model and request validation against it.

The clients and the local server share this code: a request is checked against the model's
``SignatureDef`` (feature names, dtypes, shapes, batch size) and a bad one raises
``InvalidRequestError`` with one line naming the feature and the row, before anything is sent or run.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

DEFAULT_SIGNATURE = "serving_default"
INT_DTYPES = {"DT_INT64": (-(1 << 63), (1 << 63) - 1), "DT_INT32": (-(1 << 31), (1 << 31) - 1)}
FLOAT_DTYPES = ("DT_FLOAT", "DT_DOUBLE", "DT_HALF")
_DTYPE_ENUM = {"DT_FLOAT": 1, "DT_DOUBLE": 2, "DT_INT32": 3, "DT_STRING": 7, "DT_INT64": 9,
               "DT_BOOL": 10, "DT_HALF": 19}
DTYPE_NAMES = {v: k for k, v in _DTYPE_ENUM.items()}


class InvalidRequestError(ValueError):
    """A request that the model cannot take; the message says which feature/row and why."""


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # TF Serving's enum name, e.g. "DT_INT64"
    shape: Optional[Tuple[int, ...]]  # -1 = any size; None = unknown rank

    @property
    def dtype_enum(self) -> int:
        return _DTYPE_ENUM[self.dtype]


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    name: str
    inputs: Dict[str, TensorSpec]
    outputs: Dict[str, TensorSpec]


def _tensor_spec(name: str, info) -> TensorSpec:
    shape = None if info.tensor_shape.unknown_rank else tuple(int(d.size) for d in info.tensor_shape.dim)
    dtype = DTYPE_NAMES.get(info.dtype)
    if dtype is None:
        from tensorflow.core.framework import types_pb2
        dtype = types_pb2.DataType.Name(info.dtype)
    return TensorSpec(name, dtype, shape)


def signatures_from_proto(signature_def_map) -> Dict[str, SignatureSpec]:
    """SignatureSpecs from a ``{name: SignatureDef}`` proto map (SavedModel or GetModelMetadata).

    Signatures whose name starts with ``__`` (``__saved_model_init_op``) are not callable and skipped.
    """
    return {
        name: SignatureSpec(name, {k: _tensor_spec(k, v) for k, v in sig.inputs.items()},
                            {k: _tensor_spec(k, v) for k, v in sig.outputs.items()})
        for name, sig in signature_def_map.items() if not name.startswith("__")
    }


def signatures_from_metadata_json(metadata: Mapping[str, Any]) -> Dict[str, SignatureSpec]:
    """SignatureSpecs from TF Serving's REST ``GET /v1/models/<name>/metadata`` answer."""
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    try:
        defs = metadata["metadata"]["signature_def"]
    except (KeyError, TypeError):
        raise InvalidRequestError("model metadata has no metadata.signature_def") from None
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    json_format.ParseDict(defs, signature_map, ignore_unknown_fields=True)
    return signatures_from_proto(signature_map.signature_def)


def pick_signature(signatures: Mapping[str, SignatureSpec], name: Optional[str]) -> SignatureSpec:
    name = name or DEFAULT_SIGNATURE
    if name not in signatures:
        raise InvalidRequestError(f"signature {name!r} not in the model (has: {', '.join(sorted(signatures))})")
    return signatures[name]


def rows_to_columns(rows: Sequence[Mapping[str, Any]]) -> Dict[str, List[Any]]:
    """``[{feature: value}, ...]`` -> ``{feature: [values]}``; every row must name the same features."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InvalidRequestError(f"rows must be a list of objects, got {type(rows).__name__}")
    if not rows:
        raise InvalidRequestError("empty batch: no rows")
    columns: Dict[str, List[Any]] = {}
    first_keys = None
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise InvalidRequestError(f"row {i} must be an object of features, got {type(row).__name__}")
        keys = set(row)
        if first_keys is None:
            first_keys = keys
        elif keys != first_keys:
            diff = sorted(keys ^ first_keys)
            raise InvalidRequestError(f"row {i} names different features than row 0 (differing: {', '.join(diff)})")
        for k, v in row.items():
            columns.setdefault(k, []).append(v)
    return columns


def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def decode_b64(value, where: str) -> bytes:
    try:
        return base64.b64decode(value["b64"], validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise InvalidRequestError(f"{where}: 'b64' value is not valid base64") from None


def check_scalar(value, dtype: str, where: str, json_strings: bool = False):
    """One element of a tensor of ``dtype``; returns it converted (b64 objects -> bytes)."""
    import numpy as np

    if dtype in INT_DTYPES:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise InvalidRequestError(f"{where}: expected an integer ({dtype}), got {_type_name(value)} {value!r:.40}")
        low, high = INT_DTYPES[dtype]
        if not low <= int(value) <= high:
            raise InvalidRequestError(f"{where}: {value} is out of range for {dtype}")
        return int(value)
    if dtype in FLOAT_DTYPES:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise InvalidRequestError(f"{where}: expected a number ({dtype}), got {_type_name(value)} {value!r:.40}")
        return float(value)
    if dtype == "DT_STRING":
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, bytes) and not json_strings:
            return value
        if json_strings and isinstance(value, Mapping) and set(value) == {"b64"}:
            return decode_b64(value, where)
        raise InvalidRequestError(f"{where}: expected a string (DT_STRING), got {_type_name(value)} {value!r:.40}")
    if dtype == "DT_BOOL":
        if not isinstance(value, (bool, np.bool_)):
            raise InvalidRequestError(f"{where}: expected true/false (DT_BOOL), got {_type_name(value)}")
        return bool(value)
    raise InvalidRequestError(f"{where}: inputs of type {dtype} are not supported")


def _check_element(value, dims: Tuple[int, ...], dtype: str, where: str, json_strings: bool):
    """Check one row of a feature (a scalar for [batch] inputs, nested lists for [batch, d, ...])."""
    if not dims:
        if isinstance(value, (list, tuple)):
            raise InvalidRequestError(f"{where}: expected one {dtype} value per row, got a list")
        return check_scalar(value, dtype, where, json_strings)
    if not isinstance(value, (list, tuple)):
        raise InvalidRequestError(f"{where}: expected a list of {dims[0] if dims[0] >= 0 else 'n'} values, "
                                  f"got {_type_name(value)}")
    if dims[0] >= 0 and len(value) != dims[0]:
        raise InvalidRequestError(f"{where}: expected {dims[0]} values, got {len(value)}")
    return [_check_element(v, dims[1:], dtype, f"{where}[{j}]", json_strings) for j, v in enumerate(value)]


def _shape_of(value) -> Tuple[int, ...]:
    shape = []
    while isinstance(value, (list, tuple)):
        shape.append(len(value))
        value = value[0] if value else None
    return tuple(shape)


def validate_columns(signature: SignatureSpec, columns: Mapping[str, Any], max_batch_size: Optional[int] = None,
                     json_strings: bool = False) -> Tuple[Dict[str, list], int]:
    """Check ``{feature: [value per row]}`` against ``signature``; returns (converted columns, batch size).

    ``json_strings``: string values may be ``{"b64": ...}`` objects (TF Serving's REST encoding of
    bytes) and Python ``bytes`` are not expected (they cannot come from JSON).
    """
    if not isinstance(columns, Mapping):
        raise InvalidRequestError(f"inputs must be an object of features, got {_type_name(columns)}")
    unknown = sorted(set(columns) - set(signature.inputs))
    if unknown:
        raise InvalidRequestError(
            f"unknown feature{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown[:5]))} for signature "
            f"{signature.name!r} (expects: {', '.join(sorted(signature.inputs))})")
    missing = sorted(set(signature.inputs) - set(columns))
    if missing:
        raise InvalidRequestError(f"missing feature{'s' if len(missing) > 1 else ''} "
                                  f"{', '.join(map(repr, missing[:5]))}{' ...' if len(missing) > 5 else ''} "
                                  f"for signature {signature.name!r}")
    # Counts first (cheap), so that an oversized or ragged batch is refused before any value is read.
    lengths = {}
    for name in sorted(signature.inputs):
        values = columns[name]
        if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (list, tuple)):
            raise InvalidRequestError(f"feature {name!r}: expected a list with one value per row, "
                                      f"got {_type_name(values)}")
        lengths[name] = len(values)
    sizes = sorted(set(lengths.values()))
    if len(sizes) > 1:
        by_size = {}
        for name, n in lengths.items():
            by_size.setdefault(n, name)
        detail = ", ".join(f"{by_size[n]!r} has {n}" for n in sizes[:3])
        raise InvalidRequestError(f"ragged batch: features have different numbers of rows ({detail})")
    batch = sizes[0] if sizes else 0
    if batch == 0:
        raise InvalidRequestError("empty batch: no rows")
    if max_batch_size is not None and batch > max_batch_size:
        raise InvalidRequestError(f"batch of {batch} rows is larger than the maximum of {max_batch_size}")
    converted = {}
    for name in sorted(signature.inputs):
        spec = signature.inputs[name]
        values = columns[name]
        if spec.shape is not None and len(spec.shape) == 0:
            raise InvalidRequestError(f"feature {name!r} is a scalar input; batching it is not supported")
        dims = tuple(spec.shape[1:]) if spec.shape is not None else tuple(-1 for _ in _shape_of(values[0]))
        rows = [_check_element(v, dims, spec.dtype, f"feature {name!r} row {i}", json_strings)
                for i, v in enumerate(values)]
        if any(d < 0 for d in dims) and len({_shape_of(r) for r in rows}) > 1:
            raise InvalidRequestError(f"feature {name!r}: rows have different shapes (ragged)")
        converted[name] = rows
    return converted, batch
