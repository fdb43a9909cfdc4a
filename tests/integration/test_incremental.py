"""Incremental, idempotent ingest + validate, through the step functions the pipeline runs.

A directory source gains files: only new or changed files are read, the output is the union of every
file, a rerun writes byte-identical outputs, a run killed mid-write leaves nothing partial behind, and
any valid row or model version traces back to its source file and line.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from components.core import lineage, storage
from components.data import ingest as ingest_module
from components.data.step import ingest_step, validate_step
from pipelines.cli import main
from tests.conftest import assert_whole_files, make_csv
from tests.factories import LocalArtifact

pytestmark = pytest.mark.integration


def landing_file(folder: Path, name: str, rows: int, seed: int, bad_fraction: float = 0.02) -> Path:
    """A demo-data CSV whose ids are unique to this file (the generator numbers every file from 0)."""
    path = make_csv(folder / f".{name}.gen.csv", rows=rows, seed=seed, bad_fraction=bad_fraction)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["transaction_id"] = name.split(".")[0] + "-" + df["transaction_id"]
    target = folder / name
    df.to_csv(target, index=False)
    path.unlink()
    return target


def run_steps(source: Path, out: Path, run_id: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    raw, valid, quarantine = (LocalArtifact(out / n) for n in ("raw", "valid", "quarantine"))
    report, metrics = LocalArtifact(out / "report.html"), LocalArtifact(out / "metrics")
    rows, fingerprint = ingest_step("transactions", str(source), raw, run_id)
    validate_step("transactions", run_id, raw, valid, quarantine, report, metrics)
    return {"rows": rows, "fingerprint": fingerprint, "raw": raw, "valid": valid, "quarantine": quarantine, "metrics": metrics}


def read_bytes(run: dict[str, Any], name: str) -> bytes:
    return Path(run[name].path).read_bytes()


def test_only_new_files_are_read_and_reruns_are_byte_identical(tmp_path, state_dir, monkeypatch):
    folder = tmp_path / "landing"
    folder.mkdir()
    a = landing_file(folder, "a.csv", 1500, seed=1)
    b = landing_file(folder, "b.csv", 1200, seed=2)
    reads: list[str] = []
    real_read = ingest_module._read
    monkeypatch.setattr(ingest_module, "_read", lambda path, source: reads.append(Path(source).name) or real_read(path, source))

    first = run_steps(folder, tmp_path / "run1", "run-1")
    assert sorted(reads) == ["a.csv", "b.csv"] and first["rows"] == 2700
    assert first["metrics"].metrics["rows"] == 2700 == first["metrics"].metrics["valid"] + first["metrics"].metrics["quarantined"]
    assert first["metrics"].metrics["quarantined"] > 0

    # the same input again: nothing read, every output byte-identical, quarantine records keep their first run
    reads.clear()
    second = run_steps(folder, tmp_path / "run2", "run-2")
    assert reads == [] and second["fingerprint"] == first["fingerprint"]
    assert second["raw"].metadata["skipped_files"] == 2 and second["raw"].metadata["new_files"] == 0
    for name in ("raw", "valid", "quarantine"):
        assert read_bytes(first, name) == read_bytes(second, name), name
    assert set(pd.read_parquet(second["quarantine"].path)["run_id"]) == {"run-1"}

    # a new file: only it is read; downstream sees the union, with no duplicate rows
    c = landing_file(folder, "c.csv", 900, seed=3)
    reads.clear()
    third = run_steps(folder, tmp_path / "run3", "run-3")
    assert reads == ["c.csv"] and third["rows"] == 3600 and third["fingerprint"] != first["fingerprint"]
    valid = pd.read_parquet(third["valid"].path)
    quarantined = pd.read_parquet(third["quarantine"].path)
    assert len(valid) + len(quarantined) == 3600
    assert not valid.duplicated(["transaction_id", "event_timestamp"]).any()
    assert set(valid["source_file"]) == {str(a), str(b), str(c)}
    assert set(quarantined.loc[quarantined["source"] == str(c), "run_id"]) == {"run-3"}

    # a changed file counts in its new version only; the others are not read again
    pd.read_csv(b, dtype=str, keep_default_na=False).head(1000).to_csv(b, index=False)
    reads.clear()
    fourth = run_steps(folder, tmp_path / "run4", "run-4")
    assert reads == ["b.csv"] and fourth["rows"] == 3400

    # lineage: the dataset version lists its files; a valid row leads back to its file and line
    info = lineage.describe_dataset(str(state_dir), "transactions")
    assert info["dataset_fingerprint"] == fourth["fingerprint"] and [f["uri"] for f in info["files"]] == [str(a), str(b), str(c)]
    assert info["validation"]["valid"] + info["validation"]["quarantined"] == 3400
    row = pd.read_parquet(fourth["valid"].path).iloc[1234]
    line = Path(row["source_file"]).read_text().splitlines()[int(row["source_line"]) - 1]
    assert line.startswith(row["transaction_id"] + ",")
    assert main(["lineage", "transactions", "--row", row["transaction_id"]]) == 0
    # each dataset version has one quarantine record set in the store: reruns rewrote, never added
    assert len(list((state_dir / "quarantine" / "transactions").glob("*.parquet"))) == 3
    meta = json.loads(__import__("pyarrow.parquet").parquet.read_schema(fourth["valid"].path).metadata[b"mlwf.lineage"])
    assert meta["dataset_fingerprint"] == fourth["fingerprint"] and meta["suite_version"] == info["suite_version"]


def test_a_write_that_fails_half_way_leaves_no_partial_output(tmp_path, state_dir, monkeypatch):
    folder = tmp_path / "landing"
    folder.mkdir()
    landing_file(folder, "a.csv", 800, seed=1)
    landing_file(folder, "b.csv", 700, seed=2)
    writes = []
    real_write, real_create = storage.write_bytes, storage.create_once
    monkeypatch.setattr(storage, "write_bytes", lambda uri, data: writes.append(uri) or real_write(uri, data))
    monkeypatch.setattr(storage, "create_once", lambda uri, data: writes.append(uri) or real_create(uri, data))
    reference = run_steps(folder, tmp_path / "reference", "ref")
    monkeypatch.setattr(storage, "write_bytes", real_write)
    monkeypatch.setattr(storage, "create_once", real_create)
    assert len(writes) >= 10

    real_replace, real_link = os.replace, os.link
    for k in range(len(writes)):  # a fresh state each time, dying at the k-th commit (rename or link) of a first run
        monkeypatch.setenv("MLWF_STATE_DIR", str(tmp_path / f"state{k}"))
        calls = {"n": 0}

        def dying(real, _k=k, _calls=calls):
            def commit(src, dst):
                if _calls["n"] == _k:
                    raise KeyboardInterrupt("killed between write and rename")
                _calls["n"] += 1
                return real(src, dst)

            return commit

        monkeypatch.setattr(os, "replace", dying(real_replace))
        monkeypatch.setattr(os, "link", dying(real_link))
        with pytest.raises(KeyboardInterrupt):
            run_steps(folder, tmp_path / f"killed{k}", f"killed-{k}")
        monkeypatch.setattr(os, "replace", real_replace)
        monkeypatch.setattr(os, "link", real_link)
        assert_whole_files(tmp_path)
        # the rerun converges: the same rows as a run that was never interrupted, and reruns are stable
        again = run_steps(folder, tmp_path / f"after{k}", "after")
        pd.testing.assert_frame_equal(pd.read_parquet(again["valid"].path), pd.read_parquet(reference["valid"].path))
        assert len(pd.read_parquet(again["quarantine"].path)) == len(pd.read_parquet(reference["quarantine"].path))
        once_more = run_steps(folder, tmp_path / f"again{k}", "again")
        for name in ("raw", "valid", "quarantine"):
            assert read_bytes(once_more, name) == read_bytes(again, name), (k, name)


KILLED_INGEST = """
import sys
from components.data.ingest import ingest
from components.core.spec import load_spec
ingest(load_spec("transactions"), sys.argv[1], sys.argv[2], sys.argv[3], run_id="killed")
"""


@pytest.mark.parametrize("delay", [1.5, 3.0])
def test_a_killed_ingest_leaves_nothing_partial_and_a_rerun_converges(tmp_path, state_dir, delay):
    folder = tmp_path / "landing"
    folder.mkdir()
    for i in range(4):
        landing_file(folder, f"part{i}.csv", 60_000, seed=i, bad_fraction=0.0)
    out = tmp_path / "raw.parquet"
    env = {**os.environ, "MLWF_STATE_DIR": str(state_dir)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_INGEST, str(folder), str(out), str(state_dir)], env=env)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert_whole_files(tmp_path)
    if out.exists():
        assert len(pd.read_parquet(out)) == 240_000  # whole or absent
    from components.core.spec import load_spec
    from components.data.ingest import ingest

    result = ingest(load_spec("transactions"), str(folder), str(out), str(state_dir), run_id="rerun")
    assert result.rows == 240_000 and len(pd.read_parquet(out)) == 240_000


def test_model_version_lineage_leads_to_the_input_files(tmp_path, state_dir, capsys):
    import mlflow

    from components.core import tracking
    from components.core.settings import get_settings

    folder = tmp_path / "landing"
    folder.mkdir()
    a = landing_file(folder, "a.csv", 600, seed=1)
    run = run_steps(folder, tmp_path / "run", "run-1")
    client = tracking.configure(get_settings())
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "signature.json").write_text(json.dumps({"lineage": {"dataset": "transactions", "dataset_fingerprint": run["fingerprint"]}}))
    with mlflow.start_run() as mlrun:
        mlflow.set_tags({"mlwf.dataset": "transactions", "mlwf.dataset_fingerprint": run["fingerprint"]})
        mlflow.log_artifacts(str(bundle), artifact_path="bundle")
    version = tracking.register(client, "transactions_classifier", mlrun.info.run_id, f"{mlrun.info.artifact_uri}/bundle", {}, "test")
    info = lineage.describe_model(f"transactions_classifier/{version}")
    assert info["bundle_lineage"]["dataset_fingerprint"] == run["fingerprint"]
    assert [f["uri"] for f in info["dataset_version"]["files"]] == [str(a)]
    client.set_registered_model_alias("transactions_classifier", "champion", version)
    assert main(["lineage", "transactions_classifier@champion"]) == 0
    printed = capsys.readouterr().out
    assert str(a) in printed and run["fingerprint"][:16] in printed


@pytest.fixture
def s3_bucket(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for var, value in {
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(var, value)
    storage.s3_client().create_bucket(Bucket="landing")
    yield "landing"
    server.stop()


def test_an_s3_prefix_is_ingested_incrementally(tmp_path, state_dir, s3_bucket, monkeypatch):
    from components.core.spec import load_spec
    from components.data.ingest import ingest

    client = storage.s3_client()
    for name, seed in (("a.csv", 1), ("b.csv", 2)):
        client.upload_file(str(landing_file(tmp_path, name, 300, seed=seed)), s3_bucket, f"tx/2026/{name}")
    client.put_object(Bucket=s3_bucket, Key="tx/_SUCCESS", Body=b"")
    spec, out = load_spec("transactions"), tmp_path / "raw.parquet"
    first = ingest(spec, "s3://landing/tx", str(out), str(state_dir), run_id="r1")
    assert first.rows == 600 and first.new_files == ["s3://landing/tx/2026/a.csv", "s3://landing/tx/2026/b.csv"]
    fetched = []
    real = storage.local_copy
    monkeypatch.setattr(storage, "local_copy", lambda uri, work: fetched.append(uri) or real(uri, work))
    client.upload_file(str(landing_file(tmp_path, "c.csv", 200, seed=3)), s3_bucket, "tx/2026/c.csv")
    second = ingest(spec, "s3://landing/tx/", str(out), str(state_dir), run_id="r2")
    # unchanged objects are known by size and ETag: not even downloaded
    assert fetched == ["s3://landing/tx/2026/c.csv"] and second.rows == 800
    assert set(pd.read_parquet(out)["source_file"]) == {f"s3://landing/tx/2026/{n}" for n in ("a.csv", "b.csv", "c.csv")}
