"""Ingest: read CSV or Parquet (a file, or a directory / s3:// prefix of files), incrementally.

Values are kept as they arrived (CSV cells as text) so that validation, not the reader, decides what
is wrong with a row: a reader that guessed types would turn "12,5" into a crash or a silent NaN.
Every row keeps its source file and line, so any training row can be traced back to where it came from.

Incremental: each input file is fingerprinted (sha256, remembered by URI, size and mtime/ETag in the
state store, so an unchanged file is not read again) and normalised once into a snapshot keyed by its
content and the spec. A file seen before is skipped; a new or changed one is read. The step's output
is always the union of the snapshots of every file the source holds now, in URI order: downstream
steps see all the data, a rerun on the same input writes byte-identical output, and a file that was
replaced counts only in its new version. Every write is atomic (temporary name, then rename).
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pandas as pd

from components.core import lineage, paths, privacy, storage
from components.core.spec import EVENT_TIMESTAMP, GENERATED_ENTITY, SOURCE_LINE, DatasetSpec, did_you_mean
from components.data.suite import INGESTED_AT, SOURCE_FILE

DATA_SUFFIXES = (".csv", ".parquet", ".pq")


class IngestError(ValueError):
    """The input cannot be read as the spec describes."""


@dataclass(frozen=True)
class SourceFile:
    uri: str
    size: int
    stamp: str  # mtime (local) or ETag (S3): with the size, says whether a remembered sha256 still holds


@dataclass(frozen=True)
class IngestResult:
    rows: int
    fingerprint: str  # the dataset version: see components/core/lineage.py
    source: str
    ingested_at: str  # the latest first-ingestion time among the files
    files: list[dict[str, Any]] = field(default_factory=list)
    new_files: list[str] = field(default_factory=list)
    skipped_files: list[str] = field(default_factory=list)  # already ingested: not read again
    duplicate_files: list[str] = field(default_factory=list)  # same content as an earlier file: left out


# --- listing and fingerprinting ------------------------------------------------------------------


def _is_data_name(name: str) -> bool:
    return not name.startswith((".", "_"))  # temporary files of atomic writers, _SUCCESS markers


def list_source(source: str) -> list[SourceFile]:
    """The files a source names: itself when it is a file, else every data file under the directory or prefix."""
    if storage.is_s3(source):
        return _list_s3(source)
    p = Path(source)
    if not p.exists():
        raise IngestError(f"input not found: {source}")
    if p.is_file():
        st = p.stat()
        return [SourceFile(str(p), st.st_size, str(st.st_mtime_ns))]
    files = []
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        rel = f.relative_to(p).parts
        if not all(_is_data_name(part) for part in rel):
            continue
        if f.suffix.lower() not in DATA_SUFFIXES:
            raise IngestError(f"unsupported file in input directory {source}: {f.name} (expected {', '.join(DATA_SUFFIXES)})")
        st = f.stat()
        files.append(SourceFile(str(f), st.st_size, str(st.st_mtime_ns)))
    if not files:
        raise IngestError(f"no CSV or Parquet files in input directory {source}")
    return files


def _list_s3(source: str) -> list[SourceFile]:
    parsed = urlparse(source)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    client = storage.s3_client()
    files = []
    prefix = key.rstrip("/") + "/" if key else ""
    try:
        head = client.head_object(Bucket=bucket, Key=key) if key and not key.endswith("/") else None
    except Exception:  # not an object: a prefix
        head = None
    if head is not None:
        return [SourceFile(source, int(head["ContentLength"]), str(head.get("ETag", "")))]
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            name = obj["Key"][len(prefix) :]
            if not name or not all(_is_data_name(part) for part in name.split("/")):
                continue
            if not name.lower().endswith(DATA_SUFFIXES):
                raise IngestError(f"unsupported file under {source}: {name} (expected {', '.join(DATA_SUFFIXES)})")
            files.append(SourceFile(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), str(obj.get("ETag", ""))))
    if not files:
        raise IngestError(f"input not found: no CSV or Parquet objects at {source}")
    return sorted(files, key=lambda f: f.uri)


def _cache_path(state_dir: str, dataset: str) -> str:
    return storage.join(paths.ingest_dir(state_dir, dataset), "fingerprints.json")


def _load_cache(state_dir: str, dataset: str) -> dict[str, dict[str, Any]]:
    path = _cache_path(state_dir, dataset)
    if not storage.exists(path):
        return {}
    try:
        return dict(json.loads(storage.read_bytes(path)))
    except ValueError:  # a cache only: rebuilt from the files
        return {}


def _known_sha(cache: dict[str, dict[str, Any]], f: SourceFile) -> str | None:
    hit = cache.get(f.uri)
    if hit and hit.get("size") == f.size and hit.get("stamp") == f.stamp:
        return str(hit["sha256"])
    return None


# --- reading one file ----------------------------------------------------------------------------


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
            raise IngestError(f"unreadable Parquet file {source}: {str(err).splitlines()[0]}") from err
    try:
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise IngestError(f"input is not UTF-8 text ({source}): byte {err.start} cannot be decoded") from err
    _check_field_counts(text, source)
    try:
        # Only an empty cell is missing: "NA" is Namibia and "NaN" is not a number, for validation to say.
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""], index_col=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, csv.Error) as err:
        raise IngestError(f"unreadable CSV {source}: {str(err).strip().splitlines()[0]}") from err


def _check_field_counts(text: str, source: str) -> None:
    """Every line must have as many fields as the header.

    pandas alone would turn extra fields on the first line into an index and fill short lines (a
    truncated file, a wrong delimiter) with nulls: both silent. Here they are a one-line error.
    """
    reader = csv.reader(io.StringIO(text), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise IngestError(f"input has no header line: {source}")
        expected = len(header)
        for fields in reader:
            if len(fields) != expected and fields:
                raise IngestError(f"unreadable CSV {source}: line {reader.line_num} has {len(fields)} field(s), the header has {expected}")
    except csv.Error as err:
        raise IngestError(f"unreadable CSV {source}: line {reader.line_num}: {err}") from err


def _check_columns(spec: DatasetSpec, df: pd.DataFrame, source: str) -> pd.DataFrame:
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in spec.required_columns if c not in df.columns]  # sensitive and personal columns too
    if missing:
        raise IngestError(
            f"the spec names column(s) the data lacks: {missing}{did_you_mean(missing, df.columns)}; {source} has {list(df.columns)[:20]}"
        )
    return df


def read_checked(spec: DatasetSpec, source: str) -> tuple[pd.DataFrame, str, str]:
    """Read one file and check it has the spec's columns and at least one row: (frame, sha256, local name)."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = storage.local_copy(source, tmp)
        except Exception as err:
            raise IngestError(f"cannot fetch input {source}: {err}") from err
        df = _read(local, source)
        fingerprint = storage.sha256_file(local)
    df = _check_columns(spec, df, source)
    if df.empty:
        raise IngestError(f"dataset has no rows (a header only?): {source}")
    return df, fingerprint, local


