"""Batch scoring, the pure part: input files read as text, their columns checked, rows scored in fixed chunks, the
output table and its deterministic Parquet bytes, and the count that proves no row was lost.

The rows are validated by the dataset's suite before any is scored (the data stage's `validate`, composed in
pipelines/scoring_data.py: a stage imports only core and itself), so the model sees only rows training would have
accepted; the others are quarantined with their reasons. The label column is optional: rows to score usually have
no outcome yet. When it is there it is checked as in training and copied to the output, for a later join.

Determinism: rows come out in input order (file URI, then line), probabilities come from the same program on
chunks of the same size, and the Parquet file holds no write time, so a rerun on the same input and model
writes the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core.bundle import Bundle
from components.core.spec import EVENT_TIMESTAMP, LABEL, SOURCE_LINE, DatasetSpec, did_you_mean

PROBABILITY = "probability"
PREDICTION = "prediction"  # 1 when the probability reaches the bundle's decision threshold
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
INPUT_FINGERPRINT = "input_fingerprint"
SOURCE_FILE = "source_file"  # as the data stage names it on validated rows
CHUNK_ROWS = 65_536  # rows per program call: bounded memory, and the same chunks (so the same floats) every run
PARQUET_SUFFIXES = (".parquet", ".pq")


class ScoringError(ValueError):
    """Bad input to a scoring run (a missing column, a model reference that resolves to nothing): one line."""


@dataclass(frozen=True)
class InputFile:
    uri: str
    sha256: str
    frame: pd.DataFrame  # the file's columns as read: CSV cells as text, Parquet as typed
    is_parquet: bool


@dataclass(frozen=True)
class Checked:
    """What validation made of the input: the typed valid rows (Arrow) and the quarantined raw rows."""

    valid_table: Any  # pyarrow.Table with the data stage's valid-table columns
    quarantined: pd.DataFrame
    suite_version: str


def read_text(path: str, source: str) -> pd.DataFrame:
    """One CSV or Parquet file as the data stage reads it: CSV cells as text, only an empty cell missing."""
    p = Path(path)
    if not p.is_file():
        raise ScoringError(f"scoring input not found: {source}")
    if p.stat().st_size == 0:
        raise ScoringError(f"scoring input is empty (0 bytes): {source}")
    try:
        if p.suffix.lower() in PARQUET_SUFFIXES:
            frame = pd.read_parquet(p)
        else:  # "NA" is Namibia and "NaN" is text: validation judges them, not the reader
            frame = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""], index_col=False, encoding="utf-8-sig")
    except Exception as err:  # pandas and pyarrow raise many unrelated types for a broken file
        raise ScoringError(f"unreadable scoring input {source}: {str(err).strip().splitlines()[0]}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def read_columns(path: str, source: str) -> list[str]:
    """The column names of one CSV (its header line) or Parquet file (its schema), without reading the rows."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise ScoringError(f"scoring input not found or empty: {source}")
    try:
        if p.suffix.lower() in PARQUET_SUFFIXES:
            import pyarrow.parquet as pq

            names = list(pq.read_schema(p).names)
        else:
            names = list(pd.read_csv(p, dtype=str, nrows=0, index_col=False, encoding="utf-8-sig").columns)
    except Exception as err:  # as read_text
        raise ScoringError(f"unreadable scoring input {source}: {str(err).strip().splitlines()[0]}") from err
    return [str(c).strip() for c in names]


def required_columns(spec: DatasetSpec) -> list[str]:
    """Columns rows to score must have: every feature, and the entity key and event time when the spec names them."""
    return [*spec.feature_names, *([spec.entity] if spec.entity else []), *([spec.timestamp] if spec.timestamp else [])]


def check_columns(spec: DatasetSpec, columns: Sequence[str], source: str) -> bool:
    """Raise naming the columns the input lacks; return whether it has the label column."""
    needed = required_columns(spec)
    missing = [c for c in needed if c not in columns]
    if missing:
        others = [c for c in columns if c not in needed]  # a typo is among the columns no requirement took
        raise ScoringError(f"scoring input {source} lacks column(s) {missing}{did_you_mean(missing, others)}: the model needs {needed}")
    return spec.label in columns


def complete_columns(spec: DatasetSpec, frame: pd.DataFrame) -> pd.DataFrame:
    """The input with the columns the data stage's reader expects but scoring does not need (the label and
    audit-only attributes) added as missing values: those never reach the model."""
    absent = [c for c in (spec.label, *spec.audit_only) if c not in frame.columns]
    if not absent:
        return frame
    return frame.assign(**{c: pd.Series([None] * len(frame), index=frame.index, dtype=object) for c in absent})


def without_label_checks(expectations: list[dict[str, Any]], label_columns: set[str]) -> list[dict[str, Any]]:
    """The suite's expectations less those on the label: an input without a label column is not a bad input."""

    def columns(exp: dict[str, Any]) -> set[str]:
        kw = exp.get("kwargs", {})
        return {c for c in (kw.get("column"), kw.get("column_A"), kw.get("column_B"), *kw.get("column_list", [])) if c}

    return [e for e in expectations if not columns(e) & label_columns]


def input_fingerprint(files: Sequence[tuple[str, str]], suite_version: str) -> str:
    """sha256 over the (URI, sha256) of every input file and the suite that checked them: what was scored."""
    payload = {"files": sorted(files), "suite_version": suite_version}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def scoring_run_id(files: Sequence[tuple[str, str]], model_name: str, version: str) -> str:
    """The run id written on quarantined rows: the same input files and model give the same id, so reruns match."""
    payload = json.dumps({"files": sorted(files), "model": [model_name, version]}, sort_keys=True, separators=(",", ":"))
    return "score-" + hashlib.sha256(payload.encode()).hexdigest()[:16]


