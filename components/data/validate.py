"""Validate: every record checked by the dataset's Great Expectations 1.x suite.

The suite is a versioned file next to the spec (`<spec>.suite.json`, written by `mlwf suite`): the
expectations derived from the spec plus any the user adds by hand, reviewable in a diff. Rows that
fail any expectation go to quarantine with the reason(s), their source file and line, and a run id;
the rest go on, typed. Nothing is dropped: rows in = valid + quarantined, checked on every run.

How the work is split (see `check_rows`): GX runs every expectation over every row and gives each
expectation's verdict and unexpected count with a cheap result format. The row-level masks that
decide what goes to quarantine come from the same expectation definitions evaluated as vectorized
pandas/Arrow operations, and must agree exactly with GX's counts, else the step raises. GX's own
per-row index output (result_format COMPLETE) is used only for expectation types that have no
vectorized twin here (hand-added ones), because it is ~10-50x slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator

import numpy as np
import pandas as pd

from components.core import storage
from components.core.spec import EVENT_TIMESTAMP, LABEL, SOURCE_LINE, DatasetSpec
from components.core.storage import to_parquet_bytes  # noqa: F401  (callers read it from here too)

NUMBER_PATTERN = r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$"
RAW = "__raw"  # suffix of the text columns kept beside their parsed twins
SOURCE_FILE = "source_file"  # the input file a row came from (ingest adds it)
INGESTED_AT = "ingested_at"  # when that file was first ingested (ingest adds it)
AS_OF = "as_of"  # prepared column: the latest event time a row may have (its file's first ingestion + skew)
CLOCK_SKEW = timedelta(minutes=5)  # tolerated difference between the data's clock and ours
SUITE_FORMAT = "mlwf-suite/1"
PARTIAL = 20  # unexpected values GX returns per expectation; compared with the vectorized masks
# Text stored as Arrow strings: regex, isin and null checks run in Arrow's C++ kernels (GX included).
TEXT = pd.StringDtype("pyarrow", na_value=np.nan)


class ValidationFailed(RuntimeError):
    """Too many rows failed validation, rows were lost, or GX and the row masks disagree."""


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
            column_A=AS_OF, column_B=EVENT_TIMESTAMP, or_equal=True, ignore_row_if="either_value_is_missing",
        ),
        _exp("expect_column_values_to_not_be_null", "label missing", column=LABEL + RAW),
    ]
    if spec.negative is not None:
        allowed = [canonical_label(spec.positive), canonical_label(spec.negative)]
        exps.append(_exp("expect_column_values_to_be_in_set", "label is neither the positive nor the negative class",
                         column=LABEL + RAW, value_set=allowed))
    for f in spec.numeric:
        if not f.nullable:
            exps.append(_exp("expect_column_values_to_not_be_null", "value missing", column=f.name + RAW))
        exps.append(_exp("expect_column_values_to_match_regex", "not a number", column=f.name + RAW, regex=NUMBER_PATTERN))
        if f.min is not None or f.max is not None:
            exps.append(_exp("expect_column_values_to_be_between", "outside the spec's range",
                             column=f.name, min_value=f.min, max_value=f.max))
    for c in spec.categorical:
        if not c.nullable:
            exps.append(_exp("expect_column_values_to_not_be_null", "value missing", column=c.name))
        if c.values is not None:
            exps.append(_exp("expect_column_values_to_be_in_set", "category not in the spec's list",
                             column=c.name, value_set=list(c.values)))
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
        raise SuiteError(f"suite {path} is stale: its generated expectations differ from what this version of mlwf "
                         f"derives from the spec (edited by hand? put your own in `custom`): {fix}")
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


# ---------------------------------------------------------------------------------------------
# Checking rows
# ---------------------------------------------------------------------------------------------


@dataclass
class ValidationOutcome:
    valid_table: Any  # pyarrow.Table: the typed valid rows, written as is (no round trip through Python objects)
    quarantined: pd.DataFrame  # the raw rows that failed, with failed_expectations, source (file), run_id
    failures: dict[str, int]  # expectation id -> failing rows (agreed by GX and the row masks)
    suite: list[dict[str, Any]]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    verdicts: dict[str, bool] = field(default_factory=dict)  # GX's success per expectation
    suite_version: str = ""
    per_file: list[dict[str, Any]] = field(default_factory=list)
    _valid: pd.DataFrame | None = None

    @property
    def valid(self) -> pd.DataFrame:
        """The valid rows as pandas (strings as Python objects, as the next steps read them back)."""
        if self._valid is None:
            self._valid = self.valid_table.to_pandas()
        return self._valid

    @property
    def rows(self) -> int:
        return int(self.valid_table.num_rows) + len(self.quarantined)

    @property
    def bad_fraction(self) -> float:
        return len(self.quarantined) / self.rows if self.rows else 0.0


def _arrow(values: Any) -> Any:
    """The values as a pyarrow ChunkedArray (text as `string`), without a detour through Python objects.

    pandas' Arrow-backed arrays hand over their buffers (`__arrow_array__`); `pa.array()` on one that
    holds several chunks would convert value by value instead (~1 s per million).
    """
    import pyarrow as pa

    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    elif not isinstance(values, pa.ChunkedArray):
        values = values.__arrow_array__() if hasattr(values, "__arrow_array__") else pa.array(values, from_pandas=True)
        if isinstance(values, pa.Array):
            values = pa.chunked_array([values])
    if pa.types.is_large_string(values.type) or pa.types.is_null(values.type):
        values = values.cast(pa.string())
    return values


def _text(series: pd.Series) -> pd.Series:
    return series if series.dtype == TEXT else series.astype(TEXT)


def _matches(text: pd.Series, pattern: str) -> np.ndarray:
    """Which values match `pattern` (False for nulls): Arrow's RE2 kernel, as GX's regex runs on Arrow text."""
    return text.str.contains(pattern).fillna(False).astype(bool).to_numpy()


def _parse_numbers(text: pd.Series, ok: np.ndarray) -> pd.Series:
    """Text -> float64 where `ok` (the number pattern matched); NaN elsewhere (the regex expectation says why)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    candidates = _arrow(text.where(ok).array)
    try:  # Arrow's parser takes every string the pattern accepts; pandas is the slow fallback
        parsed = pc.cast(pc.utf8_trim_whitespace(candidates), pa.float64())
        return pd.Series(parsed.to_numpy(zero_copy_only=False), index=text.index, dtype="float64")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(text.where(ok).astype(object), errors="coerce").astype("float64")


