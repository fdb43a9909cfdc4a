"""Fault: the validate step and the features step's offline-store writer are SIGKILLed at a random moment while
they write (quarantine store, valid/quarantine datasets, report, lineage records, date partitions), several times.

Expected: nothing half-written is ever visible under a final name (temporary names are dot-prefixed), and a rerun
converges. Proof that nothing was lost or duplicated: after each kill and rerun, the sha256 of every output file
equals that of a run that was never interrupted, whose partitions hold each (entity, event time) once.

The killed ingest is covered in tests/integration/test_incremental.py. The work runs in a forked child of this
process (modules already imported), so each kill lands in the writing, not in seconds of imports.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from tests.conftest import assert_whole_files, make_csv
from tests.factories import LocalArtifact

pytestmark = pytest.mark.integration
DATASET = "transactions"
TRIALS = 4


def _write_everything(state: str, out: str, raw_meta: dict[str, Any]) -> None:
    """The child: the validate step, then the features step's offline-store writer, on the same paths every time."""
    os.environ["MLWF_STATE_DIR"] = state
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.data.step import validate_step
    from components.features.store import write_offline

    root = Path(out)
    raw = LocalArtifact(root / "raw")
    raw.metadata.update(raw_meta)
    valid, quarantine = LocalArtifact(root / "valid"), LocalArtifact(root / "quarantine")
    validate_step(DATASET, "run-v", raw, valid, quarantine, LocalArtifact(root / "report.html"), LocalArtifact(root / "metrics"))
    write_offline(pd.read_parquet(valid.path), load_spec(DATASET), get_settings())


def _tree(*roots: Path) -> dict[str, str]:
    """sha256 of every file under its final name (dot-prefixed temporary names left by a kill are not outputs)."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            rel = path.relative_to(root.parent)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                out[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def test_sigkill_while_validate_and_features_write_then_rerun_gives_identical_outputs(tmp_path, state_dir):
    """Fault: SIGKILL at a random point of the sequence of writes, TRIALS times. Behaviour: no partial file under a
    final name; the rerun completes. Proof nothing was lost: every output's sha256 equals the uninterrupted run's,
    and the partitions hold each (entity, event time) exactly once."""
    from components.core.spec import load_spec
    from components.data.ingest import ingest

    fork = multiprocessing.get_context("fork")
    template = tmp_path / "template"
    source = make_csv(tmp_path / "landing" / "tx.csv", rows=12_000, seed=11, bad_fraction=0.02)
    result = ingest(load_spec(DATASET), str(source), str(tmp_path / "raw.parquet"), str(template), run_id="ingest")
    raw_meta = {"source": str(source), "dataset_fingerprint": result.fingerprint}
    state, out = tmp_path / "state", tmp_path / "out"

    def fresh() -> None:
        for path in (state, out):
            shutil.rmtree(path, ignore_errors=True)
        shutil.copytree(template, state)
        out.mkdir()
        shutil.copy(tmp_path / "raw.parquet", out / "raw")

    def files() -> int:
        return sum(1 for root in (state, out) for _, _, names in os.walk(root) for n in names if not n.startswith("."))

    def run(kill_at_files: int | None = None) -> int | None:
        """Run the writers; with `kill_at_files`, SIGKILL them as soon as that many files exist under final names."""
        child = fork.Process(target=_write_everything, args=(str(state), str(out), raw_meta))
        child.start()
        if kill_at_files is not None:
            while child.is_alive() and files() < kill_at_files:
                time.sleep(0.002)
            child.kill()  # SIGKILL: no handler, no cleanup
        child.join(120)
        return child.exitcode

    # The uninterrupted reference, and how many files it adds: the kills aim inside that sequence of writes.
    fresh()
    inputs = files()
    assert run() == 0
    reference = _tree(state, out)
    outputs = files() - inputs
    partitions = sorted((state / "feast" / "offline" / DATASET).rglob("data.parquet"))
    assert len(partitions) > 3
    for part in partitions:
        frame = pd.read_parquet(part)
        assert not frame.duplicated(["transaction_id", "event_timestamp"]).any(), part

    rng = random.Random(20261124)
    # The first kill lands among the validate step's few outputs, the others anywhere in the writing (the last
    # few writes are left out: the child could finish before the kill reaches it).
    targets = [inputs + rng.randint(1, 4)] + [inputs + rng.randint(1, outputs - 5) for _ in range(TRIALS - 1)]
    for trial, target in enumerate(targets):
        fresh()
        code = run(kill_at_files=target)
        assert code == -9, f"trial {trial}: the writers were not killed mid-run (exit {code})"
        assert_whole_files(state, out)
        assert run() == 0, f"trial {trial}: the rerun after a kill at file {target - inputs} of {outputs} failed"
        got = _tree(state, out)
        assert got == reference, (
            f"trial {trial} (killed at file {target - inputs} of {outputs}): outputs differ from "
            f"the uninterrupted run: {sorted(k for k in reference.keys() | got.keys() if reference.get(k) != got.get(k))}"
        )
