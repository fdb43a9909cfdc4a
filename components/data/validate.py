"""Validate: every record checked by the dataset's Great Expectations 1.x suite.

The suite is a versioned file next to the spec (`<spec>.suite.json`, written by `mlwf suite`): the
expectations derived from the spec plus any the user adds by hand, reviewable in a diff. Rows that
fail any expectation go to quarantine with the reason(s), their source file and line, and a run id;
the rest go on, typed. Nothing is dropped: rows in = valid + quarantined, checked on every run.

How the work is split (see `check_rows` in gx.py): GX runs every expectation over every row and gives each
expectation's verdict and unexpected count with a cheap result format. The row-level masks that
decide what goes to quarantine come from the same expectation definitions evaluated as vectorized
pandas/Arrow operations, and must agree exactly with GX's counts, else the step raises. GX's own
per-row index output (result_format COMPLETE) is used only for expectation types that have no
vectorized twin here (hand-added ones), because it is ~10-50x slower.

The pieces: suite.py (the suite file), checks.py (parsing and the row masks), gx.py (running GX and
cross-checking it), outcome.py (the result types), report.py (the HTML report); this module puts them
together: `validate`, the conservation check and the threshold.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from components.core.spec import EVENT_TIMESTAMP, LABEL, SOURCE_LINE, DatasetSpec
from components.data.checks import TEXT, has_twin, prepare, row_mask, to_arrow
from components.data.gx import cross_check, failing_rows, gx_in_background, unique_ids
from components.data.outcome import ValidationFailed, ValidationOutcome
from components.data.suite import INGESTED_AT, RAW, SOURCE_FILE, Suite, canonical_label, suite_from_spec


def _object_text(values: Any) -> np.ndarray:
    """Object strings with None for nulls, as the downstream steps read them (Arrow does it in C++)."""

    return to_arrow(values).to_numpy()


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
    ids = unique_ids(expectations)
    complete = {i for i, e in zip(ids, expectations) if not has_twin(e, prepared.frame)}
    with gx_in_background(prepared, expectations, complete) as pending:
        masks = {i: row_mask(prepared, e) for i, e in zip(ids, expectations)}
        failing = failing_rows(ids, masks, pending.result() if complete else None)
        outcome = _outcome(spec, suite, raw, prepared.frame, failing, run_id, source, run_ids)
        verdicts = pending.result()
    cross_check(prepared, expectations, masks, verdicts)
    outcome.verdicts = {k: v.success for k, v in verdicts.items()}
    check_conservation(raw, outcome, source)
    return outcome


def _outcome(
    spec: DatasetSpec,
    suite: Suite,
    raw: pd.DataFrame,
    df: pd.DataFrame,
    failing: dict[str, np.ndarray],
    run_id: str,
    source: str,
    run_ids: dict[str, str] | None,
) -> ValidationOutcome:
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
    columns = {
        c: pd.Series(
            _object_text(bad_raw[c].array) if bad_raw[c].dtype == TEXT or bad_raw[c].dtype == object else bad_raw[c].to_numpy(),
            index=index,
            dtype=None if bad_raw[c].dtype.kind in "iufb" else object,
        )
        for c in bad_raw.columns
    }
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
        return to_arrow(values).take(take)

    positive = canonical_label(spec.positive)
    columns = {
        spec.entity_column: text(df[spec.entity_column].array),
        EVENT_TIMESTAMP: pa.array(df[EVENT_TIMESTAMP].array).take(take),
        **{f.name: pa.array(df[f.name].to_numpy(dtype="float64")[good]) for f in spec.numeric},
        **{c.name: text(df[c.name].array) for c in spec.categorical},
        LABEL: pa.array((df[LABEL + RAW].to_numpy(dtype=object, na_value=None)[good] == positive).astype("int8")),
        **{a: text(raw[a].array) for a in spec.audit_only if a in raw.columns},  # for the bias audit only
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
    files_in = to_arrow(raw[SOURCE_FILE].array) if SOURCE_FILE in raw.columns else to_arrow([source] * rows_in)
    names = pc.unique(files_in)

    def refs(files: Any, lines: Any) -> np.ndarray:
        files = to_arrow(files)
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
    keys_out = np.concatenate(
        [
            refs(valid.column(SOURCE_FILE).combine_chunks(), valid.column(SOURCE_LINE).to_numpy()),
            refs(outcome.quarantined["source"].to_numpy(dtype=object), outcome.quarantined[SOURCE_LINE].to_numpy()),
        ]
    )
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