_ISO_ZONED = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})$"
_ISO_NAIVE = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?$"


def _parse_times(text: pd.Series) -> pd.Series:
    """Text -> UTC timestamps (naive ones are taken as UTC); NaT where it is not a date.

    ISO 8601 text (nearly all data) is cast by Arrow; anything else goes through pandas' flexible parser,
    ~50x slower per value, which accepts e.g. "01/02/2026 10:00" as the step always has.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    try:  # the common case, every value ISO 8601 with a zone: one Arrow cast, nulls kept
        cast = pc.cast(_arrow(text.array), pa.timestamp("ns", "UTC"))
        return pd.Series(pd.DatetimeIndex(cast.to_pandas()), index=text.index).dt.tz_convert("UTC")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):
        pass
    out = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    present = text.notna().to_numpy()
    zoned = _matches(text, _ISO_ZONED)
    naive = _matches(text, _ISO_NAIVE) & ~zoned
    for mask, arrow_type in ((zoned, pa.timestamp("ns", "UTC")), (naive, pa.timestamp("ns"))):
        if not mask.any():
            continue
        part = text[mask]
        try:
            values = pd.DatetimeIndex(pc.cast(_arrow(part.array), arrow_type).to_pandas())
            values = values.tz_localize("UTC") if values.tz is None else values.tz_convert("UTC")
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OverflowError):  # e.g. month 13: value by value
            values = pd.DatetimeIndex(pd.to_datetime(part.astype(object), utc=True, errors="coerce", format="ISO8601"))
        out.iloc[np.flatnonzero(mask)] = values.as_unit("ns")
    rest = present & ~zoned & ~naive
    if rest.any():
        out.iloc[np.flatnonzero(rest)] = pd.to_datetime(text[rest].astype(object), utc=True, errors="coerce", format="mixed")
    return out


def _labels(raw: pd.Series) -> pd.Series:
    """canonical_label per distinct value (few), spread back over the rows."""
    codes, uniques = pd.factorize(raw, use_na_sentinel=True)
    canon = np.array([canonical_label(v) for v in uniques] + [None], dtype=object)
    return pd.Series(canon[codes], index=raw.index).astype(TEXT)


@dataclass
class Prepared:
    """The typed rows GX and the row masks check, and regex verdicts already computed while parsing."""

    frame: pd.DataFrame
    regex_matches: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)


def prepare(spec: DatasetSpec, raw: pd.DataFrame, now: datetime | None = None) -> Prepared:
    """Parse the raw text into typed columns, keeping the text beside them where a check needs it."""
    df = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    matches: dict[tuple[str, str], np.ndarray] = {}
    df[spec.entity_column] = _text(raw[spec.entity_column]).array
    df[EVENT_TIMESTAMP] = _parse_times(_text(raw[EVENT_TIMESTAMP]).reset_index(drop=True)).array
    if INGESTED_AT in raw.columns:
        codes, times = pd.factorize(raw[INGESTED_AT])  # one value per input file: parse those, not every row
        bounds = pd.DatetimeIndex(pd.to_datetime(pd.Series(times, dtype=object), utc=True, format="ISO8601")).as_unit("ns") + CLOCK_SKEW
        if (codes < 0).any():
            raise ValidationFailed(f"{int((codes < 0).sum())} row(s) have no ingestion time")
        df[AS_OF] = bounds.take(codes)
    else:  # a frame that did not come through ingest: the caller's clock is the bound
        df[AS_OF] = pd.Timestamp(now or datetime.now(timezone.utc)).tz_convert("UTC").as_unit("ns") + CLOCK_SKEW
    df[LABEL + RAW] = _labels(raw[spec.label]).array
    for f in spec.numeric:
        text = _text(raw[f.name]).reset_index(drop=True)
        ok = matches[(f.name + RAW, NUMBER_PATTERN)] = _matches(text, NUMBER_PATTERN)
        df[f.name + RAW] = text.array
        df[f.name] = _parse_numbers(text, ok).to_numpy()
    for c in spec.categorical:
        df[c.name] = _text(raw[c.name]).array
    return Prepared(df, matches)


# --- the row masks: each supported expectation type evaluated the way GX's pandas engine does ----


def _columns(exp: dict[str, Any]) -> list[str]:
    kw = exp["kwargs"]
    cols = [kw.get("column"), kw.get("column_A"), kw.get("column_B"), *kw.get("column_list", [])]
    return [c for c in cols if c]


def _mask_not_null(p: Prepared, kw: dict[str, Any]) -> np.ndarray:
    return p.frame[kw["column"]].isna().to_numpy()


def _mask_regex(p: Prepared, kw: dict[str, Any]) -> np.ndarray:
    col = p.frame[kw["column"]]
    present = col.notna().to_numpy()
    matched = p.regex_matches.get((kw["column"], kw["regex"]))
    if matched is None:
        text = col if col.dtype == TEXT else col.astype(str)  # as GX does: astype(str), a no-op on Arrow text
        matched = _matches(text, kw["regex"])
    return present & ~matched


def _mask_in_set(p: Prepared, kw: dict[str, Any]) -> np.ndarray:
    col = p.frame[kw["column"]]
    if kw.get("value_set") is None:
        return np.zeros(len(col), dtype=bool)
    return col.notna().to_numpy() & ~col.isin(kw["value_set"]).to_numpy()


def _mask_between(p: Prepared, kw: dict[str, Any]) -> np.ndarray | None:
    col = p.frame[kw["column"]]
    lo, hi = kw.get("min_value"), kw.get("max_value")
    if (lo is None and hi is None) or not pd.api.types.is_numeric_dtype(col.dtype):
        return None  # GX raises, or compares value by value: take its own row list
    values = col.to_numpy(dtype="float64", na_value=np.nan)
    ok = np.ones(len(values), dtype=bool)
    if lo is not None:
        ok &= values > lo if kw.get("strict_min") else values >= lo
    if hi is not None:
        ok &= values < hi if kw.get("strict_max") else values <= hi
    return ~np.isnan(values) & ~ok


def _mask_unique(p: Prepared, kw: dict[str, Any]) -> np.ndarray | None:
    df, cols = p.frame, kw["column_list"]
    ignore = kw.get("ignore_row_if", "all_values_are_missing")
    if ignore == "never":
        kept = np.ones(len(df), dtype=bool)
    elif ignore in ("all_values_are_missing", "any_value_is_missing"):
        missing = df[cols].isna().to_numpy()
        kept = ~(missing.all(axis=1) if ignore == "all_values_are_missing" else missing.any(axis=1))
    else:
        return None
    sub = df[cols] if kept.all() else df.loc[kept, cols]
    # Rows can share a compound key only if they share its first column: hash that one column first,
    # then the whole key only for the (few) candidates. Same rows as sub.duplicated(keep=False).
    candidates = sub[cols[0]].duplicated(keep=False).to_numpy()
    dup = np.zeros(len(sub), dtype=bool)
    if candidates.any():
        dup[candidates] = sub[candidates].duplicated(keep=False).to_numpy()
    out = np.zeros(len(df), dtype=bool)
    out[kept] = dup
    return out


def _mask_pair_greater(p: Prepared, kw: dict[str, Any]) -> np.ndarray | None:
    a, b = p.frame[kw["column_A"]], p.frame[kw["column_B"]]
    ignore = kw.get("ignore_row_if", "both_values_are_missing")
    missing_a, missing_b = a.isna().to_numpy(), b.isna().to_numpy()
    if ignore == "either_value_is_missing":
        kept = ~(missing_a | missing_b)
    elif ignore == "both_values_are_missing":
        kept = ~(missing_a & missing_b)
    elif ignore == "neither":
        kept = np.ones(len(a), dtype=bool)
    else:
        return None
    ok = (a >= b) if kw.get("or_equal") else (a > b)
    return kept & ~ok.fillna(False).astype(bool).to_numpy()


MASKS = {
    "expect_column_values_to_not_be_null": _mask_not_null,
    "expect_column_values_to_match_regex": _mask_regex,
    "expect_column_values_to_be_in_set": _mask_in_set,
    "expect_column_values_to_be_between": _mask_between,
    "expect_compound_columns_to_be_unique": _mask_unique,
    "expect_column_pair_values_a_to_be_greater_than_b": _mask_pair_greater,
}
# kwargs that change which rows GX counts; an expectation using others has no vectorized twin here
_ROW_KWARGS = {"column", "column_list", "column_A", "column_B", "regex", "value_set", "min_value", "max_value",
               "strict_min", "strict_max", "or_equal", "ignore_row_if", "mostly"}


def has_twin(exp: dict[str, Any], frame: pd.DataFrame) -> bool:
    """Whether the failing rows of `exp` can be computed vectorized here (else GX's COMPLETE row list is used)."""
    if exp["type"] not in MASKS or set(exp["kwargs"]) - _ROW_KWARGS:
        return False
    if exp["type"] == "expect_column_values_to_be_between":
        kw = exp["kwargs"]
        col = kw.get("column")
        return col in frame.columns and pd.api.types.is_numeric_dtype(frame[col].dtype) and (
            kw.get("min_value") is not None or kw.get("max_value") is not None)
    return True


def row_mask(p: Prepared, exp: dict[str, Any]) -> np.ndarray | None:
    """Failing rows of one expectation, vectorized; None when only GX's own row list can say."""
    if not has_twin(exp, p.frame):
        return None
    return MASKS[exp["type"]](p, exp["kwargs"])


# --- GX ----------------------------------------------------------------------------------------


@dataclass
class GxVerdict:
    success: bool
    unexpected_count: int | None
    partial: list[Any]
    index: np.ndarray | None  # failing row positions, only from a COMPLETE run


@contextlib.contextmanager
def _gx_settings() -> Iterator[None]:
    """GX without progress bars or analytics, and without its per-batch DataFrame hash.

    GX hashes every in-memory batch under 1 GB into a batch marker (`pandas_data_fingerprint`) that
    nothing here reads (ingest fingerprints the input files): ~0.5 s per 1M text values. The threshold
    is set to 0 for the duration of the run and restored after. Arrow-backed text stays Arrow-backed
    inside GX (its regex metric calls `astype(str)` first) under pandas' `future.infer_string`.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations.execution_engine.pandas_execution_engine as engine

    saved = engine.HASH_THRESHOLD
    engine.HASH_THRESHOLD = 0
    try:
        with pd.option_context("future.infer_string", True):
            yield
    finally:
        engine.HASH_THRESHOLD = saved


def _batches(expectations: list[dict[str, Any]], complete: set[str]) -> list[tuple[list[str], list[dict[str, Any]], bool]]:
    """Expectations grouped into GX batches: those that read the same field (a column, its raw text twin,
    or columns checked together such as the key and the event time) share a batch of just those columns."""
    parent: dict[str, str] = {}

    def root(name: str) -> str:
        parent.setdefault(name, name)
        while parent[name] != name:
            name = parent[name]
        return name

    for exp in expectations:
        fields = [c.removesuffix(RAW) for c in _columns(exp)]
        for other in fields[1:]:
            parent[root(other)] = root(fields[0])
    batches: dict[tuple[str, bool], tuple[list[str], list[dict[str, Any]], bool]] = {}
    for exp in expectations:
        cols = _columns(exp)
        full = expectation_id(exp) in complete
        cols_, exps, _ = batches.setdefault((root(cols[0].removesuffix(RAW)) if cols else "", full), ([], [], full))
        cols_.extend(c for c in cols if c not in cols_)
        exps.append(exp)
    return list(batches.values())


def run_gx(df: pd.DataFrame, expectations: list[dict[str, Any]], complete: set[str]) -> dict[str, GxVerdict]:
    """Run the suite with GX over every row; per expectation, its verdict and unexpected count.

    Expectations run in batches by the columns they read, each on a frame of just those columns: GX's
    pandas engine copies the whole batch to drop nulls for every expectation, so lean batches save most
    of its time. Expectations in `complete` get result_format COMPLETE (their row list).
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("rows").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    verdicts: dict[str, GxVerdict] = {}
    for n, (cols, exps, full) in enumerate(_batches(expectations, complete)):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValidationFailed(f"expectation(s) {[expectation_id(e) for e in exps]} name column(s) {missing} "
                                   f"that the prepared rows lack; they have: {list(df.columns)}")
        suite = gx.ExpectationSuite(name=f"group-{n}")
        for exp in exps:
            suite.add_expectation_configuration(ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"]))
        suite = context.suites.add(suite)
        # GX does not return results in the suite's order (column-pair expectations come out elsewhere):
        # match each result to its expectation by the id GX gave it.
        ours = {e.id: exp for e, exp in zip(suite.expectations, exps, strict=True)}
        definition = context.validation_definitions.add(gx.ValidationDefinition(name=f"group-{n}", data=batch, suite=suite))
        fmt = {"result_format": "COMPLETE"} if full else {"result_format": "BASIC", "partial_unexpected_count": PARTIAL}
        result = definition.run(batch_parameters={"dataframe": df[list(cols)] if cols else df}, result_format=fmt)
        if len(result.results) != len(exps):
            raise ValidationFailed(f"GX returned {len(result.results)} results for {len(exps)} expectations")
        for res in result.results:
            config = res.expectation_config
            if config is None or config.id not in ours:
                raise ValidationFailed(f"GX returned a result for an expectation it was not given: {config}")
            exp = ours[config.id]
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise ValidationFailed(f"expectation {expectation_id(exp)} could not run: {res.exception_info.get('exception_message')}")
            index = None
            if full:
                index = np.asarray(sorted({int(i) for i in res.result.get("unexpected_index_list") or []}), dtype=np.int64)
            count = res.result.get("unexpected_count")
            verdicts[expectation_id(exp)] = GxVerdict(bool(res.success), None if count is None else int(count),
                                                      list(res.result.get("partial_unexpected_list") or []), index)
    return verdicts


def _same_values(gx_values: list[Any], ours: list[Any]) -> bool:
    def norm(v: Any) -> str:
        if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):  # None, NaN, NaT, pd.NA alike
            return "<null>"
        if isinstance(v, (pd.Timestamp, datetime, np.datetime64)):
            t = pd.Timestamp(v)
            return (t.tz_convert("UTC").tz_localize(None) if t.tz is not None else t).isoformat()
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return [norm(v) for v in gx_values] == [norm(v) for v in ours]


@contextlib.contextmanager
def gx_in_background(p: Prepared, expectations: list[dict[str, Any]], complete: set[str]) -> Iterator[Any]:
    """Start GX on the prepared rows in a second thread; yields its Future.

    While GX runs, this thread computes the row masks and builds the outputs from them: on 2 cores the
    two overlap (Arrow and numpy kernels release the GIL). Nothing leaves `validate` before GX's
    verdicts have been compared with the masks.
    """
    from concurrent.futures import ThreadPoolExecutor

    with _gx_settings(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="gx") as pool:
        yield pool.submit(run_gx, p.frame, expectations, complete)


def cross_check(p: Prepared, expectations: list[dict[str, Any]], masks: dict[str, np.ndarray | None], verdicts: dict[str, GxVerdict]) -> None:
    """Every vectorized mask must flag exactly as many rows as GX counts unexpected, and its first rows
    must hold the values GX lists first (GX reports them in row order); else ValidationFailed."""
    for exp in expectations:
        exp_id = expectation_id(exp)
        verdict, mask = verdicts[exp_id], masks[exp_id]
        if mask is None:
            continue
        positions = np.flatnonzero(mask)
        if verdict.unexpected_count != len(positions):
            raise ValidationFailed(f"row masks and GX disagree on {exp_id}: GX counts {verdict.unexpected_count} "
                                   f"unexpected rows, the vectorized check {len(positions)}")
        cols = _columns(exp)
        if len(cols) == 1 and verdict.partial:
            ours = p.frame[cols[0]].iloc[positions[: len(verdict.partial)]].tolist()
            if not _same_values(verdict.partial, ours):
                raise ValidationFailed(f"row masks and GX disagree on {exp_id}: GX's first unexpected values "
                                       f"{verdict.partial[:5]} are not the masked rows' {ours[:5]}")


def check_rows(p: Prepared, expectations: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, GxVerdict]]:
    """Per expectation, the failing row positions (GX-checked) and GX's verdict: `validate` without the outputs."""
    ids = _unique_ids(expectations)
    complete = {i for i, e in zip(ids, expectations) if not has_twin(e, p.frame)}
    with gx_in_background(p, expectations, complete) as pending:
        masks = {i: row_mask(p, e) for i, e in zip(ids, expectations)}
        verdicts = pending.result()
    cross_check(p, expectations, masks, verdicts)
    return _failing(ids, masks, verdicts), verdicts


