"""The row checks of checks.py on Spark: ingest's text parsed into typed columns, and each expectation's
failing rows as a Spark column expression, evaluated by the executors.

Same verdict per row as the pandas engine: `prepare_spark` builds the columns `checks.prepare` builds
(same names), and `spark_masks` gives, per expectation, a boolean column that is true exactly where
`checks.row_mask` is. Where the two engines' primitives could disagree the parsing is the pandas one:
event times go through `checks.parse_times` (pandas' flexible parser reads "01/11/2026 10:00"; Spark's
casts do not) in a pandas UDF, so they are parsed on the executors by the same code. Numbers are a
Spark cast behind the same number pattern (the pattern admits only text both casts read alike).

Known limits of parity: Spark's regexes are Java's, not RE2 (Arrow's): `\\s` also matches a vertical tab
(so " 5<VT>" is a number here and not on pandas; GX on Spark agrees with this engine, so the cross-check
does not catch it), `$` also matches before a final newline (custom patterns only: the number pattern
allows trailing whitespace anyway). Spark timestamps are microseconds: event times that differ only in
nanoseconds are the same key here, and a valid row's time loses its nanoseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import EVENT_TIMESTAMP, LABEL, DatasetSpec
from components.data.checks import ROW_KWARGS
from components.data.outcome import ValidationFailed
from components.data.suite import AS_OF, CLOCK_SKEW, INGESTED_AT, NUMBER_PATTERN, RAW, expectation_id

POS = "__pos"  # a row's position in the input (the order pandas keeps and the outputs come back in)
IN = "__in__"  # prefix of the input's columns carried beside the prepared ones (the quarantine writes them as they came)

_NUMERIC = ("double", "float", "int", "bigint", "smallint", "tinyint")  # Spark's simple type names; decimal(p,s) too


def source(name: str) -> str:
    """The carried copy of input column `name`."""
    return IN + name


def _time_udf() -> Any:
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import TimestampType

    from components.data.checks import TEXT, parse_times

    # pandas_udf reads the hints (resolved in this module's globals, hence pandas imported at the top)
    @pandas_udf(TimestampType())  # type: ignore[call-overload]
    def times(text: pd.Series) -> pd.Series:
        return parse_times(text.astype(TEXT).reset_index(drop=True))

    return times


def _label_udf() -> Any:
    from pyspark.sql.functions import pandas_udf
    from pyspark.sql.types import StringType

    from components.data.suite import canonical_label

    @pandas_udf(StringType())  # type: ignore[call-overload]
    def labels(raw: pd.Series) -> pd.Series:
        # canonical_label per distinct value in the batch (labels are few), spread back over the rows
        codes, uniques = pd.factorize(raw, use_na_sentinel=True)
        canon = np.array([canonical_label(v) for v in uniques] + [None], dtype=object)
        return pd.Series(canon[codes], index=raw.index, dtype=object)

    return labels


def _as_of(frame: Any, now: datetime | None) -> Any:
    """The latest event time a row may have: its file's first ingestion + the clock skew (as checks.prepare)."""
    from pyspark.sql import functions as F

    if INGESTED_AT not in frame.columns:  # a frame that did not come through ingest: the caller's clock is the bound
        bound = pd.Timestamp(now or datetime.now(UTC)).tz_convert("UTC") + CLOCK_SKEW
        return F.lit(bound.to_pydatetime())
    # one value per input file: parse those few on the driver, as pandas does, and look each row's up
    times = [r[0] for r in frame.select(INGESTED_AT).distinct().collect()]
    if None in times:
        missing = frame.filter(F.col(INGESTED_AT).isNull()).count()
        raise ValidationFailed(f"{missing} row(s) have no ingestion time")
    bounds = pd.DatetimeIndex(pd.to_datetime(pd.Series(times, dtype=object), utc=True, format="ISO8601")) + CLOCK_SKEW
    pairs = [x for t, b in zip(times, bounds) for x in (F.lit(t), F.lit(b.to_pydatetime()))]
    return F.create_map(*pairs)[F.col(INGESTED_AT)]


def prepare_spark(spec: DatasetSpec, frame: Any, now: datetime | None = None) -> Any:
    """Ingest's rows (text, plus POS) -> the typed columns checks.prepare makes, plus every input column as IN+name."""
    from pyspark.sql import functions as F

    def text(name: str) -> Any:
        return F.col(name).cast("string")

    columns = [F.col(POS)]
    columns += [F.col(c).alias(source(c)) for c in frame.columns if c != POS]
    columns.append(text(spec.entity_column).alias(spec.entity_column))
    columns.append(_time_udf()(text(EVENT_TIMESTAMP)).alias(EVENT_TIMESTAMP))
    columns.append(_as_of(frame, now).alias(AS_OF))
    columns.append(_label_udf()(text(spec.label)).alias(LABEL + RAW))
    for f in spec.numeric:
        raw = text(f.name)
        columns.append(raw.alias(f.name + RAW))
        # the pattern admits signed decimals and exponents only (no "NaN", "inf", "1d"); the cast trims the padding
        columns.append(F.when(raw.rlike(NUMBER_PATTERN), raw.cast("double")).alias(f.name))
    for c in spec.categorical:
        columns.append(text(c.name).alias(c.name))
    return frame.select(*columns)


# --- the row masks: true where the pandas twin in checks.py is true -----------------------------------


def _not_null(kw: dict[str, Any], types: dict[str, str]) -> Any:
    from pyspark.sql import functions as F

    c = F.col(kw["column"])
    return c.isNull() | F.isnan(c) if types[kw["column"]] in ("double", "float") else c.isNull()


