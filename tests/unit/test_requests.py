import math

import numpy as np
import pytest

from serving.requests import (
    RequestError,
    Schema,
    columns_from_rows,
    columns_from_v2_inputs,
    fill_lookups,
    parse_v1,
    rows_for_log,
)
from serving.v2 import parse_v2

NUM, CAT = ("amount", "hour"), ("channel",)
SCHEMA = Schema(NUM, CAT)
KEYED = Schema(NUM, CAT, entity="account")


def plain(columns):
    return {k: [None if isinstance(v, float) and math.isnan(v) else v for v in list(c)] for k, c in columns.items()}


def test_v1_rows_as_objects_or_lists():
    batch = columns_from_rows([{"amount": 5, "hour": 1.5, "channel": "pos"}, [7.0, None, None]], SCHEMA)
    assert plain(batch.columns) == {"amount": [5.0, 7.0], "hour": [1.5, None], "channel": ["pos", None]}
    assert batch.rows == 2 and batch.entities is None and batch.lookup_rows == []


def test_v1_large_homogeneous_batches_match_the_row_by_row_walk():
    rows = [{"amount": float(i), "hour": None if i % 7 == 0 else i % 24, "channel": "atm" if i % 3 else None} for i in range(500)]
    fast = columns_from_rows(rows, SCHEMA)
    slow = columns_from_rows([rows[0] | {}, *rows[1:]] + [[1.0, 2.0, "pos"]], SCHEMA)  # a list row forces the walk
    assert plain(fast.columns) == {k: v[:500] for k, v in plain(slow.columns).items()}


@pytest.mark.parametrize(
    "instances, message",
    [
        ([], "non-empty list"),
        ("rows", "non-empty list"),
        ([{"amount": 1, "hour": 1}], "missing feature"),
        ([{"amount": 1, "hour": 1, "channel": "x", "extra": 2}], "unknown feature"),
        ([{"amount": "1", "hour": 1, "channel": "x"}], "'amount' \\(row 0\\) must be a number"),
        ([{"amount": True, "hour": 1, "channel": "x"}], "must be a number"),
        ([{"amount": math.inf, "hour": 1, "channel": "x"}], "finite"),
        ([{"amount": math.nan, "hour": 1, "channel": "x"}], "finite"),
        ([{"amount": 10**400, "hour": 1, "channel": "x"}], "out of range"),
        ([{"amount": [1], "hour": 1, "channel": "x"}], "must be a number"),
        ([{"amount": 1, "hour": 1, "channel": [1]}], "must be a string"),
        ([[1, 2]], "has 2 values"),
        ([5], "must be an object"),
        ([{"amount": 1, "hour": 2, "channel": "x"}, {"amount": 1, "hour": "late", "channel": "x"}], "'hour' \\(row 1\\)"),
    ],
)
def test_v1_malformed_rows_name_the_problem(instances, message):
    with pytest.raises(RequestError, match=message):
        columns_from_rows(instances, SCHEMA)


@pytest.mark.parametrize(
    "body, message", [([1], "JSON object"), ({"rows": []}, "missing 'instances'"), ({"instances": {}}, "non-empty list")]
)
def test_v1_body_shape(body, message):
    with pytest.raises(RequestError, match=message):
        parse_v1(body, SCHEMA)


def test_v1_entity_keys_ask_for_a_lookup_or_ride_along():
    batch = columns_from_rows([{"account": "a1"}, {"account": "a2"}], KEYED)
    assert batch.lookup_rows == [0, 1] and batch.entities == ["a1", "a2"]
    mixed = columns_from_rows([{"account": "a1"}, {"account": "a2", "amount": 1, "hour": 2, "channel": "pos"}], KEYED)
    assert mixed.lookup_rows == [0] and mixed.entities == ["a1", "a2"]
    assert plain(mixed.columns)["amount"] == [None, 1.0]
    fill_lookups(mixed, {"amount": [3.0], "hour": [None], "channel": ["atm"]}, KEYED)
    assert plain(mixed.columns) == {"amount": [3.0, 1.0], "hour": [None, 2.0], "channel": ["atm", "pos"]}
    with pytest.raises(RequestError, match="entity key 'account' \\(row 0\\) must be a non-empty string"):
        columns_from_rows([{"account": 7}], KEYED)
    with pytest.raises(RequestError, match="missing feature.*or send only the entity key"):
        columns_from_rows([{"account": "a1", "amount": 1}], KEYED)
    with pytest.raises(RequestError, match="unknown feature"):
        columns_from_rows([{"account": "a1"}], SCHEMA)  # a model without an online store takes no keys


def tensor(name, shape, datatype, data):
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