def _unique_ids(expectations: list[dict[str, Any]]) -> list[str]:
    ids = [expectation_id(e) for e in expectations]
    if len(set(ids)) != len(ids):
        raise ValidationFailed(f"the suite has two expectations with the same id: {sorted({i for i in ids if ids.count(i) > 1})}")
    return ids


def _failing(ids: list[str], masks: dict[str, np.ndarray | None], verdicts: dict[str, GxVerdict] | None) -> dict[str, np.ndarray]:
    out = {}
    for i in ids:
        mask = masks[i]
        if mask is not None:
            out[i] = np.flatnonzero(mask)
        else:  # no vectorized twin: GX's own row list (COMPLETE)
            index = verdicts[i].index if verdicts else None
            out[i] = index if index is not None else np.zeros(0, dtype=np.int64)
    return out


# --- the outcome ---------------------------------------------------------------------------------


def _object_text(values: Any) -> np.ndarray:
    """Object strings with None for nulls, as the downstream steps read them (Arrow does it in C++)."""

    return _arrow(values).to_numpy()


def validate(
    spec: DatasetSpec,
    raw: pd.DataFrame,
    run_id: str,
    source: str,
    now: datetime | None = None,
    suite: Suite | None = None,
    run_ids: dict[str, str] | None = None,
) -> ValidationOutcome:
    """Check every row of `raw` (ingest's output) against the suite; split it into valid and quarantined.

    `source` names the input for rows without a `source_file` column; `run_ids` maps a source file to
    the run that first validated it (so a rerun writes identical quarantine records), else `run_id`.
    """
    suite = suite or suite_from_spec(spec)
    raw = raw.reset_index(drop=True)
    prepared = prepare(spec, raw, now)
    expectations = suite.expectations
    ids = _unique_ids(expectations)
    complete = {i for i, e in zip(ids, expectations) if not has_twin(e, prepared.frame)}
    with gx_in_background(prepared, expectations, complete) as pending:
        masks = {i: row_mask(prepared, e) for i, e in zip(ids, expectations)}
        failing = _failing(ids, masks, pending.result() if complete else None)
        outcome = _outcome(spec, suite, raw, prepared.frame, failing, run_id, source, run_ids)
        verdicts = pending.result()
    cross_check(prepared, expectations, masks, verdicts)
    outcome.verdicts = {k: v.success for k, v in verdicts.items()}
    check_conservation(raw, outcome, source)
    return outcome


