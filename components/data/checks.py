"""Checking rows without GX: ingest's text parsed into typed columns, and each expectation's failing rows.

`prepare` turns the raw text into the typed frame that both GX and the row masks check (keeping the
text beside a parsed column where a check needs it); `row_mask` evaluates one expectation vectorized,
the way GX's pandas engine does. gx.py checks that every mask agrees with GX's own counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import EVENT_TIMESTAMP, LABEL, DatasetSpec
from components.data.outcome import ValidationFailed
from components.data.suite import AS_OF, CLOCK_SKEW, INGESTED_AT, NUMBER_PATTERN, RAW, canonical_label

# Text stored as Arrow strings: regex, isin and null checks run in Arrow's C++ kernels (GX included).
TEXT = pd.StringDtype("pyarrow", na_value=np.nan)


def to_arrow(values: Any) -> Any:
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

    candidates = to_arrow(text.where(ok).array)
    try:  # Arrow's parser takes every string the pattern accepts; pandas is the slow fallback
        parsed = pc.cast(pc.utf8_trim_whitespace(candidates), pa.float64())
        return pd.Series(parsed.to_numpy(zero_copy_only=False), index=text.index, dtype="float64")
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return pd.to_numeric(text.where(ok).astype(object), errors="coerce").astype("float64")


_ISO_ZONED = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:?\d{2})$"
_ISO_NAIVE = r"^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)?$"


def parse_times(text: pd.Series) -> pd.Series:
    """Text -> UTC timestamps (naive ones are taken as UTC); NaT where it is not a date.

    ISO 8601 text (nearly all data) is cast by Arrow; anything else goes through pandas' flexible parser,
    ~50x slower per value, which accepts e.g. "01/02/2026 10:00" as the step always has.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    try:  # the common case, every value ISO 8601 with a zone: one Arrow cast, nulls kept
        cast = pc.cast(to_arrow(text.array), pa.timestamp("ns", "UTC"))
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
            values = pd.DatetimeIndex(pc.cast(to_arrow(part.array), arrow_type).to_pandas())
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
    df[EVENT_TIMESTAMP] = parse_times(_text(raw[EVENT_TIMESTAMP]).reset_index(drop=True)).array
    if INGESTED_AT in raw.columns:
        codes, times = pd.factorize(raw[INGESTED_AT])  # one value per input file: parse those, not every row
        bounds = pd.DatetimeIndex(pd.to_datetime(pd.Series(times, dtype=object), utc=True, format="ISO8601")).as_unit("ns") + CLOCK_SKEW
        if (codes < 0).any():
            raise ValidationFailed(f"{int((codes < 0).sum())} row(s) have no ingestion time")
        df[AS_OF] = bounds.take(codes)
    else:  # a frame that did not come through ingest: the caller's clock is the bound
        df[AS_OF] = pd.Timestamp(now or datetime.now(UTC)).tz_convert("UTC").as_unit("ns") + CLOCK_SKEW
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
# kwargs that change which rows GX counts; an expectation using others has no vectorized twin here (nor a Spark
# one: spark_checks.py reads this set too)
ROW_KWARGS = frozenset(
    {
        "column",
        "column_list",
        "column_A",
        "column_B",
        "regex",
        "value_set",
        "min_value",
        "max_value",
        "strict_min",
        "strict_max",
        "or_equal",
        "ignore_row_if",
        "mostly",
    }
)


def has_twin(exp: dict[str, Any], frame: pd.DataFrame) -> bool:
    """Whether the failing rows of `exp` can be computed vectorized here (else GX's COMPLETE row list is used)."""
    if exp["type"] not in MASKS or set(exp["kwargs"]) - ROW_KWARGS:
        return False
    if exp["type"] == "expect_column_values_to_be_between":
        kw = exp["kwargs"]
        col = kw.get("column")
        return (
            col in frame.columns
            and pd.api.types.is_numeric_dtype(frame[col].dtype)
            and (kw.get("min_value") is not None or kw.get("max_value") is not None)
        )
    return True


def row_mask(p: Prepared, exp: dict[str, Any]) -> np.ndarray | None:
    """Failing rows of one expectation, vectorized; None when only GX's own row list can say."""
    if not has_twin(exp, p.frame):
        return None
    return MASKS[exp["type"]](p, exp["kwargs"])
