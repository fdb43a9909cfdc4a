"""The validation step's HTML report: the verdict, every check with its failing rows, and example rows.

It reads a `ValidationOutcome` (components/data/outcome.py) and computes nothing new, so it cannot disagree
with what went to quarantine. Columns are named as the user's data names them: the pipeline renames
the timestamp to `event_timestamp`, checks the label's and numbers' text in `<name>__raw` twins and
bounds event times by an `as_of` column; none of those internal names is shown. Example rows carry
their whole source file path and line, with the failing value highlighted.
"""

from __future__ import annotations

from typing import Any

from components.core.report_style import Cell, Html, banner, code, count, join, key_values, page, table, tag, value_text
from components.core.spec import EVENT_TIMESTAMP, GENERATED_ENTITY, LABEL, SOURCE_LINE, DatasetSpec
from components.data.outcome import ValidationOutcome
from components.data.suite import AS_OF, CLOCK_SKEW, NUMBER_PATTERN, RAW, SOURCE_FILE, expectation_columns, expectation_id

MAX_SET_VALUES = 12  # an allowed-values list longer than this is shown by its start and its length


def user_column(spec: DatasetSpec, name: str) -> str:
    """The name a reader knows a checked column by: the spec's (the user's data's), not the pipeline's."""
    base = name.removesuffix(RAW)
    if base == EVENT_TIMESTAMP:
        return spec.timestamp or "ingestion time (the data has no timestamp column)"
    if base == AS_OF:
        return "the file's first ingestion time"
    if base == LABEL:
        return spec.label
    if base == SOURCE_LINE:
        return "line"
    if base == SOURCE_FILE:
        return "file"
    if base == GENERATED_ENTITY and spec.entity is None:
        return "generated row id"
    return base


def raw_column(spec: DatasetSpec, name: str) -> str:
    """The column of an example row (ingest's output) that holds the value a check looked at."""
    base = name.removesuffix(RAW)
    if base in (EVENT_TIMESTAMP, AS_OF):  # the future-time check compares the event time with a per-file bound
        return EVENT_TIMESTAMP
    if base == LABEL:
        return spec.label
    return base


def _columns_of(spec: DatasetSpec, exp: dict[str, Any]) -> list[str]:
    """The user's names of the data columns a check is about (the per-file time bound is not one)."""
    names = [user_column(spec, c) for c in expectation_columns(exp) if c.removesuffix(RAW) != AS_OF]
    return list(dict.fromkeys(names))


def _number(value: Any) -> str:
    """A bound as a person writes it: 1,000,000 rather than 1e+06 or 1000000.0."""
    if isinstance(value, (int, float)) and float(value).is_integer():
        return f"{int(value):,}"
    return str(value)


def describe(spec: DatasetSpec, exp: dict[str, Any]) -> str:
    """A check in words, with the user's column names."""
    kind, kw = exp["type"], exp["kwargs"]
    if kind == "expect_column_values_to_not_be_null":
        return "must not be missing"
    if kind == "expect_column_values_to_match_regex":
        return "must be a number" if kw.get("regex") == NUMBER_PATTERN else f"must match the pattern {kw.get('regex')}"
    if kind == "expect_column_values_to_be_in_set":
        values = [str(v) for v in kw.get("value_set") or []]
        shown = ", ".join(values[:MAX_SET_VALUES])
        more = f", … ({len(values)} values)" if len(values) > MAX_SET_VALUES else ""
        return f"must be one of: {shown}{more}"
    if kind == "expect_column_values_to_be_between":
        lo, hi = kw.get("min_value"), kw.get("max_value")
        if lo is not None and hi is not None:
            return f"must be between {_number(lo)} and {_number(hi)}"
        return f"must be at least {_number(lo)}" if lo is not None else f"must be at most {_number(hi)}"
    if kind == "expect_compound_columns_to_be_unique":
        return "must be unique together: one row each"
    if kind == "expect_column_pair_values_a_to_be_greater_than_b":
        if kw.get("column_A") == AS_OF:
            return (
                f"must not be later than its file's first ingestion "
                f"(+{int(CLOCK_SKEW.total_seconds() // 60)} min clock skew): no timestamps in the future"
            )
        sign = "≥" if kw.get("or_equal") else ">"
        return f"{user_column(spec, kw['column_A'])} must be {sign} {user_column(spec, kw['column_B'])}"
    # a hand-added expectation: its type and arguments, columns by the user's names
    args = ", ".join(f"{k}={user_column(spec, v) if k.startswith('column') and isinstance(v, str) else v}" for k, v in sorted(kw.items()))
    return f"{kind}({args})"


def _pct(fraction: float) -> str:
    text = f"{fraction * 100:.2f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _status(spec: DatasetSpec, outcome: ValidationOutcome) -> str:
    # the same rule as validate.enforce_threshold, which fails the run after this report is written
    if outcome.bad_fraction > spec.max_bad_fraction:
        return "fail"
    return "warn" if len(outcome.quarantined) else "pass"


