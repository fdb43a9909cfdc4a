"""Reading and writing files by URI: local paths and s3:// (S3, MinIO or moto on a cluster or in tests).

Writes are atomic: a file appears under its final name complete or not at all, so a step killed in the
middle of a write leaves nothing half-written for the next run to trust.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger(__name__)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if not parsed.netloc:
        raise ValueError(f"not an s3 URI with a bucket: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


def s3_client() -> Any:
    """A boto3 client; AWS_ENDPOINT_URL points it at MinIO or a local moto server."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def join(base: str, *parts: str) -> str:
    if is_s3(base):
        return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts]])
    return str(Path(base, *parts))


def exists(uri: str) -> bool:
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().head_object(Bucket=bucket, Key=key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
    return Path(uri).exists()


def read_bytes(uri: str) -> bytes:
    if is_s3(uri):
        bucket, key = split_s3(uri)
        return s3_client().get_object(Bucket=bucket, Key=key)["Body"].read()
    return Path(uri).read_bytes()


def write_bytes(uri: str, data: bytes) -> None:
    """Write atomically: a temporary name in the same directory, then a rename (S3 puts are atomic)."""
    if is_s3(uri):
        bucket, key = split_s3(uri)
        s3_client().put_object(Bucket=bucket, Key=key, Body=data)
        return
    path = Path(uri)
    tmp = _durable_temporary(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    sweep_stale_temporaries(path)


def _durable_temporary(path: Path, data: bytes) -> str:
    """`data` written and fsynced under a temporary name beside `path` (removed again if that fails)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def create_once(uri: str, data: bytes) -> bool:
    """Create `uri` holding `data` only if nothing is there yet; False when it already exists.

    Atomic against a concurrent writer of the same name: locally the complete temporary file is hard-linked
    to the final name (link fails if the name exists), on S3 the put is conditional (If-None-Match: *).
    Exactly one of two racing writers gets True; the other reads the winner's bytes.
    """
    if is_s3(uri):
        from botocore.exceptions import ClientError

        bucket, key = split_s3(uri)
        try:
            s3_client().put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or err.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode"
            ) in (409, 412):
                return False
            raise
        return True
    tmp = _durable_temporary(Path(uri), data)
    try:
        os.link(tmp, uri)
    except FileExistsError:
        return False
    finally:
        Path(tmp).unlink(missing_ok=True)
    return True


# A temporary file or directory this old was left by a writer that was killed (SIGKILL, OOM, node loss)
# between creating it and the rename: no live write of one object takes an hour.
STALE_TEMPORARY_S = 3600.0


def sweep_stale_temporaries(path: Path, older_than_s: float = STALE_TEMPORARY_S) -> list[Path]:
    """Remove what killed writers of `path` left beside it (`.<name>.*.tmp` files, `.<name>.tmp-<pid>` dirs).

    Readers never see these (they only read the final name), so they are garbage, not data; fresh ones
    may belong to a writer still running and are left alone. Returns what was removed.
    """
    removed: list[Path] = []
    cutoff = time.time() - older_than_s
    try:
        candidates = [*path.parent.glob(f".{glob.escape(path.name)}.*.tmp"), *path.parent.glob(f".{glob.escape(path.name)}.tmp-*")]
    except OSError:
        return removed
    for leftover in candidates:
        try:
            if leftover.lstat().st_mtime >= cutoff:
                continue
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
            removed.append(leftover)
        except FileNotFoundError:  # another writer swept it first
            continue
        except OSError as err:
            log.warning("could not remove stale temporary %s: %s", leftover, err)
    if removed:
        log.info("removed %d stale temporary file(s) left beside %s by killed writers", len(removed), path)
    return removed


def local_copy(uri: str, workdir: str) -> str:
    """A local path holding the object's bytes: the path itself when local, a download when on S3."""
    if not is_s3(uri):
        return uri
    bucket, key = split_s3(uri)
    target = Path(workdir) / Path(key).name
    s3_client().download_file(bucket, key, str(target))
    return str(target)


def _walk(directory: Path) -> Iterator[Path]:
    return (p for p in sorted(directory.rglob("*")) if p.is_file())


def upload_dir(local_dir: str, uri: str) -> None:
    if not is_s3(uri):
        copy_dir(local_dir, uri)
        return
    bucket, prefix = split_s3(uri)
    client = s3_client()
    for path in _walk(Path(local_dir)):
        client.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(local_dir).as_posix()}")


def download_dir(uri: str, local_dir: str) -> None:
    if not is_s3(uri):
        copy_dir(uri, local_dir)
        return
    bucket, prefix = split_s3(uri)
    client = s3_client()
    paginator = client.get_paginator("list_objects_v2")
    root = Path(local_dir).resolve()
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix.rstrip("/")) + 1 :]
            target = (root / rel).resolve()
            if root not in target.parents:
                raise ValueError(f"refusing object outside the target directory: {obj['Key']!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(target))


def copy_dir(src: str, dst: str) -> None:
    """Copy a directory so that the destination appears whole (copy aside, then rename)."""
    dst_path = Path(dst)
    if dst_path.resolve() == Path(src).resolve():
        return
    dst_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst_path.parent / f".{dst_path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    if dst_path.exists():
        shutil.rmtree(dst_path)
    os.replace(tmp, dst_path)
    sweep_stale_temporaries(dst_path)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def to_parquet_bytes(df: Any, metadata: dict[str, str] | None = None) -> bytes:
    """Parquet bytes of a DataFrame or Arrow table; `metadata` goes into the file's key-value metadata
    (the lineage travels with the data)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    table = df if isinstance(df, pa.Table) else pa.Table.from_pandas(df, preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{k.encode(): v.encode() for k, v in metadata.items()}})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()