def check_source(spec: DatasetSpec, source: str, state_dir: str | None = None) -> int:
    """The CLI's preflight: every file of the source that ingest would read is readable and has the
    spec's columns, and there is at least one row. Files ingest would skip (unchanged, already
    snapshotted under `state_dir`) are not read again. Returns the number of files."""
    files = list_source(source)
    if len(files) == 1 and files[0].uri == source and not Path(source).is_dir():
        read_checked(spec, source)
        return 1
    cache = _load_cache(state_dir, spec.name) if state_dir else {}
    rows = 0
    for f in files:
        sha = _known_sha(cache, f)
        if sha and state_dir and storage.exists(_snapshot_path(state_dir, spec, sha)):
            rows += int(cache[f.uri].get("rows", 1))
            continue
        with tempfile.TemporaryDirectory() as tmp:
            df = _check_columns(spec, _read(storage.local_copy(f.uri, tmp), f.uri), f.uri)
        rows += len(df)
    if rows == 0:
        raise IngestError(f"dataset has no rows (header-only files?): {source}")
    return len(files)


def _stable_row_ids(df: pd.DataFrame) -> pd.Series:
    """An id from the row's content plus its occurrence number: the same row gets the same id in every run."""
    hashes = pd.util.hash_pandas_object(df.astype(str), index=False)
    occurrence = hashes.groupby(hashes).cumcount()
    return pd.Series([f"r{h:016x}-{k}" for h, k in zip(hashes.to_numpy(), occurrence.to_numpy())], index=df.index)


