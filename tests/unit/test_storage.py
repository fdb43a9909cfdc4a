"""Atomic local writes, and the clean-up of what killed writers leave beside their target."""

from __future__ import annotations

import os
import time
from pathlib import Path

from components.core import storage


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_write_removes_stale_temporaries_of_the_same_file_and_keeps_fresh_and_foreign_ones(tmp_path: Path) -> None:
    target = tmp_path / "valid.parquet"
    stale = tmp_path / ".valid.parquet.abc123.tmp"  # what mkstemp left when its writer was SIGKILLed
    fresh = tmp_path / ".valid.parquet.def456.tmp"  # maybe a writer still running
    other = tmp_path / ".quarantine.parquet.zzz.tmp"  # another file's leftovers: its own writes sweep them
    stale_dir = tmp_path / ".valid.parquet.tmp-4242"  # a killed copy_dir
    for path in (stale, fresh, other):
        path.write_bytes(b"partial")
    stale_dir.mkdir()
    (stale_dir / "part").write_bytes(b"partial")
    for path in (stale, other, stale_dir):
        _age(path, storage.STALE_TEMPORARY_S + 60)

    storage.write_bytes(str(target), b"complete")

    assert target.read_bytes() == b"complete"
    assert not stale.exists() and not stale_dir.exists()
    assert fresh.exists() and other.exists()


def test_copy_dir_replaces_whole_and_sweeps_its_stale_copies(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "out" / "bundle"
    src.mkdir()
    (src / "model.pt2").write_bytes(b"weights")
    dst.parent.mkdir()
    stale = dst.parent / ".bundle.tmp-999"
    stale.mkdir()
    _age(stale, storage.STALE_TEMPORARY_S + 60)
    storage.copy_dir(str(src), str(dst))
    assert (dst / "model.pt2").read_bytes() == b"weights"
    assert not stale.exists()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["bundle"]


def _create(args: tuple[str, bytes]) -> bool:
    return storage.create_once(*args)


def test_create_once_has_exactly_one_winner_among_racing_processes(tmp_path: Path) -> None:
    import multiprocessing

    target = tmp_path / "state" / "first_seen.json"
    payloads = [f"writer {i}\n".encode() * 1000 for i in range(8)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        won = pool.map(_create, [(str(target), p) for p in payloads])
    assert sum(won) == 1
    assert target.read_bytes() == payloads[won.index(True)]  # whole: the winner's bytes, never a mix
    assert not list(target.parent.glob(".*.tmp"))  # losers leave nothing behind
    assert storage.create_once(str(target), b"late") is False and target.read_bytes() == payloads[won.index(True)]


def test_write_once_returns_the_first_record_to_every_later_writer(tmp_path: Path) -> None:
    from components.core import lineage

    path = str(tmp_path / "first_runs" / "abc.json")
    assert lineage.write_once(path, {"run_id": "first"}) == {"run_id": "first"}
    assert lineage.write_once(path, {"run_id": "second"}) == {"run_id": "first"}


def test_create_once_on_s3_is_a_conditional_put(moto_endpoint: str, monkeypatch) -> None:
    for var, value in {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    client = storage.s3_client()
    client.create_bucket(Bucket="create-once")
    uri = "s3://create-once/state/first_seen/abc.json"
    assert storage.create_once(uri, b"first") is True
    assert storage.create_once(uri, b"second") is False
    assert storage.read_bytes(uri) == b"first"
