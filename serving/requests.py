"""Turning V1 and V2 request payloads into feature columns, with a 4xx-worthy message for every mistake.

Pure functions over plain data (parsed JSON, or tensor-like objects from gRPC), so each malformed case is a
unit test and the server never answers 500 for a client's error. A request gives feature values, or an
entity key whose features the server reads from the online store (`Batch.lookup_rows`).

Homogeneous requests (every row the same keys, every value of the expected type) take a vectorised path;
anything else falls back to a row-by-row walk whose only job is to name the first problem precisely.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from operator import itemgetter
from typing import Any

import numpy as np

NUMERIC_V2 = frozenset({"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
INTEGER_V2 = frozenset(t for t in NUMERIC_V2 if "INT" in t)
OUTPUTS = ("probability", "label")
SMALL_COLUMN = 16  # up to this many rows a numeric column stays a list
_NUMBER_TYPES = frozenset({int, float})
_NULLABLE_NUMBER_TYPES = frozenset({int, float, type(None)})
_CATEGORY_TYPES = frozenset({str, type(None)})
_TEXT_TYPES = frozenset({str, bytes, type(None)})


class RequestError(ValueError):
    """The request does not fit the model's signature; the message says how. HTTP 400."""

    status = 400


class UnknownEntity(RequestError):
    """An entity key the online store has never seen. HTTP 404."""

    status = 404