def _privacy_rule(spec: DatasetSpec) -> privacy.PrivacyRule:
    """The spec's personal-data rule, with the hash key read from the settings only when a column needs it."""
    if not spec.hashed_entity:
        return privacy.rule_for(spec, None)
    from components.core.settings import get_settings

    return privacy.rule_for(spec, get_settings().pii_hash_key)


def normalise(spec: DatasetSpec, df: pd.DataFrame, is_parquet: bool, rule: privacy.PrivacyRule | None = None) -> pd.DataFrame:
    """The spec's columns as text, the source line, and a generated entity id when the spec has none.
    Personal data is kept out here, where it enters (`rule`, components/core/privacy.py): only the spec's
    columns are kept (other personal columns are dropped) and a personal entity key becomes its keyed hash."""
    # Sensitive attributes that are not features travel with the rows (as text) for the bias audit, never as features.
    out = df[[*spec.source_columns, *spec.audit_only]].copy()
    for col in out.columns:  # Parquet input keeps its types; text is what validation expects to parse
        if out[col].dtype != object:
            out[col] = out[col].astype(object).where(out[col].notna(), None).map(lambda v: v if v is None else str(v))
    # CSV: the file's line number (the header is line 1); Parquet: the row's position.
    out.insert(0, SOURCE_LINE, range(len(out)) if is_parquet else range(2, len(out) + 2))
    if spec.entity is None:
        out.insert(0, GENERATED_ENTITY, _stable_row_ids(df[spec.source_columns]))
    if spec.timestamp is not None:
        out = out.rename(columns={spec.timestamp: EVENT_TIMESTAMP})
    if rule is not None:
        out = privacy.redact_frame(rule, out)
    return out.reset_index(drop=True)


# --- state ---------------------------------------------------------------------------------------


def _snapshot_path(state_dir: str, spec: DatasetSpec, sha: str) -> str:
    from components.data.suite import spec_fingerprint

    # Hashed with another key, the same file is another snapshot (the key's id, never the key, names it).
    keyed = f"-k{privacy.key_id(_privacy_rule(spec).key)}" if spec.hashed_entity else ""
    return storage.join(paths.ingest_dir(state_dir, spec.name), "snapshots", f"{sha}-{spec_fingerprint(spec)[:16]}{keyed}.parquet")


def _first_seen(state_dir: str, fingerprint: str, run_id: str) -> tuple[str, str]:
    """When, and by which run, this exact file content was first ingested (written once).

    The stand-in event time when the data has none, and the bound for "timestamps in the future":
    kept in the state store so that a rerun on the same file gives the same values (idempotency).
    """
    path = paths.first_seen_path(state_dir, fingerprint)
    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    record = lineage.write_once(path, {"ingested_at": now, "run_id": run_id})
    return str(record["ingested_at"]), str(record.get("run_id", "unknown"))


