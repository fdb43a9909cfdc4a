"""Great Expectations over the prepared rows, and the cross-check of its counts with the row masks.

GX runs every expectation over every row (in a second thread, beside the row masks) with a cheap
result format; `cross_check` requires each vectorized mask to flag exactly the rows GX counts, else
the run stops. GX's per-row output (COMPLETE) is used only for expectations without a vectorized twin.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from components.data.checks import Prepared, has_twin, row_mask
from components.data.outcome import ValidationFailed
from components.data.suite import RAW, expectation_columns, expectation_id

PARTIAL = 20  # unexpected values GX returns per expectation; compared with the vectorized masks


@dataclass
class GxVerdict:
    success: bool
    unexpected_count: int | None
    partial: list[Any]
    index: np.ndarray | None  # failing row positions, only from a COMPLETE run


@contextlib.contextmanager
def gx_settings() -> Iterator[None]:
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
        fields = [c.removesuffix(RAW) for c in expectation_columns(exp)]
        for other in fields[1:]:
            parent[root(other)] = root(fields[0])
    batches: dict[tuple[str, bool], tuple[list[str], list[dict[str, Any]], bool]] = {}
    for exp in expectations:
        cols = expectation_columns(exp)
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
            raise ValidationFailed(
                f"expectation(s) {[expectation_id(e) for e in exps]} name column(s) {missing} "
                f"that the prepared rows lack; they have: {list(df.columns)}"
            )
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
            verdicts[expectation_id(exp)] = GxVerdict(
                bool(res.success), None if count is None else int(count), list(res.result.get("partial_unexpected_list") or []), index
            )
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

    with gx_settings(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="gx") as pool:
        yield pool.submit(run_gx, p.frame, expectations, complete)


def cross_check(
    p: Prepared, expectations: list[dict[str, Any]], masks: dict[str, np.ndarray | None], verdicts: dict[str, GxVerdict]
) -> None:
    """Every vectorized mask must flag exactly as many rows as GX counts unexpected, and its first rows
    must hold the values GX lists first (GX reports them in row order); else ValidationFailed."""
    for exp in expectations:
        exp_id = expectation_id(exp)
        verdict, mask = verdicts[exp_id], masks[exp_id]
        if mask is None:
            continue
        positions = np.flatnonzero(mask)
        if verdict.unexpected_count != len(positions):
            raise ValidationFailed(
                f"row masks and GX disagree on {exp_id}: GX counts {verdict.unexpected_count} "
                f"unexpected rows, the vectorized check {len(positions)}"
            )
        cols = expectation_columns(exp)
        if len(cols) == 1 and verdict.partial:
            ours = p.frame[cols[0]].iloc[positions[: len(verdict.partial)]].tolist()
            if not _same_values(verdict.partial, ours):
                raise ValidationFailed(
                    f"row masks and GX disagree on {exp_id}: GX's first unexpected values "
                    f"{verdict.partial[:5]} are not the masked rows' {ours[:5]}"
                )


def check_rows(p: Prepared, expectations: list[dict[str, Any]]) -> tuple[dict[str, np.ndarray], dict[str, GxVerdict]]:
    """Per expectation, the failing row positions (GX-checked) and GX's verdict: `validate` without the outputs."""
    ids = unique_ids(expectations)
    complete = {i for i, e in zip(ids, expectations) if not has_twin(e, p.frame)}
    with gx_in_background(p, expectations, complete) as pending:
        masks = {i: row_mask(p, e) for i, e in zip(ids, expectations)}
        verdicts = pending.result()
    cross_check(p, expectations, masks, verdicts)
    return failing_rows(ids, masks, verdicts), verdicts


def unique_ids(expectations: list[dict[str, Any]]) -> list[str]:
    ids = [expectation_id(e) for e in expectations]
    if len(set(ids)) != len(ids):
        raise ValidationFailed(f"the suite has two expectations with the same id: {sorted({i for i in ids if ids.count(i) > 1})}")
    return ids


def failing_rows(ids: list[str], masks: dict[str, np.ndarray | None], verdicts: dict[str, GxVerdict] | None) -> dict[str, np.ndarray]:
    out = {}
    for i in ids:
        mask = masks[i]
        if mask is not None:
            out[i] = np.flatnonzero(mask)
        else:  # no vectorized twin: GX's own row list (COMPLETE)
            index = verdicts[i].index if verdicts else None
            out[i] = index if index is not None else np.zeros(0, dtype=np.int64)
    return out