@dataclass(frozen=True)
class Schema:
    """What a request must carry: the bundle's features in signature order, and the optional entity key."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    entity: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    @cached_property
    def name_set(self) -> frozenset[str]:
        return frozenset(self.names)


@dataclass
class Batch:
    """Validated rows, column-wise: numeric columns are float64 arrays (NaN = missing), categorical ones lists."""

    columns: dict[str, Any]
    rows: int
    entities: Sequence[str | None] | None = None  # the key each row named, if any
    lookup_rows: list[int] = field(default_factory=list)  # rows whose features come from the online store
    request_id: str | None = None
    outputs: tuple[str, ...] = OUTPUTS
    binary_outputs: frozenset[str] = frozenset()  # outputs to return as raw binary data (V2 REST)


# ---------------------------------------------------------------- values


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _bad_number(feature: str, value: Any, row: int) -> RequestError:
    if isinstance(value, float) and not math.isfinite(value):
        return RequestError(f"feature {feature!r} (row {row}) must be finite, got {value}")
    return RequestError(f"feature {feature!r} (row {row}) must be a number or null, got {type_name(value)} {value!r:.40}")


def numeric_column(feature: str, values: Sequence[Any], rows: Sequence[int] | None = None, kinds: set[type] | None = None) -> Any:
    """A float column (NaN = null); refuses strings, booleans, nested values and non-finite numbers.

    Short columns stay Python lists of floats (numpy's per-call overhead dominates a single row), longer
    ones become float64 arrays; the scorer takes either.
    """
    if kinds is None:
        kinds = set(map(type, values))
    if kinds <= _NUMBER_TYPES:
        try:
            if len(values) <= SMALL_COLUMN:
                if all(map(math.isfinite, values)):
                    return [float(v) for v in values]
            else:
                column = np.array(values, dtype=np.float64)
                if np.isfinite(column).all():
                    return column
        except OverflowError:
            pass  # an integer beyond float range: named below
    elif kinds <= _NULLABLE_NUMBER_TYPES:
        try:
            column = np.array(values, dtype=np.float64)
            if (np.isfinite(column) | np.array([v is None for v in values])).all():
                return column
        except OverflowError:
            pass
    for i, value in enumerate(values):  # slow path: name the first offending value
        kind = type(value)
        if value is None or (kind is float and math.isfinite(value)):
            continue
        row = rows[i] if rows is not None else i
        if kind is int:
            if abs(value) < 2**1023:
                continue
            raise RequestError(f"feature {feature!r} (row {row}) is out of range for a float64: {value!r:.40}")
        raise _bad_number(feature, value, row)
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def categorical_column(
    feature: str, values: Sequence[Any], rows: Sequence[int] | None = None, kinds: set[type] | None = None
) -> list[str | None]:
    """Strings (integers are accepted as their text) or null; anything else is refused."""
    if kinds is None:
        kinds = set(map(type, values))
    if kinds <= _CATEGORY_TYPES:
        return list(values)
    if kinds <= _TEXT_TYPES:  # BYTES tensors (binary REST, gRPC): decode each distinct value once
        try:
            text = {v: v.decode("utf-8") for v in set(values) if type(v) is bytes}
        except UnicodeDecodeError:
            pass  # the walk below names the row
        else:
            return [text[v] if type(v) is bytes else v for v in values]
    out: list[str | None] = []
    for i, value in enumerate(values):
        if value is None or type(value) is str:
            out.append(value)
        elif type(value) is int:
            out.append(str(value))
        elif type(value) is bytes:
            out.append(_decode(feature, value, rows[i] if rows is not None else i))
        else:
            row = rows[i] if rows is not None else i
            raise RequestError(f"feature {feature!r} (row {row}) must be a string or null, got {type_name(value)}")
    return out


def _decode(name: str, value: bytes, row: int) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(f"{name!r} (row {row}) is not valid UTF-8") from err


def numeric_array(feature: str, values: np.ndarray) -> np.ndarray:
    """A numeric tensor that arrived as an array (binary REST, gRPC contents): float64, NaN a missing value.

    Those encodings have no null, so NaN is how a client says "missing" (the program imputes it); infinities
    are refused as in JSON.
    """
    column = values.astype(np.float64)  # a copy: entity lookups may write into the batch's columns
    infinite = np.isinf(column)
    if infinite.any():
        row = int(np.flatnonzero(infinite)[0])
        raise RequestError(f"feature {feature!r} (row {row}) must be finite, got {column[row]}")
    return column


def entity_key(name: str, value: Any, row: int) -> str:
    if type(value) is bytes:
        value = _decode(name, value, row)
    if type(value) is not str or not value:
        raise RequestError(f"entity key {name!r} (row {row}) must be a non-empty string, got {type_name(value)} {value!r:.40}")
    return value


# ---------------------------------------------------------------- V1


def parse_v1(body: Any, schema: Schema) -> Batch:
    """V1: {"instances": [row, ...]}; a row is {feature: value}, a list in signature order, or {entity: key}."""
    if not isinstance(body, dict):
        raise RequestError(f'the request body must be a JSON object like {{"instances": [...]}}, got {type_name(body)}')
    if "instances" not in body:
        keys = sorted(body)[:5]
        raise RequestError(f"missing 'instances': a V1 request is {{\"instances\": [row, ...]}} (got keys {keys})")
    return columns_from_rows(body["instances"], schema)


def columns_from_rows(instances: Any, schema: Schema) -> Batch:
    if not isinstance(instances, list) or not instances:
        raise RequestError("'instances' must be a non-empty list of rows")
    names = schema.names
    first = instances[0]
    if type(first) is dict:
        # Every row an object with as many keys as the first; a row with other keys fails a lookup below.
        if set(map(type, instances)) == {dict} and sum(map(len, instances)) == len(first) * len(instances):
            batch = _homogeneous_objects(instances, set(first), schema)
            if batch is not None:
                return batch
    elif type(first) is list and all(type(r) is list and len(r) == len(names) for r in instances):
        columns = dict(zip(names, map(list, zip(*instances))))
        return Batch(columns=_typed(columns, schema), rows=len(instances))
    return _rows_one_by_one(instances, schema)


def _homogeneous_objects(instances: list[dict[str, Any]], keys: set[str], schema: Schema) -> Batch | None:
    names = schema.names
    n = len(instances)
    entity = schema.entity
    try:
        if keys == schema.name_set:
            return Batch(columns=_typed(_gather(instances, names), schema), rows=n)
        if entity is not None and keys == {entity}:
            entities = [entity_key(entity, r[entity], i) for i, r in enumerate(instances)]
            return Batch(columns=_placeholder(schema, n), rows=n, entities=entities, lookup_rows=list(range(n)))
        if entity is not None and keys == {*names, entity}:
            entities = [entity_key(entity, r[entity], i) for i, r in enumerate(instances)]
            return Batch(columns=_typed(_gather(instances, names), schema), rows=n, entities=entities)
    except KeyError:
        pass  # a row whose keys differ from the first row's
    return None  # the slow path names the mismatch


def _gather(instances: list[dict[str, Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    return {k: list(map(itemgetter(k), instances)) for k in names}


def _rows_one_by_one(instances: list[Any], schema: Schema) -> Batch:
    names = schema.names
    allowed = set(names) | ({schema.entity} if schema.entity else set())
    raw: dict[str, list[Any]] = {k: [] for k in names}
    entities: list[str | None] = []
    lookup: list[int] = []
    for i, row in enumerate(instances):
        if isinstance(row, list):
            if len(row) != len(names):
                raise RequestError(f"row {i} has {len(row)} values; the model takes {len(names)} in this order: {list(names)}")
            row = dict(zip(names, row))
        if not isinstance(row, dict):
            raise RequestError(f"row {i} must be an object of feature values or a list in signature order, got {type_name(row)}")
        unknown = sorted(set(row) - allowed)
        if unknown:
            raise RequestError(
                f"row {i} has unknown feature(s) {unknown}; the model takes {list(names)}"
                + (f" or the entity key {schema.entity!r}" if schema.entity else "")
            )
        key = entity_key(schema.entity, row[schema.entity], i) if schema.entity and schema.entity in row else None
        entities.append(key)
        given = [n for n in names if n in row]
        if key is not None and not given:
            lookup.append(i)
            for n in names:
                raw[n].append(None)
            continue
        missing = [n for n in names if n not in row]
        if missing:
            hint = f" (or send only the entity key {schema.entity!r})" if schema.entity else ""
            raise RequestError(f"row {i} is missing feature(s) {missing}{hint}")
        for n in names:
            raw[n].append(row[n])
    looked_up = set(lookup)
    given_rows = [i for i in range(len(instances)) if i not in looked_up]
    columns = _typed({k: [v[i] for i in given_rows] for k, v in raw.items()}, schema, given_rows)
    if lookup:
        columns = _scatter(columns, given_rows, len(instances), schema)
    has_keys = any(e is not None for e in entities)
    return Batch(columns=columns, rows=len(instances), entities=entities if has_keys else None, lookup_rows=lookup)


def _typed(columns: dict[str, list[Any]], schema: Schema, rows: Sequence[int] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n in schema.numeric:
        out[n] = numeric_column(n, columns[n], rows)
    for c in schema.categorical:
        out[c] = categorical_column(c, columns[c], rows)
    return out


def _placeholder(schema: Schema, n: int) -> dict[str, Any]:
    return {**{k: np.full(n, np.nan) for k in schema.numeric}, **{c: [None] * n for c in schema.categorical}}


def _scatter(columns: dict[str, Any], rows: Sequence[int], n: int, schema: Schema) -> dict[str, Any]:
    """Columns for `rows` placed into full-length columns whose other rows wait for a lookup."""
    full = _placeholder(schema, n)
    for k in schema.numeric:
        full[k][list(rows)] = columns[k]
    for c in schema.categorical:
        for j, i in enumerate(rows):
            full[c][i] = columns[c][j]
    return full


# ---------------------------------------------------------------- V2


def _shape(name: str, shape: Any) -> list[int]:
    if not isinstance(shape, (list, tuple)) or not all(type(d) is int and d >= 0 for d in shape):
        raise RequestError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r:.60}")
    shape = list(shape)
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise RequestError(f"input {name!r} must have shape [n] or [n, 1] (one value per row), got {shape}")
    return shape


def _flat(name: str, shape: Any, data: Any) -> tuple[Any, set[type]]:
    """The tensor's values flat (one per row): a list and the set of its Python types, or a numeric array."""
    if type(shape) is list and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 0:
        dims = shape  # the common case, checked without the general walk
    else:
        dims = _shape(name, shape)
    if isinstance(data, np.ndarray):
        if data.dtype.kind in "biuf":  # numbers stay an array: no per-value Python objects
            if data.size != dims[0]:
                raise RequestError(f"input {name!r} declares shape {dims} but has {data.size} values")
            return data.reshape(-1), {np.ndarray}
        data = data.reshape(-1).tolist()
    elif type(data) is not list:
        data = list(data)
    kinds = set(map(type, data))
    if list in kinds:
        if len(dims) == 2 and kinds == {list} and all(len(v) == 1 for v in data):  # [[v], [v], ...]
            data = [v[0] for v in data]
            kinds = set(map(type, data))
        if list in kinds:
            raise RequestError(f"input {name!r}: 'data' is ragged or nested deeper than its shape {dims}")
    if len(data) != dims[0]:
        raise RequestError(f"input {name!r} declares shape {dims} but has {len(data)} values")
    return data, kinds


def columns_from_v2_inputs(inputs: Sequence[Mapping[str, Any]], schema: Schema) -> Batch:
    """One input tensor per feature, named after it, shape [n] or [n, 1]; or only the entity key (BYTES).

    Each tensor is a mapping with name, shape, datatype and data (parsed JSON, or a gRPC tensor's fields).
    """
    by_name: dict[str, Mapping[str, Any]] = {}
    for tensor in inputs:
        name = tensor["name"]
        if name in by_name:
            raise RequestError(f"input {name!r} given twice")
        by_name[name] = tensor
    names = schema.names
    entity_only = False
    if by_name.keys() != schema.name_set:
        allowed = schema.name_set | ({schema.entity} if schema.entity else set())
        unknown = sorted(set(by_name) - allowed)
        if unknown:
            raise RequestError(
                f"unknown input(s) {unknown}; the model takes one input per feature: {list(names)}"
                + (f", or only the entity key {schema.entity!r}" if schema.entity else "")
            )
        entity_only = schema.entity is not None and set(by_name) == {schema.entity}
        missing = [] if entity_only else [n for n in names if n not in by_name]
        if missing:
            hint = f" (or send only the entity key input {schema.entity!r})" if schema.entity else ""
            raise RequestError(f"missing input(s) {missing}{hint}")
    columns: dict[str, Any] = {}
    entities = None
    length: int | None = None
    for name, tensor in by_name.items():
        datatype = tensor["datatype"]
        is_key = name == schema.entity
        textual = is_key or name in schema.categorical
        if textual:
            if datatype != "BYTES":
                what = "the entity key" if is_key else "categorical"
                raise RequestError(f"input {name!r} is {what} and must be BYTES, got {datatype}")
        elif datatype not in NUMERIC_V2:
            raise RequestError(f"input {name!r} must be a number type (FP32, FP64, INT64...), got {datatype}")
        flat, kinds = _flat(name, tensor["shape"], tensor["data"])
        if isinstance(flat, np.ndarray):
            if textual or flat.dtype.kind == "b" or (datatype in INTEGER_V2 and flat.dtype.kind == "f"):
                raise RequestError(f"input {name!r} is {datatype} but holds {flat.dtype} values")
        elif datatype in INTEGER_V2 and not kinds <= {int, type(None)}:
            bad = next(v for v in flat if type(v) not in (int, type(None)))
            raise RequestError(f"input {name!r} is {datatype} but holds {type_name(bad)} {bad!r:.40}")
        if length is None:
            length = len(flat)
        elif len(flat) != length:
            raise RequestError(f"input {name!r} has {len(flat)} rows, other inputs have {length}")
        if is_key:
            entities = [entity_key(name, v, i) for i, v in enumerate(flat)]
        elif textual:
            columns[name] = categorical_column(name, flat, kinds=kinds)
        elif isinstance(flat, np.ndarray):
            columns[name] = numeric_array(name, flat)
        else:
            columns[name] = numeric_column(name, flat, kinds=kinds)
    if not length:
        raise RequestError("the request has no rows")
    if entity_only:
        return Batch(columns=_placeholder(schema, length), rows=length, entities=entities, lookup_rows=list(range(length)))
    return Batch(columns=columns, rows=length, entities=entities)


def rows_for_log(batch: Batch, names: Sequence[str], numeric_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per-row {feature: value} with missing numbers as null (JSON has no NaN): what the request log stores."""
    numeric = set(numeric_names)
    cols = []
    for n in names:
        col = batch.columns[n]
        if n in numeric:
            col = [None if v != v else v for v in (col.tolist() if isinstance(col, np.ndarray) else col)]
        cols.append(col)
    return [dict(zip(names, values)) for values in zip(*cols)]


def fill_lookups(batch: Batch, found: Mapping[str, Sequence[Any]], schema: Schema) -> None:
    """Put looked-up feature values (one list per feature, in `lookup_rows` order) into the batch's columns."""
    rows = batch.lookup_rows
    for n in schema.numeric:
        values = [np.nan if v is None else float(v) for v in found[n]]
        column = batch.columns[n]
        if isinstance(column, np.ndarray):
            column[rows] = values
        else:
            for i, v in zip(rows, values):
                column[i] = v
    for c in schema.categorical:
        column = batch.columns[c]
        for i, v in zip(rows, found[c]):
            column[i] = None if v is None else str(v)