def _outcome(spec: DatasetSpec, suite: Suite, raw: pd.DataFrame, df: pd.DataFrame, failing: dict[str, np.ndarray],
             run_id: str, source: str, run_ids: dict[str, str] | None) -> ValidationOutcome:
    bad = np.zeros(len(df), dtype=bool)
    for positions in failing.values():
        bad[positions] = True
    bad_positions = np.flatnonzero(bad)
    slot = np.full(len(df), -1, dtype=np.int64)
    slot[bad_positions] = np.arange(len(bad_positions))
    reasons: list[list[str]] = [[] for _ in range(len(bad_positions))]
    for exp_id, positions in failing.items():  # in suite order, so reasons read the same every run
        for s in slot[positions]:
            reasons[s].append(exp_id)

    has_files = SOURCE_FILE in raw.columns
    files = raw[SOURCE_FILE] if has_files else pd.Series(source, index=raw.index, dtype=object)
    # Explicit object dtypes throughout: GX may be running with pandas' `future.infer_string` on.
    bad_raw = raw.iloc[bad_positions].drop(columns=[c for c in (SOURCE_FILE, INGESTED_AT) if c in raw.columns])
    index = pd.RangeIndex(len(bad_positions))
    columns = {c: pd.Series(_object_text(bad_raw[c].array) if bad_raw[c].dtype == TEXT or bad_raw[c].dtype == object
                            else bad_raw[c].to_numpy(), index=index, dtype=None if bad_raw[c].dtype.kind in "iufb" else object)
               for c in bad_raw.columns}
    bad_files = _object_text(files.iloc[bad_positions].array) if has_files else np.full(len(bad_positions), source, dtype=object)
    columns["failed_expectations"] = pd.Series(["; ".join(r) for r in reasons], index=index, dtype=object)
    columns["source"] = pd.Series(bad_files, index=index, dtype=object)
    columns["run_id"] = pd.Series([(run_ids or {}).get(f, run_id) for f in bad_files], index=index, dtype=object)
    quarantined = pd.DataFrame(columns, index=index)

    good = np.flatnonzero(~bad)
    valid_table = _valid_table(spec, df, raw, good, files if has_files else None, source)
    first = sorted({int(i) for positions in failing.values() for i in positions[:3]})
    sample = raw.iloc[first].drop(columns=[c for c in (INGESTED_AT,) if c in raw.columns]).astype(object)
    sample = sample.where(sample.notna(), None)  # the report shows a missing value as missing, not as the text "nan"
    row_of = dict(zip(first, sample.to_dict("records")))
    examples = {k: [row_of[int(i)] for i in v[:3]] for k, v in failing.items() if len(v)}
    outcome = ValidationOutcome(
        valid_table=valid_table,
        quarantined=quarantined,
        failures={k: int(len(v)) for k, v in failing.items()},
        suite=suite.expectations,
        examples=examples,
        suite_version=suite.version,
        per_file=_per_file(files, bad),
    )
    return outcome