def _example_table(spec: DatasetSpec, exp: dict[str, Any], rows: list[dict[str, Any]], source: str) -> Html:
    """Example failing rows: whole file path and line, then the user's columns, the checked value(s) highlighted."""
    failing = {raw_column(spec, c) for c in expectation_columns(exp)}
    columns = [spec.entity_column]
    if spec.timestamp is not None or EVENT_TIMESTAMP in failing:
        columns.append(EVENT_TIMESTAMP)
    columns += [spec.label, *spec.feature_names]
    header = ["file", "line", *[Cell(user_column(spec, c), "bad" if c in failing else "") for c in columns]]
    body = [
        [
            code(row.get(SOURCE_FILE) or source),
            Cell(row.get(SOURCE_LINE), "num"),
            *[Cell(value_text(row.get(c)), "bad" if c in failing else "") for c in columns],
        ]
        for row in rows
    ]
    return table(header, body)


def _privacy_note(spec: DatasetSpec) -> str:
    """Personal columns (privacy.pii) never reach the examples: ingest dropped them or replaced the entity key
    by its keyed hash (components/core/privacy.py); the file and line lead a data steward to the clear row."""
    if not spec.pii:
        return ""
    hashed = f" {spec.entity} is shown as its keyed hash (HMAC-SHA256)." if spec.hashed_entity else ""
    return f" Personal columns ({', '.join(spec.pii)}) are never shown:{hashed or ' they were dropped at ingest.'}"


def report_html(spec: DatasetSpec, outcome: ValidationOutcome, source: str, lineage: dict[str, Any] | None = None) -> str:
    status = _status(spec, outcome)
    rows, quarantined = outcome.rows, len(outcome.quarantined)
    valid = rows - quarantined
    within = status != "fail"
    failed = [(i, exp) for i, exp in enumerate(outcome.suite) if outcome.failures.get(expectation_id(exp), 0)]

    def label(exp: dict[str, Any]) -> str:
        return ", ".join(_columns_of(spec, exp)) or "(whole row)"

    lines: list[Any] = [
        (
            f"{count(valid)} of {count(rows)} rows valid; {count(quarantined)} quarantined ({_pct(outcome.bad_fraction)}), "
            f"{'within' if within else 'above'} the limit of {_pct(spec.max_bad_fraction)}"
            f"{'.' if within else ': the run stops here and no model is trained on this data.'}"
        )
    ]
    if failed:
        worst = sorted(failed, key=lambda ie: -outcome.failures[expectation_id(ie[1])])[:3]
        lines.append(
            "Most failures: "
            + "; ".join(f"{label(exp)} {describe(spec, exp)} ({count(outcome.failures[expectation_id(exp)])} rows)" for _, exp in worst)
            + "."
        )
    head = banner(status, f"Validation of {spec.name}: {'FAIL' if status == 'fail' else 'PASS'}", lines)

    intro = tag(
        "p",
        join(
            [
                "Source: ",
                code(source),
                "; suite version ",
                code(outcome.suite_version),
                (
                    f". Every row was checked against {len(outcome.suite)} expectations by Great Expectations; the failing "
                    "rows per check agree exactly with GX's own unexpected counts. A row that fails any check is "
                    "quarantined with its reasons; the rest go on."
                ),
            ]
        ),
    )

    check_rows, classes = [], []
    for i, exp in enumerate(outcome.suite):
        exp_id = expectation_id(exp)
        n = outcome.failures.get(exp_id, 0)
        why = (exp.get("meta") or {}).get("why", "")
        rule = join([describe(spec, exp), Html("<br>"), tag("small", join([code(exp["type"]), f" {why}" if why else ""]))])
        verdict = "pass" if outcome.verdicts.get(exp_id, n == 0) else "FAIL"
        rows_cell = tag("a", count(n), href=f"#check-{i}") if n else count(n)
        check_rows.append([tag("b", label(exp)), rule, verdict, Cell(rows_cell, "num")])
        classes.append("fail" if n else "")
    checks = table(["column", "check", "GX verdict", "failing rows"], check_rows, classes, numeric=[3])

    examples = []
    for i, exp in failed:
        exp_id = expectation_id(exp)
        shown = outcome.examples.get(exp_id, [])
        title = tag("h3", f"{label(exp)}: {describe(spec, exp)}", id=f"check-{i}")
        note = tag(
            "p",
            f"{count(outcome.failures[exp_id])} rows fail this check" + (f"; the first {len(shown)} in input order:" if shown else "."),
            "note",
        )
        examples.append(Html(title + note + (_example_table(spec, exp, shown, source) if shown else "")))
    store = (lineage or {}).get("quarantine_store")
    where = (
        tag(
            "p",
            join(["Every quarantined row, with the checks it failed, its source file and line and the run id, is in ", code(store), "."]),
            "note",
        )
        if store
        else ""
    )
    line_note = tag(
        "p",
        "line: the line in the CSV file (the header is line 1); for a Parquet file, the row's position "
        "counted from 0. The highlighted cell is the value the check is about." + _privacy_note(spec),
        "note",
    )

    files = table(
        ["file", "rows", "valid", "quarantined"],
        [[code(f["file"]), count(f["rows"]), count(f["valid"]), count(f["quarantined"])] for f in outcome.per_file],
        ["fail" if f["quarantined"] else "" for f in outcome.per_file],
        numeric=[1, 2, 3],
    )
    return page(
        f"Validation: {spec.name}",
        head,
        intro,
        tag("h2", "Checks"),
        checks,
        *([tag("h2", "Failing rows"), line_note, where, *examples] if failed else []),
        tag("h2", "Input files"),
        files,
        tag("h2", "Lineage"),
        key_values(lineage or {}),
    )
