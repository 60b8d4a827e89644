"""numpy arrays <-> KServe v2 tensors, for the unary models (embeddings, scores, transcription).

The token stream of the LLM packs its few scalars through :mod:`gateway.engine.contract`; the
models here exchange whole arrays, so they go as ``raw_input_contents`` straight from numpy's
buffers (little-endian), and come back through ``np.frombuffer``: no per-element Python.
BYTES tensors (Triton's TYPE_STRING) are each element's 4-byte little-endian length, then its bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import NDArray
from tritonclient.grpc import service_pb2

# KServe datatype <-> numpy dtype (little-endian, as the wire is)
_DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype("?"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_KINDS = {dtype.kind + str(dtype.itemsize): name for name, dtype in _DTYPES.items()}

Tensors = Mapping[str, NDArray[np.generic]]


class TensorError(ValueError):
    """A response whose tensors cannot be read as declared."""


def datatype_of(array: NDArray[np.generic]) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    name = _KINDS.get(array.dtype.kind + str(array.dtype.itemsize))
    if name is None:
        raise TypeError(f"no KServe datatype for numpy {array.dtype}")
    return name


def _pack_bytes(array: NDArray[np.generic]) -> bytes:
    parts: list[bytes] = []
    for item in array.reshape(-1).tolist():
        data = item.encode() if isinstance(item, str) else bytes(item)
        parts.append(struct.pack("<I", len(data)))
        parts.append(data)
    return b"".join(parts)


def _unpack_bytes(raw: bytes, count: int) -> NDArray[np.object_]:
    items: list[bytes] = []
    at = 0
    for _ in range(count):
        if at + 4 > len(raw):
            raise TensorError("a BYTES tensor ends inside an element's length")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        items.append(raw[at : at + size])
        at += size
    out = np.empty(count, dtype=object)
    out[:] = items
    return out


def infer_request(
    model: str, request_id: str, inputs: Tensors, outputs: Iterable[str] = ()
) -> service_pb2.ModelInferRequest:
    """A ModelInferRequest carrying ``inputs`` as raw contents, asking for ``outputs`` (all if none)."""
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, array in inputs.items():
        tensor = request.inputs.add()
        tensor.name = name
        tensor.datatype = datatype_of(array)
        tensor.shape.extend(array.shape)
        if tensor.datatype == "BYTES":
            request.raw_input_contents.append(_pack_bytes(array))
        else:
            request.raw_input_contents.append(np.ascontiguousarray(array, dtype=_DTYPES[tensor.datatype]).tobytes())
    for name in outputs:
        request.outputs.add().name = name
    return request


def response_tensors(response: service_pb2.ModelInferResponse) -> dict[str, NDArray[np.generic]]:
    """Every output of a response as an array of its declared shape."""
    if len(response.raw_output_contents) != len(response.outputs):
        raise TensorError("the response's raw contents do not match its outputs")
    out: dict[str, NDArray[np.generic]] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        shape = tuple(int(d) for d in tensor.shape)
        count = math.prod(shape)
        if tensor.datatype == "BYTES":
            out[tensor.name] = _unpack_bytes(raw, count).reshape(shape)
            continue
        dtype = _DTYPES.get(tensor.datatype)
        if dtype is None:
            raise TensorError(f"output {tensor.name} has an unknown datatype {tensor.datatype}")
        if len(raw) != count * dtype.itemsize:
            raise TensorError(f"output {tensor.name}: {len(raw)} bytes for shape {list(shape)} of {tensor.datatype}")
        out[tensor.name] = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return out
