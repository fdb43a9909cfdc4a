"""Turning V1 and V2 request payloads into feature columns, with a 400-worthy message for every mistake.

Pure functions over plain data, so each malformed case is a unit test and the server never answers 500
for a client's error.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


class RequestError(ValueError):
    """The request does not fit the model's signature; the message says how."""


def _check_numeric(feature: str, value: Any, row: int) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"feature {feature!r} (row {row}) must be a number or null, got {type(value).__name__} {value!r:.40}")
    if not math.isfinite(value):
        raise RequestError(f"feature {feature!r} (row {row}) must be finite, got {value}")
    return float(value)


def _check_categorical(feature: str, value: Any, row: int) -> str | None:
    if value is None:
        return None
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise RequestError(f"feature {feature!r} (row {row}) must be a string or null, got {type(value).__name__}")


def columns_from_instances(instances: Any, numeric: Sequence[str], categorical: Sequence[str]) -> dict[str, list[Any]]:
    """V1: {"instances": [{feature: value, ...}, ...]} or rows as lists in signature order."""
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list of rows")
    names = [*numeric, *categorical]
    kinds = {n: "numeric" for n in numeric} | {c: "categorical" for c in categorical}
    cols: dict[str, list[Any]] = {n: [] for n in names}
    for i, row in enumerate(instances):
        if isinstance(row, list):
            if len(row) != len(names):
                raise RequestError(f"row {i} has {len(row)} values; the model takes {len(names)}: {names}")
            row = dict(zip(names, row))
        if not isinstance(row, dict):
            raise RequestError(f"row {i} must be an object of feature values or a list in signature order")
        unknown = sorted(set(row) - set(names))
        if unknown:
            raise RequestError(f"row {i} has unknown feature(s) {unknown}; the model takes {names}")
        missing = [n for n in names if n not in row]
        if missing:
            raise RequestError(f"row {i} is missing feature(s) {missing}")
        for n in names:
            check = _check_numeric if kinds[n] == "numeric" else _check_categorical
            cols[n].append(check(n, row[n], i))
    return cols


def columns_from_v2(inputs: Sequence[Any], numeric: Sequence[str], categorical: Sequence[str]) -> dict[str, list[Any]]:
    """V2: one input tensor per feature, named after it, shape [n] or [n, 1]."""
    names = [*numeric, *categorical]
    by_name: dict[str, Any] = {}
    for tensor in inputs:
        if tensor.name in by_name:
            raise RequestError(f"input {tensor.name!r} given twice")
        by_name[tensor.name] = tensor
    unknown = sorted(set(by_name) - set(names))
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; the model takes one input per feature: {names}")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise RequestError(f"missing input(s) {missing}")
    cols: dict[str, list[Any]] = {}
    length = None
    for n in names:
        tensor = by_name[n]
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise RequestError(f"input {n!r} must have shape [n] or [n, 1], got {shape}")
        data = tensor.data
        if not isinstance(data, list):
            data = list(data)
        flat = [v[0] if isinstance(v, list) and len(v) == 1 else v for v in data]
        if len(flat) != shape[0]:
            raise RequestError(f"input {n!r} declares shape {shape} but has {len(flat)} values")
        if length is None:
            length = len(flat)
        elif len(flat) != length:
            raise RequestError(f"input {n!r} has {len(flat)} rows, other inputs have {length}")
        if n in numeric:
            if tensor.datatype not in ("FP32", "FP64", "INT32", "INT64", "INT8", "INT16", "UINT8"):
                raise RequestError(f"input {n!r} must be a number type (FP32, FP64, INT64...), got {tensor.datatype}")
            cols[n] = [_check_numeric(n, v, i) for i, v in enumerate(flat)]
        else:
            if tensor.datatype != "BYTES":
                raise RequestError(f"input {n!r} is categorical and must be BYTES, got {tensor.datatype}")
            cols[n] = [_check_categorical(n, v.decode() if isinstance(v, bytes) else v, i) for i, v in enumerate(flat)]
    if not length:
        raise RequestError("the request has no rows")
    return cols


def v2_input_types(numeric: Sequence[str], categorical: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": "FP64", "shape": [-1]} for n in numeric] + [
        {"name": c, "datatype": "BYTES", "shape": [-1]} for c in categorical
    ]


def rows_as_dicts(columns: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    names = list(columns)
    n = len(columns[names[0]]) if names else 0
    return [{k: columns[k][i] for k in names} for i in range(n)]
