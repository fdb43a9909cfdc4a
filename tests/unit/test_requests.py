import math
from types import SimpleNamespace

import pytest

from serving.requests import RequestError, columns_from_instances, columns_from_v2

NUM, CAT = ["amount", "hour"], ["channel"]


def test_v1_rows_as_objects_or_lists():
    cols = columns_from_instances([{"amount": 5, "hour": 1.5, "channel": "pos"}, [7.0, None, None]], NUM, CAT)
    assert cols == {"amount": [5.0, 7.0], "hour": [1.5, None], "channel": ["pos", None]}


@pytest.mark.parametrize(
    "instances, message",
    [
        ([], "non-empty list"),
        ("rows", "non-empty list"),
        ([{"amount": 1, "hour": 1}], "missing feature"),
        ([{"amount": 1, "hour": 1, "channel": "x", "extra": 2}], "unknown feature"),
        ([{"amount": "1", "hour": 1, "channel": "x"}], "must be a number"),
        ([{"amount": True, "hour": 1, "channel": "x"}], "must be a number"),
        ([{"amount": math.inf, "hour": 1, "channel": "x"}], "finite"),
        ([{"amount": math.nan, "hour": 1, "channel": "x"}], "finite"),
        ([{"amount": 1, "hour": 1, "channel": [1]}], "must be a string"),
        ([[1, 2]], "has 2 values"),
        ([5], "must be an object"),
    ],
)
def test_v1_malformed_rows_name_the_problem(instances, message):
    with pytest.raises(RequestError, match=message):
        columns_from_instances(instances, NUM, CAT)


def tensor(name, shape, datatype, data):
    return SimpleNamespace(name=name, shape=shape, datatype=datatype, data=data)


def test_v2_one_tensor_per_feature():
    cols = columns_from_v2([tensor("amount", [2], "FP64", [1, 2]), tensor("hour", [2, 1], "INT64", [[3], [4]]),
                            tensor("channel", [2], "BYTES", ["pos", b"atm"])], NUM, CAT)
    assert cols == {"amount": [1.0, 2.0], "hour": [3.0, 4.0], "channel": ["pos", "atm"]}


@pytest.mark.parametrize(
    "inputs, message",
    [
        ([tensor("amount", [1], "FP64", [1])], "missing input"),
        ([tensor("amount", [2], "FP64", [1]), tensor("hour", [1], "FP64", [1]), tensor("channel", [1], "BYTES", ["a"])], "declares shape"),
        ([tensor("amount", [1], "BYTES", ["1"]), tensor("hour", [1], "FP64", [1]), tensor("channel", [1], "BYTES", ["a"])], "number type"),
        ([tensor("amount", [1], "FP64", [1]), tensor("hour", [1], "FP64", [1]), tensor("channel", [1], "FP64", [1])], "must be BYTES"),
        ([tensor("amount", [1, 2], "FP64", [1, 2]), tensor("hour", [1], "FP64", [1]), tensor("channel", [1], "BYTES", ["a"])], "shape"),
        ([tensor("amount", [2], "FP64", [1, 2]), tensor("hour", [1], "FP64", [1]), tensor("channel", [1], "BYTES", ["a"])], "rows"),
        ([tensor("zzz", [1], "FP64", [1])], "unknown input"),
    ],
)
def test_v2_malformed_requests_name_the_problem(inputs, message):
    with pytest.raises(RequestError, match=message):
        columns_from_v2(inputs, NUM, CAT)
