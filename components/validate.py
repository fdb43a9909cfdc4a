"""Validate: every record checked by a Great Expectations 1.x suite built from the dataset spec.

Rows that fail any expectation go to quarantine with the reason(s), the source line and the run id;
the rest go on, typed. Nothing is dropped silently: rows in = valid + quarantined, checked every run.
"""

from __future__ import annotations

import html
import io
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd

from components import storage
from components.spec import EVENT_TIMESTAMP, LABEL, SOURCE_LINE, DatasetSpec

NUMBER_PATTERN = r"^\s*[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$"
RAW = "__raw"  # suffix of the text columns kept beside their parsed twins


class ValidationFailed(RuntimeError):
    """Too many rows failed validation, or rows were lost between input and output."""


@dataclass
class ValidationOutcome:
    valid: pd.DataFrame
    quarantined: pd.DataFrame
    failures: dict[str, int]  # expectation id -> failing rows
    suite: list[dict[str, Any]]
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(self.valid) + len(self.quarantined)

    @property
    def bad_fraction(self) -> float:
        return len(self.quarantined) / self.rows if self.rows else 0.0


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


def build_suite(spec: DatasetSpec, now: datetime) -> list[dict[str, Any]]:
    """The expectations for a spec, as plain data (type + kwargs) so they can be written out and diffed."""
    key = spec.entity_column
    exps: list[dict[str, Any]] = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": key}},
        {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": [key, EVENT_TIMESTAMP]}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": EVENT_TIMESTAMP}},
        {
            "type": "expect_column_values_to_be_between",
            "kwargs": {"column": EVENT_TIMESTAMP, "max_value": (now + timedelta(minutes=5)).isoformat()},
            "meta": {"why": "timestamps in the future"},
        },
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": LABEL + RAW}},
    ]
    if spec.negative is not None:
        allowed = [canonical_label(spec.positive), canonical_label(spec.negative)]
        exps.append({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": LABEL + RAW, "value_set": allowed}})
    for f in spec.numeric:
        if not f.nullable:
            exps.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": f.name + RAW}})
        exps.append({"type": "expect_column_values_to_match_regex", "kwargs": {"column": f.name + RAW, "regex": NUMBER_PATTERN}})
        if f.min is not None or f.max is not None:
            exps.append(
                {"type": "expect_column_values_to_be_between", "kwargs": {"column": f.name, "min_value": f.min, "max_value": f.max}}
            )
    for c in spec.categorical:
        if not c.nullable:
            exps.append({"type": "expect_column_values_to_not_be_null", "kwargs": {"column": c.name}})
        if c.values is not None:
            exps.append({"type": "expect_column_values_to_be_in_set", "kwargs": {"column": c.name, "value_set": list(c.values)}})
    return exps


def expectation_id(exp: dict[str, Any]) -> str:
    kw = exp["kwargs"]
    col = kw.get("column") or "+".join(kw.get("column_list", []))
    return f"{exp['type']}({col.removesuffix(RAW)})"


def prepare(spec: DatasetSpec, raw: pd.DataFrame) -> pd.DataFrame:
    """Parse the raw text into typed columns, keeping the text beside them where a check needs it."""
    df = pd.DataFrame(index=pd.RangeIndex(len(raw)))
    key = spec.entity_column
    df[key] = raw[key].to_numpy()
    df[EVENT_TIMESTAMP] = pd.to_datetime(raw[EVENT_TIMESTAMP], utc=True, errors="coerce", format="mixed").to_numpy()
    df[LABEL + RAW] = raw[spec.label].map(canonical_label).to_numpy()
    for f in spec.numeric:
        df[f.name + RAW] = raw[f.name].to_numpy()
        df[f.name] = pd.to_numeric(raw[f.name], errors="coerce").astype("float64").to_numpy()
    for c in spec.categorical:
        df[c.name] = raw[c.name].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return df


def run_expectations(df: pd.DataFrame, suite: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Run the suite with Great Expectations; return, per expectation, the positions of failing rows."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        context.data_sources.add_pandas("rows").add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all")
    )
    gx_suite = gx.ExpectationSuite(name="spec")
    for exp in suite:
        gx_suite.add_expectation_configuration(
            ExpectationConfiguration(type=exp["type"], kwargs=exp["kwargs"])
        )
    gx_suite = context.suites.add(gx_suite)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name="spec", data=batch_def, suite=gx_suite))
    result = definition.run(batch_parameters={"dataframe": df}, result_format={"result_format": "COMPLETE"})
    failing: dict[str, np.ndarray] = {}
    for exp, res in zip(suite, result.results):
        if res.exception_info and res.exception_info.get("raised_exception"):
            raise ValidationFailed(
                f"expectation {expectation_id(exp)} could not run: {res.exception_info.get('exception_message')}"
            )
        index = res.result.get("unexpected_index_list") or []
        failing[expectation_id(exp)] = np.asarray(sorted({int(i) for i in index}), dtype=np.int64)
    return failing