def encode(bundle: Bundle, table: Any) -> tuple[np.ndarray, np.ndarray]:
    """Valid rows (Arrow) -> (numeric float32 [n, F], codes int64 [n, C]), as Bundle.encode does it value by value:
    a missing number is NaN (the program imputes it), a missing or unseen category is code 0."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    numeric = np.zeros((n, max(len(bundle.numeric), 1)), dtype=np.float32)
    for j, name in enumerate(bundle.numeric):
        numeric[:, j] = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
    codes = np.zeros((n, max(len(bundle.categorical), 1)), dtype=np.int64)
    vocab = {f["name"]: f["vocabulary"] for f in bundle.signature["features"] if f["type"] == "categorical"}
    for j, name in enumerate(bundle.categorical):
        values = table.column(name).cast(pa.string())
        found = pc.index_in(values, value_set=pa.array([str(v) for v in vocab[name]], type=pa.string()))
        codes[:, j] = pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    return numeric, codes


def score(bundle: Bundle, table: Any, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Probabilities of every valid row, the bundle's program called on fixed-size chunks."""
    import torch

    numeric, codes = encode(bundle, table)
    out = np.empty(table.num_rows, dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, table.num_rows, chunk_rows):
            stop = start + chunk_rows
            out[start:stop] = bundle.program(torch.from_numpy(numeric[start:stop]), torch.from_numpy(codes[start:stop])).numpy()
    return out


def scored_table(
    spec: DatasetSpec,
    valid: Any,
    probabilities: np.ndarray,
    threshold: float,
    has_label: bool,
    model: tuple[str, str],
    fingerprint: str,
    files: Sequence[str] = (),
) -> Any:
    """The output rows in input order (`files`: the input's files in the order they were read): entity key (and event
    time when the spec has one), probability, prediction, label (when the input had one), model name and version,
    input fingerprint, source file and line."""
    import pyarrow as pa

    n = valid.num_rows
    if len(probabilities) != n:
        raise ScoringError(f"{len(probabilities)} probabilities for {n} valid rows")
    columns: dict[str, Any] = {spec.entity_column: valid.column(spec.entity_column).cast(pa.string())}
    if spec.timestamp:
        columns[EVENT_TIMESTAMP] = valid.column(EVENT_TIMESTAMP).cast(pa.timestamp("us", "UTC"))
    columns[PROBABILITY] = pa.array(probabilities, type=pa.float64())
    columns[PREDICTION] = pa.array((probabilities >= threshold).astype(np.int8))
    if has_label:
        columns[LABEL] = valid.column(LABEL).cast(pa.int8())
    columns[MODEL_NAME] = pa.array([model[0]] * n, type=pa.string())
    columns[MODEL_VERSION] = pa.array([model[1]] * n, type=pa.string())
    columns[INPUT_FINGERPRINT] = pa.array([fingerprint] * n, type=pa.string())
    # where each row came from: lineage, and the join key to later labels for a spec whose row ids are generated
    # from the row's content (an unlabelled file's generated ids differ from the labelled rows')
    for name in (SOURCE_FILE, SOURCE_LINE):
        if name in valid.column_names:
            columns[name] = valid.column(name).cast(pa.string() if name == SOURCE_FILE else pa.int64())
    table = pa.table(columns)
    order = in_input_order(valid, files)
    return table if order is None else table.take(pa.array(order))


def in_input_order(valid: Any, files: Sequence[str] = ()) -> np.ndarray | None:
    """Row positions sorted by (the file's place in `files`, line), or None when they already are (validation keeps
    input order). The files' own order, not their names': a directory is read in path order ("d/a/b.csv" before
    "d/a-c.csv"), which sorting the names as text would turn round. Files not in `files` sort after, by name."""
    if valid.num_rows < 2 or SOURCE_FILE not in valid.column_names:
        return None
    names = valid.column(SOURCE_FILE).to_pandas().to_numpy(dtype=object).astype(str)
    place = {name: i for i, name in enumerate(files)}
    unknown = sorted(set(names) - set(place))
    place.update({name: len(files) + i for i, name in enumerate(unknown)})
    ranks = np.fromiter((place[name] for name in names), dtype=np.int64, count=len(names))
    lines = valid.column(SOURCE_LINE).to_numpy()
    order = np.lexsort((lines, ranks))
    return None if np.array_equal(order, np.arange(len(order))) else order


def parquet_bytes(table: Any, metadata: dict[str, str] | None = None) -> bytes:
    """Parquet of an Arrow table or a DataFrame with nothing that changes between runs: no index, no write time,
    fixed compression; `metadata` (key-value, in the footer) must be run-independent too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}})
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def check_conservation(rows_in: int, scored: int, quarantined: int) -> None:
    """Rows in = scored + quarantined, or the run stops: a row silently lost is the one failure not to allow."""
    if rows_in != scored + quarantined:
        raise ScoringError(f"rows lost: {rows_in} in, {scored} scored + {quarantined} quarantined")


def quarantine_uri(out_uri: str) -> str:
    """Where the quarantined rows go: beside the scores, `<name>.quarantine.parquet`."""
    for suffix in PARQUET_SUFFIXES:
        if out_uri.lower().endswith(suffix):
            return out_uri[: -len(suffix)] + ".quarantine.parquet"
    return out_uri + ".quarantine.parquet"