def _valid_table(spec: DatasetSpec, df: pd.DataFrame, raw: pd.DataFrame, good: np.ndarray, files: pd.Series | None, source: str) -> Any:
    """The valid rows as an Arrow table, typed: text stays Arrow text, numbers float64, label int8."""
    import pyarrow as pa

    take = pa.array(good)

    def text(values: Any) -> Any:
        return _arrow(values).take(take)

    positive = canonical_label(spec.positive)
    columns = {
        spec.entity_column: text(df[spec.entity_column].array),
        EVENT_TIMESTAMP: pa.array(df[EVENT_TIMESTAMP].array).take(take),
        **{f.name: pa.array(df[f.name].to_numpy(dtype="float64")[good]) for f in spec.numeric},
        **{c.name: text(df[c.name].array) for c in spec.categorical},
        LABEL: pa.array((df[LABEL + RAW].to_numpy(dtype=object, na_value=None)[good] == positive).astype("int8")),
        SOURCE_LINE: pa.array(raw[SOURCE_LINE].to_numpy(dtype="int64")[good]),
        SOURCE_FILE: text(files.array) if files is not None else pa.array([source] * len(good), type=pa.string()),
    }
    return pa.table(columns)


def _per_file(files: pd.Series, bad: np.ndarray) -> list[dict[str, Any]]:
    codes, names = pd.factorize(files)
    rows = np.bincount(codes, minlength=len(names))
    quarantined = np.bincount(codes, weights=bad, minlength=len(names)).astype(int)
    return [{"file": str(f), "rows": int(r), "valid": int(r - q), "quarantined": int(q)} for f, r, q in zip(names, rows, quarantined)]