def _regex(kw: dict[str, Any], types: dict[str, str]) -> Any:
    from pyspark.sql import functions as F

    c = F.col(kw["column"])
    return c.isNotNull() & ~c.cast("string").rlike(kw["regex"])


def _in_set(kw: dict[str, Any], types: dict[str, str]) -> Any:
    from pyspark.sql import functions as F

    if kw.get("value_set") is None:
        return F.lit(False)
    c = F.col(kw["column"])
    return c.isNotNull() & ~c.isin(list(kw["value_set"]))


def _between(kw: dict[str, Any], types: dict[str, str]) -> Any:
    from pyspark.sql import functions as F

    c = F.col(kw["column"]).cast("double")
    lo, hi = kw.get("min_value"), kw.get("max_value")
    ok = F.lit(True)
    if lo is not None:
        ok = ok & (c > lo if kw.get("strict_min") else c >= lo)
    if hi is not None:
        ok = ok & (c < hi if kw.get("strict_max") else c <= hi)
    return c.isNotNull() & ~F.isnan(c) & ~ok


def _unique(kw: dict[str, Any], types: dict[str, str]) -> Any:
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    cols = [F.col(c) for c in kw["column_list"]]
    ignore = kw.get("ignore_row_if", "all_values_are_missing")
    missing = [c.isNull() for c in cols]
    if ignore == "never":
        kept = F.lit(True)
    elif ignore == "all_values_are_missing":
        kept = ~_all(missing)
    else:  # any_value_is_missing
        kept = ~_any(missing)
    # nulls group together in a window partition, as pandas' duplicated() treats missing values as equal
    count = F.count(F.lit(1)).over(Window.partitionBy(kept, *cols))
    return kept & (count > 1)


def _pair_greater(kw: dict[str, Any], types: dict[str, str]) -> Any:
    from pyspark.sql import functions as F

    a, b = F.col(kw["column_A"]), F.col(kw["column_B"])
    ignore = kw.get("ignore_row_if", "both_values_are_missing")
    if ignore == "either_value_is_missing":
        kept = a.isNotNull() & b.isNotNull()
    elif ignore == "both_values_are_missing":
        kept = a.isNotNull() | b.isNotNull()
    else:  # neither
        kept = F.lit(True)
    ok = (a >= b) if kw.get("or_equal") else (a > b)
    return kept & ~F.coalesce(ok, F.lit(False))


def _all(items: list[Any]) -> Any:
    out = items[0]
    for item in items[1:]:
        out = out & item
    return out


def _any(items: list[Any]) -> Any:
    out = items[0]
    for item in items[1:]:
        out = out | item
    return out


MASKS = {
    "expect_column_values_to_not_be_null": _not_null,
    "expect_column_values_to_match_regex": _regex,
    "expect_column_values_to_be_in_set": _in_set,
    "expect_column_values_to_be_between": _between,
    "expect_compound_columns_to_be_unique": _unique,
    "expect_column_pair_values_a_to_be_greater_than_b": _pair_greater,
}
_IGNORE = {
    "expect_compound_columns_to_be_unique": ("all_values_are_missing", "any_value_is_missing", "never"),
    "expect_column_pair_values_a_to_be_greater_than_b": ("either_value_is_missing", "both_values_are_missing", "neither"),
}


def why_no_twin(exp: dict[str, Any], types: dict[str, str]) -> str | None:
    """Why `exp` has no Spark twin here (the pandas engine would take GX's COMPLETE row list), else None."""
    kind, kw = exp["type"], exp["kwargs"]
    if kind not in MASKS:
        return f"expectation type {kind} has no Spark row check"
    extra = sorted(set(kw) - ROW_KWARGS)
    if extra:
        return f"expectation type {kind} with {extra} has no Spark row check"
    missing = [c for c in (kw.get("column"), kw.get("column_A"), kw.get("column_B"), *kw.get("column_list", [])) if c and c not in types]
    if missing:
        return f"expectation {expectation_id(exp)} names column(s) {missing} that the prepared rows lack; they have: {sorted(types)}"
    if kind in _IGNORE and kw.get("ignore_row_if", _IGNORE[kind][0]) not in _IGNORE[kind]:
        return f"expectation type {kind} with ignore_row_if={kw['ignore_row_if']!r} has no Spark row check"
    if kind == "expect_column_values_to_be_between":
        numeric = types[kw["column"]] in _NUMERIC or types[kw["column"]].startswith("decimal")
        if not numeric or (kw.get("min_value") is None and kw.get("max_value") is None):
            return f"expectation type {kind} on {kw['column']} (not a number column, or no bound) has no Spark row check"
    return None


def spark_masks(expectations: list[dict[str, Any]], prepared: Any) -> dict[str, Any]:
    """Per expectation id (suite order), a never-null boolean column: true where the row fails it.

    An expectation without a Spark twin stops the run naming its type: skipping it would pass rows
    the pandas engine quarantines.
    """
    from pyspark.sql import functions as F

    types = dict(prepared.dtypes)
    out: dict[str, Any] = {}
    for exp in expectations:
        why = why_no_twin(exp, types)
        if why:
            raise ValidationFailed(f"engine spark: {why}; run it with MLWF_ENGINE=pandas")
        out[expectation_id(exp)] = F.coalesce(MASKS[exp["type"]](exp["kwargs"], types), F.lit(False))
    return out