def test_v2_one_tensor_per_feature():
    batch = columns_from_v2_inputs(
        [
            tensor("amount", [2], "FP64", [1, 2]),
            tensor("hour", [2, 1], "INT64", [[3], [4]]),
            tensor("channel", [2], "BYTES", ["pos", b"atm"]),
        ],
        SCHEMA,
    )
    assert plain(batch.columns) == {"amount": [1.0, 2.0], "hour": [3.0, 4.0], "channel": ["pos", "atm"]}
    flat = columns_from_v2_inputs(
        [tensor("amount", [2, 1], "FP32", [1.5, None]), tensor("hour", [2], "FP64", [0, 1]), tensor("channel", [2], "BYTES", ["a", None])],
        SCHEMA,
    )
    assert plain(flat.columns)["amount"] == [1.5, None]


def test_v2_entity_only_requests_a_lookup():
    batch = columns_from_v2_inputs([tensor("account", [2], "BYTES", ["a1", b"a2"])], KEYED)
    assert batch.entities == ["a1", "a2"] and batch.lookup_rows == [0, 1]
    with pytest.raises(RequestError, match="entity key and must be BYTES"):
        columns_from_v2_inputs([tensor("account", [1], "INT64", [1])], KEYED)


GOOD = [tensor("amount", [1], "FP64", [1]), tensor("hour", [1], "FP64", [1]), tensor("channel", [1], "BYTES", ["a"])]


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([tensor("amount", [1], "FP64", [1])], "missing input"),
        ([tensor("amount", [2], "FP64", [1]), *GOOD[1:]], "declares shape \\[2\\] but has 1 values"),
        ([tensor("amount", [1], "BYTES", ["1"]), *GOOD[1:]], "number type"),
        ([*GOOD[:2], tensor("channel", [1], "FP64", [1])], "must be BYTES"),
        ([tensor("amount", [1, 2], "FP64", [1, 2]), *GOOD[1:]], "shape \\[n\\] or \\[n, 1\\]"),
        ([tensor("amount", "1", "FP64", [1]), *GOOD[1:]], "'shape' must be a list"),
        ([tensor("amount", [2], "FP64", [1, 2]), *GOOD[1:]], "has 1 rows, other inputs have 2"),
        ([tensor("amount", [2, 1], "FP64", [[1], [2, 3]]), *GOOD[1:]], "ragged"),
        ([tensor("amount", [1], "FP64", [[1]]), *GOOD[1:]], "ragged or nested"),
        ([tensor("amount", [1], "FP64", ["1"]), *GOOD[1:]], "'amount' \\(row 0\\) must be a number"),
        ([tensor("amount", [1], "FP64", [float("nan")]), *GOOD[1:]], "finite"),
        ([tensor("amount", [1], "INT64", [1.5]), *GOOD[1:]], "INT64 but holds float"),
        ([tensor("amount", [0], "FP64", []), tensor("hour", [0], "FP64", []), tensor("channel", [0], "BYTES", [])], "no rows"),
        ([*GOOD, tensor("zzz", [1], "FP64", [1])], "unknown input"),
        ([*GOOD, GOOD[0]], "given twice"),
    ],
)
def test_v2_malformed_requests_name_the_problem(inputs, message):
    with pytest.raises(RequestError, match=message):
        columns_from_v2_inputs(inputs, SCHEMA)


@pytest.mark.parametrize(
    "body, message",
    [
        ([GOOD], "JSON object with 'inputs'"),
        ({"inputs": []}, "non-empty list of tensors"),
        ({"inputs": [5]}, "inputs\\[0\\] must be an object"),
        ({"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64"}]}, "has no 'data'"),
        ({"inputs": [{"name": "amount", "shape": [1], "datatype": "FP64", "data": "1"}]}, "'data' must be a list"),
        ({"id": 5, "inputs": GOOD}, "'id' must be a string"),
        ({"inputs": GOOD, "outputs": [{"name": "logits"}]}, "unknown output"),
    ],
)
def test_v2_body_shape(body, message):
    with pytest.raises(RequestError, match=message):
        parse_v2(body, SCHEMA)


def test_v2_outputs_and_id_are_kept():
    batch = parse_v2({"id": "r1", "inputs": GOOD, "outputs": [{"name": "label"}]}, SCHEMA)
    assert batch.request_id == "r1" and batch.outputs == ("label",)


def test_large_v2_columns_are_arrays_with_nan_for_null():
    n = 300
    batch = columns_from_v2_inputs(
        [
            tensor("amount", [n], "FP64", [float(i) for i in range(n)]),
            tensor("hour", [n], "FP64", [None if i % 2 else 1 for i in range(n)]),
            tensor("channel", [n], "BYTES", ["pos"] * n),
        ],
        SCHEMA,
    )
    assert isinstance(batch.columns["amount"], np.ndarray) and np.isnan(batch.columns["hour"][1])
    rows = rows_for_log(batch, [*NUM, *CAT], NUM)
    assert rows[1] == {"amount": 1.0, "hour": None, "channel": "pos"}  # JSON has no NaN: null in the log