def check_conservation(raw: pd.DataFrame, outcome: ValidationOutcome, source: str = "") -> None:
    """Rows in = valid + quarantined, and every input row is in exactly one of them (by file and line)."""
    import pyarrow.compute as pc

    rows_in = len(raw)
    if outcome.rows != rows_in:
        raise ValidationFailed(f"rows lost: {rows_in} in, {outcome.valid_table.num_rows} valid + {len(outcome.quarantined)} quarantined")
    files_in = _arrow(raw[SOURCE_FILE].array) if SOURCE_FILE in raw.columns else _arrow([source] * rows_in)
    names = pc.unique(files_in)

    def refs(files: Any, lines: Any) -> np.ndarray:
        files = _arrow(files)
        if len(names) == 1:  # the common case: compare, rather than hash, a million copies of one name
            if files.null_count or not pc.all(pc.equal(files, names[0])).as_py() and len(files):
                raise ValidationFailed("output rows name a source file that is not in the input")
            codes = np.zeros(len(files), dtype=np.int64)
        else:
            found = pc.index_in(files, value_set=names)
            if found.null_count:
                raise ValidationFailed("output rows name a source file that is not in the input")
            codes = found.to_numpy(zero_copy_only=False).astype(np.int64)
        return (codes << 32) | np.asarray(lines, dtype=np.int64)

    valid = outcome.valid_table
    keys_in = refs(files_in, raw[SOURCE_LINE].to_numpy())
    keys_out = np.concatenate([
        refs(valid.column(SOURCE_FILE).combine_chunks(), valid.column(SOURCE_LINE).to_numpy()),
        refs(outcome.quarantined["source"].to_numpy(dtype=object), outcome.quarantined[SOURCE_LINE].to_numpy()),
    ])
    duplicated_in, same = _compare_refs(keys_in, keys_out, len(names))
    if duplicated_in:
        raise ValidationFailed("the input has two rows with the same source file and line")
    if not same:
        # same count, so some input row is missing and another appears twice (valid and quarantined)
        raise ValidationFailed("the valid and quarantined rows are not the input rows: a row was lost or is both valid and quarantined")


