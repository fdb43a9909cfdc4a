"""The Open Inference Protocol's binary tensor data extension on REST, both ways.

A request that carries the `Inference-Header-Content-Length: N` header has a body of N bytes of JSON (the
ordinary V2 request, whose binary inputs say `"parameters": {"binary_data_size": size}` instead of `data`)
followed by the raw tensors, one after the other in the order of the inputs that declared a size:
little-endian numbers of the tensor's datatype, BOOL as one byte each, BYTES as elements each led by a 4-byte
little-endian length. A response is built the same way when the request asks for binary outputs
(`parameters.binary_data_output`, or an output's `parameters.binary_data`), and says its JSON length in the
same header. This is what KServe's `InferenceRESTClient` and Triton's `tritonclient.http` send and read.

Every way the framing can be wrong (a header length past the body, a tensor shorter than its shape, a BYTES
element running past its end, sizes that do not add up to the body) is a RequestError naming it: HTTP 400.
Decoded tensors are numpy arrays (numbers) or lists of bytes (BYTES), which the V2 parser takes like JSON data.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from serving.requests import RequestError

HEADER = b"inference-header-content-length"  # as ASGI servers give header names: lower case
DTYPES = {
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
_LENGTH = struct.Struct("<I")


def split(body: bytes, header_length: bytes) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part of a body, by the request's Inference-Header-Content-Length."""
    text = header_length.decode("latin-1").strip()
    if not text.isdigit():
        raise RequestError(f"Inference-Header-Content-Length must be a non-negative integer, got {text[:20]!r}")
    n = int(text)
    if n > len(body):
        raise RequestError(f"Inference-Header-Content-Length {n} is past the end of the {len(body)}-byte body")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def attach_inputs(document: Any, tail: memoryview) -> None:
    """Give each input that declared `binary_data_size` its decoded tensor as `data`, in place.

    Inputs are taken in order, each from where the previous one ended; the sizes must use the binary part
    exactly. Anything not shaped like a V2 request is left for the V2 parser to name.
    """
    inputs = document.get("inputs") if isinstance(document, dict) else None
    offset = 0
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else ()):
        if not isinstance(tensor, dict) or tensor.get("parameters") is None:
            continue
        parameters = tensor["parameters"]
        name = tensor.get("name", f"inputs[{i}]")
        if not isinstance(parameters, dict):
            raise RequestError(f"input {name!r}: 'parameters' must be an object, got {type(parameters).__name__}")
        size = parameters.get("binary_data_size")
        if size is None:
            continue
        if type(size) is not int or size < 0:
            raise RequestError(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r:.40}")
        if "data" in tensor:
            raise RequestError(f"input {name!r} has both 'data' and binary_data_size: send one or the other")
        left = len(tail) - offset
        if size > left:
            raise RequestError(f"input {name!r}: binary_data_size {size} runs past the end of the body ({left} bytes of binary data left)")
        tensor["data"] = decode(name, tensor.get("datatype"), tensor.get("shape"), tail[offset : offset + size])
        offset += size
    if offset != len(tail):
        raise RequestError(
            f"the body has {len(tail) - offset} bytes of binary data after the last binary input: "
            f"the inputs' binary_data_size add up to {offset}, the body carries {len(tail)} "
            "after its JSON header (Inference-Header-Content-Length)"
        )


def decode(name: str, datatype: Any, shape: Any, raw: memoryview) -> Any:
    """One tensor's raw bytes as a flat numpy array (numbers, BOOL) or list of bytes (BYTES)."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r:.60}")
    count = math.prod(shape)
    if datatype == "BYTES":
        elements = _bytes_elements(name, raw)
        if len(elements) != count:
            raise RequestError(
                f"input {name!r} declares shape {shape} ({count} elements) but its binary data holds {len(elements)} BYTES elements"
            )
        return elements
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise RequestError(
            f"input {name!r}: datatype {datatype!r:.20} cannot be sent as binary data here; use one of {sorted(DTYPES)} or BYTES"
        )
    want = count * dtype.itemsize
    if len(raw) != want:
        shorter = "shorter" if len(raw) < want else "longer"
        raise RequestError(
            f"input {name!r}: binary data of {len(raw)} bytes is {shorter} than its shape {shape} of {datatype} ({want} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype)


def _bytes_elements(name: str, raw: memoryview) -> list[bytes]:
    buf = bytes(raw)
    end = len(buf)
    unpack = _LENGTH.unpack_from
    out: list[bytes] = []
    append = out.append
    pos = 0
    while pos < end:
        if pos + 4 > end:
            raise RequestError(f"input {name!r}: BYTES element {len(out)} has a cut-off length prefix ({end - pos} of 4 bytes)")
        (length,) = unpack(buf, pos)
        pos += 4
        stop = pos + length
        if stop > end:
            raise RequestError(
                f"input {name!r}: BYTES element {len(out)} of {length} bytes runs past the end of "
                f"the tensor's data ({end - pos} bytes left)"
            )
        append(buf[pos:stop])
        pos = stop
    return out


def encode_bytes(values: list[bytes]) -> bytes:
    """BYTES elements in the extension's form: each led by its 4-byte little-endian length."""
    return b"".join(_LENGTH.pack(len(v)) + v for v in values)


def body(header: bytes, raw: list[bytes]) -> tuple[bytes, int]:
    """A binary response: the JSON header, then the raw outputs; and the header's length."""
    return b"".join((header, *raw)), len(header)
