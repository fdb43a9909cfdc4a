"""The validation suite: the expectations a dataset spec implies, as a versioned file beside the spec.

`mlwf suite` writes `<spec>.suite.json`: the expectations derived from the spec plus any the user adds
by hand (`custom`), reviewable in a diff. The pipeline loads it and refuses it when it no longer matches
the spec. Also here: the names of the prepared columns those expectations refer to (checks.py builds them).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from components.core import storage
from components.core.spec import EVENT_TIMESTAMP, LABEL, DatasetSpec

# Names the expectations use for columns of the prepared rows (checks.prepare builds them) and of ingest's output.
NUMBER_PATTERN = r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$"
RAW = "__raw"  # suffix of the text columns kept beside their parsed twins
SOURCE_FILE = "source_file"  # the input file a row came from (ingest adds it)
INGESTED_AT = "ingested_at"  # when that file was first ingested (ingest adds it)
AS_OF = "as_of"  # prepared column: the latest event time a row may have (its file's first ingestion + skew)
CLOCK_SKEW = timedelta(minutes=5)  # tolerated difference between the data's clock and ours
SUITE_FORMAT = "mlwf-suite/1"


class SuiteError(ValueError):
    """The suite file next to the spec is missing, malformed, or stale against the spec."""


# ---------------------------------------------------------------------------------------------
# The suite: derived from the spec, written next to it, loaded and checked against it.
# ---------------------------------------------------------------------------------------------


def canonical_label(value: Any) -> str | None:
    """Labels compare as text, but 1, "1" and "1.0" are the same class."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        return text
    return str(int(number)) if number.is_integer() else text


def _canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str).encode()


def spec_fingerprint(spec: DatasetSpec) -> str:
    """sha256 of the parts of the spec the suite is derived from (not its comments or layout)."""
    relevant = {
        "name": spec.name,
        "label": [spec.label, canonical_label(spec.positive), canonical_label(spec.negative)],
        "entity": spec.entity_column,
        "timestamp": spec.timestamp,
        "numeric": [[f.name, f.min, f.max, f.nullable] for f in spec.numeric],
        "categorical": [[c.name, list(c.values) if c.values is not None else None, c.nullable] for c in spec.categorical],
    }
    return hashlib.sha256(_canonical_json(relevant)).hexdigest()


def expectation_id(exp: dict[str, Any]) -> str:
    """A readable, stable id: the type and the column(s) it checks (the reason written on a quarantined row)."""
    if exp.get("id"):
        return str(exp["id"])
    kw = exp["kwargs"]
    if "column_A" in kw:
        col = f"{kw['column_A']}+{kw['column_B']}"
    else:
        col = kw.get("column") or "+".join(kw.get("column_list", []))
    return f"{exp['type']}({col.removesuffix(RAW)})"


def expectation_columns(exp: dict[str, Any]) -> list[str]:
    kw = exp["kwargs"]
    cols = [kw.get("column"), kw.get("column_A"), kw.get("column_B"), *kw.get("column_list", [])]
    return [c for c in cols if c]


def _exp(type_: str, why: str, **kwargs: Any) -> dict[str, Any]:
    exp = {"type": type_, "kwargs": kwargs, "meta": {"why": why}}
    exp["id"] = expectation_id(exp)
    return exp


def derive_expectations(spec: DatasetSpec) -> list[dict[str, Any]]:
    """The expectations a spec implies, as plain data. No clock in here: the future-timestamp bound is
    a column (each file's first ingestion time), so the suite and reruns do not depend on when they run."""
    key = spec.entity_column
    exps = [
        _exp("expect_column_values_to_not_be_null", "every row needs its entity key", column=key),
        _exp("expect_compound_columns_to_be_unique", "one row per (entity, event time)", column_list=[key, EVENT_TIMESTAMP]),
        _exp("expect_column_values_to_not_be_null", "event time missing or not a date", column=EVENT_TIMESTAMP),
        _exp(
            "expect_column_pair_values_a_to_be_greater_than_b",
            f"event time after the file was first ingested (+{int(CLOCK_SKEW.total_seconds())}s skew): a timestamp in the future",
            column_A=AS_OF,
            column_B=EVENT_TIMESTAMP,
            or_equal=True,
            ignore_row_if="either_value_is_missing",
        ),
        _exp("expect_column_values_to_not_be_null", "label missing", column=LABEL + RAW),
    ]
    if spec.negative is not None:
        allowed = [canonical_label(spec.positive), canonical_label(spec.negative)]
        exps.append(
            _exp(
                "expect_column_values_to_be_in_set",
                "label is neither the positive nor the negative class",
                column=LABEL + RAW,
                value_set=allowed,
            )
        )
    for f in spec.numeric:
        if not f.nullable:
            exps.append(_exp("expect_column_values_to_not_be_null", "value missing", column=f.name + RAW))
        exps.append(_exp("expect_column_values_to_match_regex", "not a number", column=f.name + RAW, regex=NUMBER_PATTERN))
        if f.min is not None or f.max is not None:
            exps.append(
                _exp("expect_column_values_to_be_between", "outside the spec's range", column=f.name, min_value=f.min, max_value=f.max)
            )
    for c in spec.categorical:
        if not c.nullable:
            exps.append(_exp("expect_column_values_to_not_be_null", "value missing", column=c.name))
        if c.values is not None:
            exps.append(
                _exp("expect_column_values_to_be_in_set", "category not in the spec's list", column=c.name, value_set=list(c.values))
            )
    return exps