def _compare_refs(keys_in: np.ndarray, keys_out: np.ndarray, files: int) -> tuple[bool, bool]:
    """(an input key occurs twice, the output keys are exactly the input keys). Keys are file code << 32 | line.

    Lines are 1..rows per file, so the keys fill a small dense range: counting them (bincount, linear)
    decides both questions at a tenth of the cost of sorting; sparse keys fall back to sorting.
    """
    if len(keys_in) == 0:
        return False, len(keys_out) == 0
    lines_in, lines_out = keys_in & 0xFFFFFFFF, keys_out & 0xFFFFFFFF
    stride = int(max(lines_in.max(), lines_out.max() if len(keys_out) else 0)) + 1
    if min(lines_in.min(), lines_out.min() if len(keys_out) else 0) >= 0 and files * stride <= 4 * len(keys_in) + 1024:
        dense_in = (keys_in >> 32) * stride + lines_in
        dense_out = (keys_out >> 32) * stride + lines_out
        counts_in = np.bincount(dense_in, minlength=files * stride)
        if counts_in.max() > 1:
            return True, False
        return False, np.array_equal(counts_in, np.bincount(dense_out, minlength=files * stride))
    sorted_in = np.sort(keys_in)
    if len(sorted_in) > 1 and (np.diff(sorted_in) == 0).any():
        return True, False
    return False, np.array_equal(sorted_in, np.sort(keys_out))


def enforce_threshold(spec: DatasetSpec, outcome: ValidationOutcome) -> str | None:
    """Raise when too many rows failed; return a warning when some did."""
    if outcome.bad_fraction > spec.max_bad_fraction:
        worst = sorted(outcome.failures.items(), key=lambda kv: -kv[1])[:3]
        raise ValidationFailed(
            f"{outcome.bad_fraction:.1%} of rows failed validation, above the limit of {spec.max_bad_fraction:.1%};"
            f" most failures: {', '.join(f'{k}: {v}' for k, v in worst)}"
        )
    if len(outcome.quarantined):
        return f"{len(outcome.quarantined)} of {outcome.rows} rows quarantined ({outcome.bad_fraction:.2%})"
    return None


def report_html(spec: DatasetSpec, outcome: ValidationOutcome, source: str, lineage: dict[str, Any] | None = None) -> str:
    """The step's HTML report; built in components/data/report.py (imported here, not at the top, as it imports this module)."""
    from components.data.report import report_html as render

    return render(spec, outcome, source, lineage)