def validate(spec: DatasetSpec, raw: pd.DataFrame, run_id: str, source: str, now: datetime | None = None) -> ValidationOutcome:
    now = now or datetime.now(timezone.utc)
    suite = build_suite(spec, now)
    df = prepare(spec, raw)
    failing = run_expectations(df, suite)
    reasons = [[] for _ in range(len(df))]  # type: list[list[str]]
    for exp_id, positions in failing.items():
        for pos in positions:
            reasons[pos].append(exp_id)
    bad = np.array([bool(r) for r in reasons], dtype=bool)
    quarantined = raw.loc[bad].copy()
    quarantined["failed_expectations"] = ["; ".join(r) for r, b in zip(reasons, bad) if b]
    quarantined["source"] = source
    quarantined["run_id"] = run_id
    good = df.loc[~bad]
    valid = pd.DataFrame(
        {
            spec.entity_column: good[spec.entity_column].astype(str),
            EVENT_TIMESTAMP: good[EVENT_TIMESTAMP],
            **{f.name: good[f.name] for f in spec.numeric},
            **{c.name: good[c.name] for c in spec.categorical},
            LABEL: (good[LABEL + RAW] == canonical_label(spec.positive)).astype("int8"),
            SOURCE_LINE: raw.loc[~bad, SOURCE_LINE].astype("int64"),
        }
    ).reset_index(drop=True)
    outcome = ValidationOutcome(
        valid=valid,
        quarantined=quarantined.reset_index(drop=True),
        failures={k: int(len(v)) for k, v in failing.items()},
        suite=suite,
        examples={k: raw.iloc[v[:3]].astype(str).to_dict("records") for k, v in failing.items() if len(v)},
    )
    check_conservation(len(raw), outcome)
    return outcome


def check_conservation(rows_in: int, outcome: ValidationOutcome) -> None:
    if outcome.rows != rows_in:
        raise ValidationFailed(
            f"rows lost: {rows_in} in, {len(outcome.valid)} valid + {len(outcome.quarantined)} quarantined"
        )
    lines_valid = set(outcome.valid[SOURCE_LINE].tolist())
    lines_bad = set(outcome.quarantined[SOURCE_LINE].astype("int64").tolist())
    if lines_valid & lines_bad:
        raise ValidationFailed(f"{len(lines_valid & lines_bad)} row(s) are both valid and quarantined")


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


def to_parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def report_html(spec: DatasetSpec, outcome: ValidationOutcome, source: str) -> str:
    rows = []
    for exp in outcome.suite:
        exp_id = expectation_id(exp)
        n = outcome.failures.get(exp_id, 0)
        status = "pass" if n == 0 else "FAIL"
        examples = outcome.examples.get(exp_id, [])
        sample = "<br>".join(html.escape(json.dumps(e, default=str)[:300]) for e in examples)
        rows.append(
            f"<tr class='{status.lower()}'><td>{html.escape(exp_id)}</td><td>{status}</td><td>{n}</td><td>{sample}</td></tr>"
        )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Validation: {html.escape(spec.name)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px;vertical-align:top}}
tr.fail td{{background:#fde8e8}}tr.pass td:nth-child(2){{color:#176f2c}}</style></head><body>
<h1>Validation of {html.escape(spec.name)}</h1>
<p>Source: <code>{html.escape(source)}</code></p>
<p><b>{outcome.rows}</b> rows: <b>{len(outcome.valid)}</b> valid, <b>{len(outcome.quarantined)}</b> quarantined
({outcome.bad_fraction:.2%}; limit {spec.max_bad_fraction:.0%}).</p>
<table><tr><th>expectation</th><th>result</th><th>failing rows</th><th>examples</th></tr>{''.join(rows)}</table>
</body></html>"""
