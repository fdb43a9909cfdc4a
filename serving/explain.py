"""The explain verb: V1 `POST /v1/models/NAME:explain` (KServe's) and V2 `POST /v2/models/NAME/explain` (this
project's; the same input document as `/infer`), answered with per-feature attributions for each row.

The attributions are components/core/explain.py's (interventional Shapley values against the background sample
sealed in the bundle, exactly additive: a row's attributions add up to its probability minus `base_value`). The
requests are parsed by the same code as `:predict`/`/infer`, so a mistake gets the same 4xx; a bundle without a
background sample answers 501 (ExplainUnavailable) naming the retraining that adds one.

V1 answer: {"explanations": [{"probability", "label", "attributions": {feature: value}}], "base_value",
            "features", "method", "model_version"}
V2 answer: {"id", "model_name", "model_version", "outputs": [attributions FP64 [n, F] (columns in
            parameters.features order), probability FP64 [n], base_value FP64 [1]], "parameters": {features, method}}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from components.core.explain import ADDITIVITY_TOLERANCE, Explanation
from serving.requests import RequestError

METHOD = "interventional Shapley values, permutation sampling with antithetic orders over the bundle's background sample"
MAX_EXPLAIN_ROWS = 100  # each row costs ~2 x 100 x F program rows; larger batches are refused, not queued for seconds


class ExplainUnavailable(RequestError):
    """This bundle cannot be explained (no background sample): HTTP 501, not a client mistake and not a crash."""

    status = 501


def check_rows(rows: int) -> None:
    if rows > MAX_EXPLAIN_ROWS:
        raise RequestError(f"explain takes at most {MAX_EXPLAIN_ROWS} rows per request, got {rows}: split the batch")


def _parameters(explanation: Explanation) -> dict[str, Any]:
    return {
        "features": explanation.features,
        "method": METHOD,
        "additivity_tolerance": ADDITIVITY_TOLERANCE,
        "background_rows": explanation.background_rows,
        "walks": explanation.walks,
    }


def v1_document(explanation: Explanation, threshold: float, version: str) -> dict[str, Any]:
    names = explanation.features
    rows = [
        {"probability": score, "label": int(score >= threshold), "attributions": dict(zip(names, values))}
        for score, values in zip(explanation.scores.tolist(), explanation.attributions.tolist())
    ]
    return {"explanations": rows, "base_value": explanation.base_value, **_parameters(explanation), "model_version": version}


def v1_body(explanation: Explanation, threshold: float, version: str) -> bytes:
    return orjson.dumps(v1_document(explanation, threshold, version))


def v2_body(model_name: str, version: str, request_id: str, explanation: Explanation) -> bytes:
    n, width = explanation.attributions.shape
    outputs = [
        {"name": "attributions", "datatype": "FP64", "shape": [n, width], "data": explanation.attributions.reshape(-1)},
        {"name": "probability", "datatype": "FP64", "shape": [n], "data": explanation.scores},
        {"name": "base_value", "datatype": "FP64", "shape": [1], "data": np.array([explanation.base_value])},
    ]
    document = {
        "id": request_id,
        "model_name": model_name,
        "model_version": version,
        "outputs": outputs,
        "parameters": _parameters(explanation),
    }
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
