"""The binary tensor data extension (serving/binary.py) and the V2 documents around it (serving/v2.py).

Bodies are built here by hand with numpy and struct, not with the codec under test.
"""

import json
import math
import struct

import numpy as np
import pytest

from serving import binary
from serving.requests import RequestError, Schema
from serving.v2 import parse_v2, requested_outputs, response_body

SCHEMA = Schema(("amount", "hour"), ("channel",))


def framed(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def request(tensors: list[tuple[dict, bytes | None]], **extra) -> tuple[bytes, bytes]:
    """A binary request: each (spec, raw) input gets binary_data_size when raw is given. Returns body, header."""
    specs = []
    for spec, raw in tensors:
        spec = dict(spec)
        if raw is not None:
            spec["parameters"] = {"binary_data_size": len(raw)}
        specs.append(spec)
    head = json.dumps({"inputs": specs, **extra}).encode()
    return head + b"".join(raw for _, raw in tensors if raw is not None), str(len(head)).encode()


def decode(body: bytes, header: bytes) -> dict:
    head, tail = binary.split(body, header)
    document = json.loads(head)
    binary.attach_inputs(document, tail)
    return document


@pytest.mark.parametrize(
    "datatype, values",
    [
        ("FP32", [1.5, -2.25, 3.0]),
        ("FP64", [0.1, 1e300, -0.0]),
        ("FP16", [0.5, 2.0, -1.0]),
        ("INT8", [-128, 0, 127]),
        ("INT16", [-3, 4, 5]),
        ("INT32", [-(2**31), 7, 2**31 - 1]),
        ("INT64", [-(2**63), 7, 2**63 - 1]),
        ("UINT8", [0, 1, 255]),
        ("UINT32", [0, 1, 2**32 - 1]),
        ("UINT64", [0, 1, 2**64 - 1]),
        ("BOOL", [True, False, True]),
    ],
)
def test_numbers_and_bool_decode_little_endian_whatever_the_type(datatype, values):
    raw = np.asarray(values, dtype=binary.DTYPES[datatype]).tobytes()
    assert binary.DTYPES[datatype].byteorder in "<|="  # little-endian (or single byte) by definition
    body, header = request([({"name": "x", "shape": [3], "datatype": datatype}, raw)])
    data = decode(body, header)["inputs"][0]["data"]
    assert data.tolist() == values


def test_bytes_elements_and_mixed_json_and_binary_inputs_in_order():
    body, header = request(
        [
            ({"name": "amount", "shape": [3, 1], "datatype": "FP64"}, np.asarray([1.0, 2.0, 3.0], "<f8").tobytes()),
            ({"name": "hour", "shape": [3], "datatype": "INT64", "data": [4, 5, 6]}, None),
            ({"name": "channel", "shape": [3], "datatype": "BYTES"}, framed([b"pos", b"", "caf\u00e9".encode()])),
        ]
    )
    document = decode(body, header)
    assert document["inputs"][2]["data"] == [b"pos", b"", "caf\u00e9".encode()]
    batch = parse_v2(document, SCHEMA)
    assert batch.columns["amount"].tolist() == [1.0, 2.0, 3.0] and batch.columns["hour"] == [4.0, 5.0, 6.0]
    assert batch.columns["channel"] == ["pos", "", "caf\u00e9"] and batch.rows == 3


def test_nan_in_a_binary_tensor_is_a_missing_value_and_infinity_is_refused():
    def batch(amounts):
        body, header = request(
            [
                ({"name": "amount", "shape": [2], "datatype": "FP32"}, np.asarray(amounts, "<f4").tobytes()),
                ({"name": "hour", "shape": [2], "datatype": "INT32"}, np.asarray([1, 2], "<i4").tobytes()),
                ({"name": "channel", "shape": [2], "datatype": "BYTES"}, framed([b"a", b"b"])),
            ]
        )
        return parse_v2(decode(body, header), SCHEMA)

    got = batch([1.5, math.nan])
    assert got.columns["amount"][0] == 1.5 and math.isnan(got.columns["amount"][1])
    assert got.columns["hour"].dtype == np.float64 and got.columns["hour"].tolist() == [1.0, 2.0]
    with pytest.raises(RequestError, match=r"feature 'amount' \(row 1\) must be finite, got inf"):
        batch([1.5, math.inf])


def test_a_bool_or_text_tensor_for_a_number_and_numbers_for_text_are_refused():
    base = [
        ({"name": "hour", "shape": [1], "datatype": "FP64"}, np.asarray([1.0], "<f8").tobytes()),
        ({"name": "channel", "shape": [1], "datatype": "BYTES"}, framed([b"a"])),
    ]
    body, header = request([({"name": "amount", "shape": [1], "datatype": "BOOL"}, b"\x01"), *base])
    with pytest.raises(RequestError, match="must be a number type"):
        parse_v2(decode(body, header), SCHEMA)
    body, header = request(
        [
            ({"name": "amount", "shape": [1], "datatype": "FP64"}, np.asarray([1.0], "<f8").tobytes()),
            base[0],
            (base[1][0] | {"datatype": "FP32"}, b"\0" * 4),
        ]
    )
    with pytest.raises(RequestError, match="'channel' is categorical and must be BYTES, got FP32"):
        parse_v2(decode(body, header), SCHEMA)
    body, header = request(
        [
            ({"name": "amount", "shape": [1], "datatype": "FP64"}, np.asarray([1.0], "<f8").tobytes()),
            base[0],
            (base[1][0], framed([b"\xff\xfe"])),
        ]
    )
    with pytest.raises(RequestError, match="'channel' \\(row 0\\) is not valid UTF-8"):
        parse_v2(decode(body, header), SCHEMA)


@pytest.mark.parametrize(
    "header, message",
    [
        (b"abc", "must be a non-negative integer, got 'abc'"),
        (b"-1", "must be a non-negative integer"),
        (b"", "must be a non-negative integer"),
        (b"99999", "Inference-Header-Content-Length 99999 is past the end of the"),
    ],
)
def test_a_bad_header_length_is_named(header, message):
    body, _ = request([({"name": "x", "shape": [1], "datatype": "FP64"}, b"\0" * 8)])
    with pytest.raises(RequestError, match=message):
        binary.split(body, header)


@pytest.mark.parametrize(
    "tensors, tail, message",
    [
        # a tensor shorter (or longer) than its shape
        (
            [({"name": "x", "shape": [3], "datatype": "FP64"}, b"\0" * 16)],
            b"",
            r"input 'x': binary data of 16 bytes is shorter than its shape \[3\] of FP64 \(24 bytes\)",
        ),
        ([({"name": "x", "shape": [1], "datatype": "INT32"}, b"\0" * 8)], b"", "is longer than its shape"),
        # BYTES: an element running past the end, a cut-off length prefix, fewer elements than the shape
        (
            [({"name": "c", "shape": [1], "datatype": "BYTES"}, struct.pack("<I", 50) + b"abc")],
            b"",
            "BYTES element 0 of 50 bytes runs past the end",
        ),
        (
            [({"name": "c", "shape": [2], "datatype": "BYTES"}, framed([b"a"]) + b"\x01\x00")],
            b"",
            "BYTES element 1 has a cut-off length prefix",
        ),
        (
            [({"name": "c", "shape": [3], "datatype": "BYTES"}, framed([b"a", b"b"]))],
            b"",
            r"declares shape \[3\] \(3 elements\) but its binary data holds 2",
        ),
        # sizes that do not add up to the binary part
        ([({"name": "x", "shape": [1], "datatype": "FP64"}, b"\0" * 8)], b"\0" * 3, "3 bytes of binary data after the last binary input"),
        # shapes and types the framing cannot read
        ([({"name": "x", "shape": [-1], "datatype": "FP64"}, b"\0" * 8)], b"", "'shape' must be a list of non-negative integers"),
        ([({"name": "x", "shape": [1], "datatype": "BF16"}, b"\0" * 2)], b"", "datatype 'BF16' cannot be sent as binary data"),
    ],
)
def test_malformed_binary_data_is_named(tensors, tail, message):
    body, header = request(tensors)
    with pytest.raises(RequestError, match=message):
        decode(body + tail, header)


def test_sizes_past_the_body_and_conflicting_declarations_are_named():
    def attach(spec):
        binary.attach_inputs({"inputs": [spec]}, memoryview(b"\0" * 8))

    with pytest.raises(RequestError, match="binary_data_size 16 runs past the end of the body \\(8 bytes of binary data left\\)"):
        attach({"name": "x", "shape": [2], "datatype": "FP64", "parameters": {"binary_data_size": 16}})
    with pytest.raises(RequestError, match="has both 'data' and binary_data_size"):
        attach({"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0], "parameters": {"binary_data_size": 8}})
    with pytest.raises(RequestError, match="binary_data_size must be a non-negative integer"):
        attach({"name": "x", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": "8"}})
    with pytest.raises(RequestError, match="'parameters' must be an object"):
        attach({"name": "x", "shape": [1], "datatype": "FP64", "parameters": [8]})
    with pytest.raises(RequestError, match="8 bytes of binary data after the last binary input"):
        binary.attach_inputs({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1.0]}]}, memoryview(b"\0" * 8))


def test_requested_outputs_follow_triton_binary_flags():
    assert requested_outputs(None, None) == (("probability", "label"), frozenset())
    assert requested_outputs(None, {"binary_data_output": True}) == (("probability", "label"), frozenset({"probability", "label"}))
    outputs = [{"name": "label", "parameters": {"binary_data": False}}, {"name": "probability"}]
    assert requested_outputs(outputs, {"binary_data_output": True}) == (("label", "probability"), frozenset({"probability"}))
    assert requested_outputs([{"name": "label", "parameters": {"binary_data": True}}], None) == (("label",), frozenset({"label"}))
    with pytest.raises(RequestError, match="classification extension is not supported"):
        requested_outputs([{"name": "label", "parameters": {"classification": 2}}], None)
    with pytest.raises(RequestError, match="binary_data_output must be true or false"):
        requested_outputs(None, {"binary_data_output": "yes"})
    with pytest.raises(RequestError, match="'parameters' must be an object"):
        requested_outputs(None, [1])
    with pytest.raises(RequestError, match="unknown output"):
        requested_outputs([{"name": "score"}], None)


def test_binary_response_framing_round_trips():
    body, header = request(
        [
            ({"name": "amount", "shape": [2], "datatype": "FP64"}, np.asarray([1.0, 2.0], "<f8").tobytes()),
            ({"name": "hour", "shape": [2], "datatype": "FP64"}, np.asarray([3.0, 4.0], "<f8").tobytes()),
            ({"name": "channel", "shape": [2], "datatype": "BYTES"}, framed([b"a", b"b"])),
        ],
        id="r-9",
        outputs=[{"name": "label"}, {"name": "probability", "parameters": {"binary_data": True}}],
    )
    batch = parse_v2(decode(body, header), SCHEMA)
    probabilities, labels = np.array([0.25, 0.75]), np.array([0, 1], dtype=np.int64)
    payload, length = response_body("m", "v1", "fallback", batch, probabilities, labels)
    head = json.loads(payload[:length])
    assert head["id"] == "r-9" and head["model_name"] == "m" and head["model_version"] == "v1"
    assert head["outputs"][0] == {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 1]}
    assert head["outputs"][1] == {"name": "probability", "datatype": "FP64", "shape": [2], "parameters": {"binary_data_size": 16}}
    assert np.frombuffer(payload[length:], "<f8").tolist() == [0.25, 0.75] and len(payload) == length + 16
    batch.binary_outputs = frozenset()
    plain, none = response_body("m", "v1", "fallback", batch, probabilities, labels)
    assert none is None and json.loads(plain)["outputs"][1]["data"] == [0.25, 0.75]
