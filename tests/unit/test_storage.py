"""Atomic local writes, and the clean-up of what killed writers leave beside their target."""

from __future__ import annotations

import os
import time
from pathlib import Path

from components import storage


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
