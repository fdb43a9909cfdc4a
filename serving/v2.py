"""The V2 (Open Inference Protocol) REST request and response documents around the tensor parser.

`parse_v2` checks the request document (id, inputs, requested outputs and how each should come back) and hands
the tensors to `requests.columns_from_v2_inputs`; `response_body` writes the answer as JSON, or as a JSON header
followed by raw tensors when the request asked for binary outputs (serving/binary.py has the framing).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from serving import binary
from serving.requests import OUTPUTS, Batch, RequestError, Schema, columns_from_v2_inputs, type_name

_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data"})
_OUTPUT_TYPES = {"probability": "FP64", "label": "INT64"}


def parse_v2(body: Any, schema: Schema) -> Batch:
    """{"id"?, "inputs": [{name, shape, datatype, data}], "outputs"?, "parameters"?} -> Batch.

    Binary inputs arrive here already decoded into `data` (numpy arrays or lists of bytes).
    """
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object with 'inputs', got {type_name(body)}")
    request_id = body.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError(f"'id' must be a string, got {type_name(request_id)}")
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensors {name, shape, datatype, data}")
    for i, tensor in enumerate(inputs):
        if (
            type(tensor) is not dict
            or not tensor.keys() >= _TENSOR_KEYS
            or type(tensor["name"]) is not str
            or type(tensor["datatype"]) is not str
            or not isinstance(tensor["data"], (list, np.ndarray))
        ):
            _explain_bad_tensor(i, tensor)
    batch = columns_from_v2_inputs(inputs, schema)
    batch.request_id = request_id
    batch.outputs, batch.binary_outputs = requested_outputs(body.get("outputs"), body.get("parameters"))
    return batch


def _explain_bad_tensor(i: int, tensor: Any) -> None:
    if not isinstance(tensor, dict):
        raise RequestError(f"inputs[{i}] must be an object {{name, shape, datatype, data}}, got {type_name(tensor)}")
    for key in ("name", "shape", "datatype"):
        if key not in tensor:
            raise RequestError(f"inputs[{i}] has no {key!r}")
    if "data" not in tensor:
        raise RequestError(f"inputs[{i}] has no 'data' (nor parameters.binary_data_size with the Inference-Header-Content-Length header)")
    if not isinstance(tensor["name"], str) or not isinstance(tensor["datatype"], str):
        raise RequestError(f"inputs[{i}]: 'name' and 'datatype' must be strings")
    raise RequestError(f"input {tensor['name']!r}: 'data' must be a list, got {type_name(tensor['data'])}")


def requested_outputs(outputs: Any, parameters: Any) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs to return, and which of them as binary data.

    As in Triton: the request's `binary_data_output` makes every output binary unless the output itself says
    `binary_data` false.
    """
    if parameters is not None and not isinstance(parameters, dict):
        raise RequestError(f"'parameters' must be an object, got {type_name(parameters)}")
    default = (parameters or {}).get("binary_data_output", False)
    if type(default) is not bool:
        raise RequestError(f"parameters.binary_data_output must be true or false, got {default!r:.40}")
    if outputs is None:
        return OUTPUTS, frozenset(OUTPUTS) if default else frozenset()
    if not isinstance(outputs, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs):
        raise RequestError("'outputs' must be a list of objects with a 'name'")
    names = tuple(o["name"] for o in outputs)
    unknown = sorted(set(names) - set(OUTPUTS))
    if unknown:
        raise RequestError(f"unknown output(s) {unknown}; the model returns {list(OUTPUTS)}")
    binary_names = set()
    for output in outputs:
        params = output.get("parameters") or {}
        if not isinstance(params, dict):
            raise RequestError(f"output {output['name']!r}: 'parameters' must be an object")
        if params.get("classification"):
            raise RequestError(
                f"output {output['name']!r}: the classification extension is not supported; the model returns probability and label"
            )
        wanted = params.get("binary_data", default)
        if type(wanted) is not bool:
            raise RequestError(f"output {output['name']!r}: binary_data must be true or false, got {wanted!r:.40}")
        if wanted:
            binary_names.add(output["name"])
    return names or OUTPUTS, frozenset(binary_names)


def response_body(
    model_name: str, version: str, request_id: str, batch: Batch, probabilities: np.ndarray, labels: np.ndarray
) -> tuple[bytes, int | None]:
    """The V2 response; with binary outputs, also the JSON header's length (Inference-Header-Content-Length)."""
    n = batch.rows
    outputs: list[dict[str, Any]] = []
    raw: list[bytes] = []
    for name in batch.outputs:
        values = probabilities if name == "probability" else labels
        datatype = _OUTPUT_TYPES[name]
        if name in batch.binary_outputs:
            data = np.ascontiguousarray(values, dtype=binary.DTYPES[datatype]).tobytes()
            raw.append(data)
            outputs.append({"name": name, "datatype": datatype, "shape": [n], "parameters": {"binary_data_size": len(data)}})
        else:
            outputs.append({"name": name, "datatype": datatype, "shape": [n], "data": values})
    header = orjson.dumps(
        {"id": batch.request_id or request_id, "model_name": model_name, "model_version": version, "outputs": outputs},
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
    if not raw:
        return header, None
    return binary.body(header, raw)


def v2_input_types(numeric: tuple[str, ...] | list[str], categorical: tuple[str, ...] | list[str]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": "FP64", "shape": [-1]} for n in numeric] + [
        {"name": c, "datatype": "BYTES", "shape": [-1]} for c in categorical
    ]


def v2_output_types() -> list[dict[str, Any]]:
    return [{"name": name, "datatype": datatype, "shape": [-1]} for name, datatype in _OUTPUT_TYPES.items()]
