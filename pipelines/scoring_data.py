"""The data stage's part of batch scoring, handed to the scoring step (components/scoring/step.py `DataStage`):
list a source's files, and turn the files the step read into validated rows. Here, in pipelines, because a stage
imports only core and itself, and scoring reuses what the data stage does rather than a copy of it.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any


def _list_files(source: str) -> list[str]:
    from components.data.ingest import list_source

    return [f.uri for f in list_source(source)]


def _check(spec: Any, spec_ref: str, files: list[Any], has_label: bool, run_id: str, now: datetime) -> Any:
    """Files read by the scoring step -> the data stage's rows (ingest's normalise: text, source line, generated
    entity, personal data kept out) -> the data stage's validate with the dataset's suite, less its label checks
    when the input has no label column."""
    import pandas as pd

    from components.core import privacy
    from components.core.settings import get_settings
    from components.core.spec import EVENT_TIMESTAMP, LABEL
    from components.data.ingest import normalise
    from components.data.suite import RAW, SOURCE_FILE, load_suite
    from components.data.validate import validate
    from components.scoring.batch import Checked, complete_columns, without_label_checks

    suite = load_suite(spec, spec_ref)
    if not has_label:
        suite = replace(suite, expectations=without_label_checks(suite.expectations, {LABEL + RAW}))
    rule = privacy.rule_for(spec, get_settings().pii_hash_key if spec.hashed_entity else None)
    parts = []
    for f in files:
        part = normalise(spec, complete_columns(spec, f.frame), f.is_parquet, rule)
        part[SOURCE_FILE] = f.uri
        if spec.timestamp is None:  # no event time in the data: the scoring time stands in (only for the checks)
            part[EVENT_TIMESTAMP] = now.isoformat()
        parts.append(part)
    raw = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    outcome = validate(spec, raw, run_id, files[0].uri, now=now, suite=suite)
    return Checked(outcome.valid_table, outcome.quarantined, suite.version)


def _suite_version(spec: Any, spec_ref: str) -> str:
    from components.data.suite import load_suite

    return load_suite(spec, spec_ref).version


def data_stage() -> Any:
    """The data stage's functions the scoring step needs, bound here where every stage may be imported."""
    from components.scoring.step import DataStage

    return DataStage(list_files=_list_files, suite_version=_suite_version, check=_check)
