"""Personal data kept out: marked values go through the data steps (ingest, validate with quarantine and its
report) and a served request's request-log write path (V1 parsing, the sink, inline and event-loop batches), and
no marker string is found in clear anywhere under the state directory; the entity key is there as its keyed hash
(a join key still), and nowhere in clear.
"""

import asyncio
import hashlib
import hmac
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.core import privacy
from components.core.request_log import RequestLogWriter
from components.core.settings import get_settings
from components.core.spec import bundled_spec_path, load_spec
from components.data.step import ingest_step, validate_step
from components.data.suite import write_suite
from serving.request_sink import RequestLogSink
from serving.requests import Schema, parse_v1
from tests.conftest import make_csv
from tests.factories import LocalArtifact

pytestmark = pytest.mark.integration

KEY = "test-only-key-0123456789abcdef"
EMAIL, NAME = "pii-marker-mail-", "PIIMARKERNAME"


def personal_spec(folder: Path) -> Path:
    """The bundled transactions spec, keyed by a personal e-mail address, with a personal name column."""
    doc = yaml.safe_load(bundled_spec_path("transactions").read_text())
    doc |= {"entity": "customer_email", "privacy": {"pii": ["customer_email", "customer_name"]}}
    path = folder / "transactions_pii.yaml"
    path.write_text(yaml.safe_dump(doc))
    write_suite(str(path))
    return path


def marked_csv(folder: Path, rows: int) -> Path:
    path = make_csv(folder / "gen.csv", rows=rows, seed=11, bad_fraction=0.05)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    df["customer_email"] = [f"{EMAIL}{i}@example.org" for i in range(len(df))]
    df["customer_name"] = [f"{NAME}{i}" for i in range(len(df))]
    target = folder / "marked.csv"
    df.to_csv(target, index=False)
    return target


def files_containing(root: Path, needles: list[bytes]) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and any(n in p.read_bytes() for n in needles)]


def test_marked_values_are_nowhere_in_clear(tmp_path, state_dir, monkeypatch):
    monkeypatch.setenv("MLWF_PII_HASH_KEY", KEY)
    spec_path = personal_spec(tmp_path)
    spec = load_spec(str(spec_path))
    source = marked_csv(tmp_path, rows=400)

    out = state_dir / "artifacts"  # the step outputs under the state directory too, so the search covers them
    out.mkdir(parents=True)
    raw, valid, quarantine = (LocalArtifact(out / n) for n in ("raw", "valid", "quarantine"))
    report = LocalArtifact(out / "report.html")
    ingest_step(str(spec_path), str(source), raw, "run-pii")
    validate_step(str(spec_path), "run-pii", raw, valid, quarantine, report, LocalArtifact(out / "metrics"))
    quarantined = pd.read_parquet(quarantine.path)
    assert len(quarantined) > 0  # quarantine records and report examples were written

    # a served request: V1 rows with the entity key next to the features, small (inline) and large (event loop)
    rule = privacy.rule_for(spec, get_settings().pii_hash_key)
    schema = Schema(tuple(f.name for f in spec.numeric), tuple(f.name for f in spec.categorical), spec.entity)
    sink = RequestLogSink(str(state_dir / "request_logs"), "pii-model", schema.names, schema.numeric, flush_interval_s=3600, privacy=rule)
    sink.start()
    row = {"amount": 12.5, "hour_of_day": 3, "card_age_days": 40, "distance_km": 2.0, "txn_count_24h": 1}
    row |= {"merchant_category": "grocery", "channel": "pos", "country": "DE"}
    small = parse_v1({"instances": [row | {"customer_email": f"{EMAIL}req{i}@example.org"} for i in range(3)]}, schema)
    large = parse_v1({"instances": [row | {"customer_email": f"{EMAIL}big{i}@example.org"} for i in range(300)]}, schema)
    sink.submit(small, np.full(3, 0.2), np.zeros(3, dtype=np.int64), "v1", "req-small")

    async def serve() -> None:
        sink.submit(large, np.full(300, 0.2), np.zeros(300, dtype=np.int64), "v1", "req-large")
        await asyncio.sleep(0)

    asyncio.run(serve())
    sink.close()
    # the writer other tools use (demos, backfills) follows the same rule
    writer = RequestLogWriter(str(state_dir / "request_logs"), "pii-tool", privacy=rule)
    writer.log([row], [0.3], [0], "v1", "tool", entities=[f"{EMAIL}tool@example.org"])
    writer.flush()

    logs = list((state_dir / "request_logs").rglob("*.jsonl"))
    assert logs and sum(len(p.read_text().splitlines()) for p in logs) == 3 + 300 + 1
    assert files_containing(state_dir, [EMAIL.encode(), NAME.encode()]) == []

    # still a join key: the hash of a known address is what the valid rows, the quarantine and the logs hold
    def hashed(value: str) -> str:
        return hmac.new(KEY.encode(), value.encode(), hashlib.sha256).hexdigest()

    valid_rows = pd.read_parquet(valid.path)
    keys = set(valid_rows["customer_email"]) | set(quarantined["customer_email"])
    assert hashed(f"{EMAIL}0@example.org") in keys and "customer_name" not in valid_rows.columns
    assert files_containing(state_dir / "request_logs", [hashed(f"{EMAIL}big7@example.org").encode()])


def test_a_sensitive_attribute_that_is_not_a_feature_reaches_the_test_rows_for_the_audit_only(tmp_path, state_dir):
    """`sensitive: [country, region]` where region is no feature: it travels from the input through validation to
    the training and test sets (so the bias audit can group by it), and never into the feature store."""
    from components.evaluation.fairness import bias_audit
    from components.features.step import features_step

    doc = yaml.safe_load(bundled_spec_path("transactions").read_text())
    doc["sensitive"] = ["country", "region"]
    spec_path = tmp_path / "transactions_regions.yaml"
    spec_path.write_text(yaml.safe_dump(doc))
    write_suite(str(spec_path))
    source = make_csv(tmp_path / "gen.csv", rows=1500, seed=3, bad_fraction=0.02)
    df = pd.read_csv(source, dtype=str, keep_default_na=False)
    df["region"] = np.where(np.arange(len(df)) % 3 == 0, "north", "south")
    df.to_csv(source, index=False)

    out = state_dir / "artifacts"
    out.mkdir(parents=True)
    raw, valid, quarantine, train, test = (LocalArtifact(out / n) for n in ("raw", "valid", "quarantine", "train", "test"))
    ingest_step(str(spec_path), str(source), raw, "run-region")
    validate_step(str(spec_path), "run-region", raw, valid, quarantine, LocalArtifact(out / "report.html"), LocalArtifact(out / "m"))
    features_step(str(spec_path), valid, train, test)
    train_rows, test_rows = pd.read_parquet(train.path), pd.read_parquet(test.path)
    assert {"north", "south"} == set(train_rows["region"]) and "region" in test_rows.columns
    assert "region" not in load_spec(str(spec_path)).feature_names
    offline = list(Path(get_settings().feast_offline_root).rglob("*.parquet"))
    assert offline and all("region" not in pd.read_parquet(p).columns for p in offline)
    audit = bias_audit(test_rows, np.full(len(test_rows), 0.1), 0.5, ["region"], train_rows, min_group_rows=10)
    assert set(audit["attributes"]["region"]["gated_groups"]) == {"north", "south"}