def _to_parquet(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return buf.getvalue()


def ingest(
    spec: DatasetSpec, source: str, out_path: str, state_dir: str, run_id: str = "local", suite_version: str | None = None
) -> IngestResult:
    """Ingest new or changed files of `source`; write the union of all its files' rows to `out_path` (Parquet).

    Nothing is recorded before every file has been read and checked: a bad file stops the run with a
    one-line error and leaves no record that would make a rerun skip it.
    """
    from components.core.tracking import code_version
    from components.data.suite import suite_from_spec

    suite_version = suite_version or suite_from_spec(spec).version
    files = list_source(source)
    cache = _load_cache(state_dir, spec.name)
    chosen: list[tuple[SourceFile, str]] = []  # (file, sha256), one per distinct content
    seen: dict[str, str] = {}
    new_files, skipped, duplicates = [], [], []
    for f in files:
        sha = _known_sha(cache, f)
        snapshot = _snapshot_path(state_dir, spec, sha) if sha else None
        if sha is None or not storage.exists(snapshot or ""):
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    local = storage.local_copy(f.uri, tmp)
                except Exception as err:
                    raise IngestError(f"cannot fetch input {f.uri}: {err}") from err
                sha = storage.sha256_file(local)
                snapshot = _snapshot_path(state_dir, spec, sha)
                if not storage.exists(snapshot):  # content not seen under this spec: read it
                    df = _check_columns(spec, _read(local, f.uri), f.uri)
                    if df.empty and len(files) == 1:
                        raise IngestError(f"dataset has no rows (a header only?): {source}")
                    is_parquet = Path(local).suffix.lower() in (".parquet", ".pq")
                    storage.write_bytes(snapshot, _to_parquet(normalise(spec, df, is_parquet, _privacy_rule(spec))))
                    new_files.append(f.uri)
                else:
                    skipped.append(f.uri)
        else:
            skipped.append(f.uri)
        if sha in seen:  # the same content under two names would be every row twice: the first name counts
            duplicates.append(f.uri)
            continue
        seen[sha] = f.uri
        chosen.append((f, sha))

    parts: list[pd.DataFrame] = []
    records: list[dict[str, Any]] = []
    for f, sha in chosen:
        snap = pd.read_parquet(io.BytesIO(storage.read_bytes(_snapshot_path(state_dir, spec, sha))))  # local or s3://
        ingested_at, first_run = _first_seen(state_dir, sha, run_id)
        snap[SOURCE_FILE] = f.uri
        snap[INGESTED_AT] = ingested_at
        if spec.timestamp is None:
            snap[EVENT_TIMESTAMP] = ingested_at
        parts.append(snap)
        records.append(
            {
                "uri": f.uri,
                "sha256": sha,
                "size": f.size,
                "rows": len(snap),
                "ingested_at": ingested_at,
                "first_run_id": first_run,
                "snapshot": _snapshot_path(state_dir, spec, sha),
            }
        )
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    if out.empty:
        raise IngestError(f"dataset has no rows (header-only files?): {source}")
    storage.write_bytes(out_path, _to_parquet(out))

    code = code_version()
    fingerprint = lineage.dataset_fingerprint([(r["uri"], r["sha256"]) for r in records], suite_version, code)
    from components.data.suite import spec_fingerprint

    now = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    lineage.write_once(
        paths.manifest_path(state_dir, spec.name, fingerprint),
        {
            "format": lineage.MANIFEST_FORMAT,
            "dataset": spec.name,
            "dataset_fingerprint": fingerprint,
            "source": source,
            "rows": len(out),
            "files": records,
            "suite_version": suite_version,
            "spec_sha256": spec_fingerprint(spec),
            "code_version": code,
            "run_id": run_id,
            "created_at": now,
            "duplicate_files": duplicates,
        },
    )
    lineage.write_json(paths.latest_path(state_dir, spec.name), {"dataset_fingerprint": fingerprint, "run_id": run_id, "at": now})
    cache.update(
        {r["uri"]: {"size": r["size"], "stamp": f.stamp, "sha256": r["sha256"], "rows": r["rows"]} for (f, _), r in zip(chosen, records)}
    )
    lineage.write_json(_cache_path(state_dir, spec.name), cache)
    return IngestResult(
        rows=len(out),
        fingerprint=fingerprint,
        source=source,
        ingested_at=max(r["ingested_at"] for r in records),
        files=records,
        new_files=new_files,
        skipped_files=skipped,
        duplicate_files=duplicates,
    )
