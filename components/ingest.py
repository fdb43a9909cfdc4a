"""Ingest: read CSV or Parquet (local or s3://), check it against the spec, and normalise it.

Values are kept as they arrived (CSV cells as text) so that validation, not the reader, decides what
is wrong with a row: a reader that guessed types would turn "12,5" into a crash or a silent NaN.
Every row gets its source line, so any training row can be traced back to the file it came from.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from components import storage
from components.spec import EVENT_TIMESTAMP, GENERATED_ENTITY, SOURCE_LINE, DatasetSpec


class IngestError(ValueError):
    """The input cannot be read as the spec describes."""


@dataclass(frozen=True)
class IngestResult:
    rows: int
    fingerprint: str
    source: str
    ingested_at: str


def _read(path: str, source: str) -> pd.DataFrame:
    p = Path(path)
    if not p.exists():
        raise IngestError(f"input not found: {source}")
    if p.is_dir():
        raise IngestError(f"input is a directory, expected a CSV or Parquet file: {source}")
    if p.stat().st_size == 0:
        raise IngestError(f"input file is empty (0 bytes): {source}")
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            return pd.read_parquet(p)
        except Exception as err:  # pyarrow raises several unrelated types for a broken file
            raise IngestError(f"unreadable Parquet file {source}: {err}") from err
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise IngestError(f"input is not UTF-8 text ({source}): byte {err.start} cannot be decoded") from err
    _check_field_counts(text, source)
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=True, na_values=[""], index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        raise IngestError(f"unreadable CSV {source}: {str(err).strip().splitlines()[0]}") from err


def _check_field_counts(text: str, source: str) -> None:
    """Every line must have as many fields as the header.

    pandas alone would turn extra fields on the first line into an index and fill short lines (a
    truncated file, a wrong delimiter) with nulls: both silent. Here they are a one-line error.
    """
    try:
        reader = csv.reader(io.StringIO(text), strict=True)
        header = next(reader, None)
        if header is None:
            raise IngestError(f"input has no header line: {source}")
        expected = len(header)
        for fields in reader:
            if len(fields) != expected and fields:
                raise IngestError(
                    f"unreadable CSV {source}: line {reader.line_num} has {len(fields)} field(s), the header has {expected}"
                )
    except csv.Error as err:
        raise IngestError(f"unreadable CSV {source}: line {reader.line_num}: {err}") from err


def _stable_row_ids(df: pd.DataFrame) -> pd.Series:
    """An id from the row's content plus its occurrence number: the same row gets the same id in every run."""
    hashes = pd.util.hash_pandas_object(df.astype(str), index=False)
    occurrence = hashes.groupby(hashes).cumcount()
    return pd.Series([f"r{h:016x}-{k}" for h, k in zip(hashes.to_numpy(), occurrence.to_numpy())], index=df.index)


def _first_seen(state_dir: str, fingerprint: str) -> str:
    """When this exact file was first ingested: the stand-in event time when the data has none.

    Kept in the state store so that a rerun on the same file gives the same timestamps (idempotency).
    """
    path = storage.join(state_dir, "ingest", "first_seen", f"{fingerprint}.json")
    if storage.exists(path):
        return str(json.loads(storage.read_bytes(path))["ingested_at"])
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    storage.write_bytes(path, json.dumps({"ingested_at": now}).encode())
    return now


def read_checked(spec: DatasetSpec, source: str) -> tuple[pd.DataFrame, str, str]:
    """Read `source` and check it has the spec's columns and at least one row: (frame, sha256, local name)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = storage.local_copy(source, tmp)
        except Exception as err:
            raise IngestError(f"cannot fetch input {source}: {err}") from err
        df = _read(local, source)
        fingerprint = storage.sha256_file(local)
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in spec.source_columns if c not in df.columns]
    if missing:
        raise IngestError(
            f"the spec names column(s) the data lacks: {missing}; the data has {list(df.columns)[:20]}"
        )
    if df.empty:
        raise IngestError(f"dataset has no rows (a header only?): {source}")
    return df, fingerprint, local


def ingest(spec: DatasetSpec, source: str, out_path: str, state_dir: str) -> IngestResult:
    """Read `source`, check its columns against the spec and write the normalised rows to `out_path` (Parquet)."""
    df, fingerprint, local = read_checked(spec, source)
    # Keep the raw values of the columns the spec names; the input file itself stays the record of the rest.
    out = df[spec.source_columns].copy()
    for col in out.columns:  # Parquet input keeps its types; text is what validation expects to parse
        if out[col].dtype != object:
            out[col] = out[col].astype(object).where(out[col].notna(), None).map(
                lambda v: v if v is None else str(v)
            )
    # CSV: the file's line number (the header is line 1); Parquet: the row's position.
    is_parquet = Path(local).suffix.lower() in (".parquet", ".pq")
    out.insert(0, SOURCE_LINE, range(len(out)) if is_parquet else range(2, len(out) + 2))
    if spec.entity is None:
        out.insert(0, GENERATED_ENTITY, _stable_row_ids(df[spec.source_columns]))
    ingested_at = _first_seen(state_dir, fingerprint)
    if spec.timestamp is None:
        out[EVENT_TIMESTAMP] = ingested_at
    else:
        out = out.rename(columns={spec.timestamp: EVENT_TIMESTAMP})
    buf = io.BytesIO()
    out.to_parquet(buf, index=False)
    storage.write_bytes(out_path, buf.getvalue())
    return IngestResult(rows=len(out), fingerprint=fingerprint, source=source, ingested_at=ingested_at)