@dataclass(frozen=True)
class Suite:
    dataset: str
    version: str  # sha256[:16] of the expectations: what a quarantine reason or a model's lineage refers to
    spec_sha256: str
    expectations: list[dict[str, Any]]  # derived + custom, in order
    path: str = ""


def _suite_version(expectations: list[dict[str, Any]], custom: list[dict[str, Any]]) -> str:
    return hashlib.sha256(_canonical_json({"expectations": expectations, "custom": custom})).hexdigest()[:16]


def suite_document(spec: DatasetSpec, custom: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The suite file's content for a spec, keeping the hand-added `custom` expectations."""
    expectations = derive_expectations(spec)
    custom = [dict(c, id=expectation_id(c)) for c in (custom or [])]
    return {
        "format": SUITE_FORMAT,
        "dataset": spec.name,
        "spec_sha256": spec_fingerprint(spec),
        "suite_version": _suite_version(expectations, custom),
        "note": "Written by `mlwf suite`: do not edit `expectations` (they follow the spec); add your own "
        "GX 1.x expectations to `custom` ({type, kwargs}, columns by their spec names) and rerun `mlwf suite`.",
        "expectations": expectations,
        "custom": custom,
    }


def suite_from_spec(spec: DatasetSpec) -> Suite:
    """The suite derived in memory (no file): for library use and tests; the pipeline loads the file."""
    doc = suite_document(spec)
    return Suite(spec.name, doc["suite_version"], doc["spec_sha256"], doc["expectations"])


def suite_path(spec_ref: str) -> str:
    """Where a spec's suite lives: beside it, `<name>.suite.json` (bundled specs: in components/datasets/)."""
    from components.core.spec import spec_uri

    uri = spec_uri(spec_ref)
    stem = uri[: uri.rfind(".")] if uri.lower().endswith((".yaml", ".yml")) else uri
    return f"{stem}.suite.json"


def render_suite(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def write_suite(spec_ref: str) -> tuple[str, Suite, bool]:
    """Write or update the suite next to the spec; returns (path, suite, changed). Keeps `custom`."""
    from components.core.spec import load_spec

    spec = load_spec(spec_ref)
    path = suite_path(spec_ref)
    custom: list[dict[str, Any]] = []
    old = b""
    if storage.exists(path):
        old = storage.read_bytes(path)
        try:
            custom = list(json.loads(old).get("custom") or [])
        except (ValueError, AttributeError) as err:
            raise SuiteError(f"suite {path} is not valid JSON ({err}); fix or delete it, then rerun `mlwf suite`") from err
    doc = suite_document(spec, custom)
    _check_custom(doc["custom"], path)
    data = render_suite(doc)
    changed = data != old
    if changed:
        storage.write_bytes(path, data)
    return path, Suite(spec.name, doc["suite_version"], doc["spec_sha256"], doc["expectations"] + doc["custom"], path), changed


def load_suite(spec: DatasetSpec, spec_ref: str) -> Suite:
    """Load the suite next to the spec and refuse it when it no longer matches the spec."""
    path = suite_path(spec_ref)
    fix = f"run `mlwf suite --dataset {spec_ref}` and review the diff"
    if not storage.exists(path):
        raise SuiteError(f"no validation suite next to the spec (expected {path}): {fix}")
    try:
        doc = json.loads(storage.read_bytes(path))
    except ValueError as err:
        raise SuiteError(f"suite {path} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != SUITE_FORMAT:
        raise SuiteError(f"suite {path} is not an {SUITE_FORMAT} file: {fix}")
    if doc.get("spec_sha256") != spec_fingerprint(spec):
        raise SuiteError(f"suite {path} is stale: the spec changed since it was written: {fix}")
    expected = derive_expectations(spec)
    if doc.get("expectations") != expected:
        raise SuiteError(
            f"suite {path} is stale: its generated expectations differ from what this version of mlwf "
            f"derives from the spec (edited by hand? put your own in `custom`): {fix}"
        )
    custom = list(doc.get("custom") or [])
    if doc.get("suite_version") != _suite_version(expected, custom):
        raise SuiteError(f"suite {path} was edited since it was versioned (suite_version does not match its content): {fix}")
    _check_custom(custom, path)
    return Suite(spec.name, str(doc["suite_version"]), str(doc["spec_sha256"]), expected + custom, path)


def _check_custom(custom: list[dict[str, Any]], path: str) -> None:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    for exp in custom:
        if not isinstance(exp, dict) or "type" not in exp or not isinstance(exp.get("kwargs"), dict):
            raise SuiteError(f"suite {path}: a custom expectation needs `type` and `kwargs`, got {exp!r}")
        try:
            ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"])
        except Exception as err:  # GX raises several types for an unknown or malformed expectation
            raise SuiteError(f"suite {path}: custom expectation {exp['type']!r} is not a valid GX expectation: {err}") from err
