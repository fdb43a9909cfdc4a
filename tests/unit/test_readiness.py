"""The readiness checklist's items, each passing and failing on fabricated evidence; the policy; the report files."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.governance import readiness as r
from components.governance.report import bundled_policy_path, html, load_policy, markdown, write
from components.governance.scan import final_user, is_root, secret_findings

NOW = "2026-12-02T12:00:00+00:00"


def good() -> dict[str, Any]:
    """Evidence of a version that passes every item (what evidence.gather returns, trimmed to what is judged)."""
    return {
        "ref": "clf@champion",
        "model": "clf",
        "version": "3",
        "now": NOW,
        "bundle_uri": "file:///mlflow/3/bundle",
        "max_bad_fraction": 0.2,
        "validation_path": "/state/validate/tx/abc.json",
        "validation": {"rows": 1000, "valid": 990, "quarantined": 10, "suite_version": "s1", "spec_sha256": "f" * 64},
        "lineage": {
            "dataset_fingerprint": "abc",
            "code_version": "1234abcd",
            "feature_service": "tx_v1",
            "training_set_sha256": "d" * 64,
            "manifest": "/state/ingest/tx/manifests/abc.json",
        },
        "reproducibility": {
            "params": {"seed": "42", "epochs": "30"},
            "environment": {"python": "3.11", "torch": "2.13"},
            "inputs_fingerprint": "fp",
            "reused_by": "3",
        },
        "gate_tag": "passed",
        "gate_policy_tag": "tx.policy.yaml v3",
        "sensitive": ["country"],
        "gate": {
            "passed": True,
            "reasons": [],
            "notes": [],
            "champion": {"version": "2", "roc_auc": 0.8},
            "fairness": {"attributes": {"country": {}}},
            "policy": {"slices": {"attributes": ["country"]}},
            "checks": [
                {"name": n, "passed": True, "message": f"{n} ok"}
                for n in (
                    "min_roc_auc",
                    "max_ece",
                    "max_p99_latency_ms",
                    "slice_gap.country.roc_auc",
                    "champion.roc_auc",
                    "baseline.roc_auc",
                    "bias.demographic_parity_difference[country]",  # as the evaluate step names it
                )
            ],
        },
        "evaluation_report": "file:///mlflow/run/artifacts/evaluation/report.html",
        "bundle": {"files": ["background.json", "model.pt2"], "background_sealed": True, "background_rows": 100},
        "privacy": {
            "checked": True,
            "pii": ["email"],
            "entity": "tx_id",
            "hash_key": False,
            "features": ["amount", "country"],
            "example_columns": ["amount", "country"],
            "log_columns": ["amount", "country"],
            "log_rows": 10,
            "log_entities_unhashed": 0,
        },
        "model_card": {"found": {"run artifact model_card.md": 900}, "has_evaluation": True},
        "monitoring": {"alert_rules": ["MlwfFeatureDrift"], "rules_file": "manifests/x.yaml", "last_run": "2026-12-02T10:00:00+00:00"},
        "rollback": {"version": "2", "status": "READY", "gate": "passed", "source": "file:///mlflow/2/bundle"},
        "images": {
            "pinned": {"serving": "r/serving@sha256:" + "a" * 64},
            "unpinned": {},
            "dockerfile_users": {"serving/Dockerfile": "1000:1000"},
        },
        "secrets": {"packages": ["pipelines/compiled/training.yaml"], "compared": [], "findings": {"pipelines/compiled/training.yaml": []}},
        "links": {"evaluation_report": "file:///mlflow/run/artifacts/evaluation/report.html"},
    }


def changed(path: str, value: Any) -> dict[str, Any]:
    """good() with one value replaced (a dotted path into the evidence; `None` deletes)."""
    ev = copy.deepcopy(good())
    *head, last = path.split(".")
    node = ev
    for key in head:
        node = node[key]
    if value is None:
        node.pop(last)
    else:
        node[last] = value
    return ev


POLICY = r.parse_policy({"items": {i: "blocking" for i in r.ITEMS}})


def result(ev: dict[str, Any], item: str) -> r.ItemResult:
    return next(x for x in r.assess(ev, POLICY).items if x.item == item)


def test_good_evidence_passes_every_item_and_each_states_its_evidence() -> None:
    a = r.assess(good(), POLICY)
    assert [x.item for x in a.items if not x.passed] == []
    assert a.ready and all(x.evidence for x in a.items)


@pytest.mark.parametrize(
    ("item", "path", "value", "why"),
    [
        ("data_validated", "validation", {}, "no validation record"),
        ("data_validated", "validation.quarantined", 300, "over the limit 20.00%"),
        ("data_validated", "validation.suite_version", "", "no suite version"),
        ("lineage", "lineage.feature_service", "", "FeatureService"),
        ("lineage", "lineage.manifest", "", "ingest manifest"),
        ("lineage", "lineage.code_version", "unknown", "code version (unknown)"),
        ("reproducible", "reproducibility.params", {"epochs": "3"}, "seed"),
        ("reproducible", "reproducibility.environment", {}, "environment"),
        ("reproducible", "reproducibility.reused_by", "1", "would reuse version 1"),
        ("gate", "gate", None, "never evaluated"),
        ("gate", "gate_tag", "failed", "did not pass"),
        ("gate", "gate.fairness", None, "were not audited"),
        ("explanations", "bundle.background_sealed", False, "501"),
        ("explanations", "bundle.explain_probe", "500 Internal Server Error", "answered 500"),
        ("privacy", "privacy.example_columns", ["amount", "email"], "email in the input example"),
        ("privacy", "privacy.log_columns", ["email"], "email in the request logs"),
        ("privacy", "privacy.checked", False, "could not check"),
        ("model_card", "model_card.found", {}, "no model card"),
        ("model_card", "model_card.has_evaluation", False, "no evaluation section"),
        ("monitoring", "monitoring.last_run", "2026-11-20T10:00:00+00:00", "within 48 h"),
        ("monitoring", "monitoring.alert_rules", [], "no alert rule"),
        ("rollback", "rollback", {}, "no previous champion"),
        ("rollback", "rollback.status", "missing (deleted)", "not servable"),
        ("images", "images.unpinned", {"components": "r/components:latest"}, "not pinned by digest"),
        ("images", "images.dockerfile_users", {"serving/Dockerfile": None}, "runs as root"),
        ("images", "images.uid", 0, "runs as root"),
        ("secrets", "secrets.findings", {"p.yaml": ["the value of AWS_SECRET_ACCESS_KEY"]}, "AWS_SECRET_ACCESS_KEY"),
        ("secrets", "secrets.packages", [], "no compiled package"),
    ],
)
def test_each_item_fails_on_its_missing_or_bad_evidence(item: str, path: str, value: Any, why: str) -> None:
    ev = changed(path, value)
    got = result(ev, item)
    assert not got.passed and why in got.detail, got.detail
    others = [x.item for x in r.assess(ev, POLICY).items if not x.passed]
    assert others == [item]  # one piece of evidence fails one item only


def test_gate_names_every_kind_of_check_it_did_not_make() -> None:
    ev = good()
    ev["gate"]["checks"] = [c for c in ev["gate"]["checks"] if not c["name"].startswith(("baseline.", "max_ece", "bias."))]
    got = r.check_gate(ev)
    assert not got.passed and "baseline" in got.detail and "calibration" in got.detail and "bounds none" in got.detail
    # the policy decides what the gate must have judged
    assert r.check_gate(ev, ("latency", "slices")).passed


def test_gate_accepts_a_first_version_and_a_spec_without_sensitive_attributes() -> None:
    ev = good()
    ev["gate"]["checks"] = [c for c in ev["gate"]["checks"] if not c["name"].startswith(("champion.", "bias."))]
    ev["gate"]["champion"], ev["gate"]["notes"] = None, ["no champion yet: judged on the absolute thresholds only"]
    ev["sensitive"], ev["gate"]["fairness"] = [], None
    assert r.check_gate(ev).passed
    ev["gate"]["notes"] = []  # no champion and no note saying why: the comparison is missing
    assert "champion" in r.check_gate(ev).detail


def test_a_failed_check_fails_the_gate_with_its_reason() -> None:
    ev = good()
    ev["gate"]["checks"][0] |= {"passed": False, "message": "roc_auc 0.6 is below the minimum 0.75"}
    ev["gate"]["reasons"] = ["roc_auc 0.6 is below the minimum 0.75"]
    assert "below the minimum 0.75" in r.check_gate(ev).detail


def test_personal_entity_key_needs_the_hash_key_and_hashed_logs() -> None:
    ev = changed("privacy.entity", "email")
    assert not r.check_privacy(ev).passed and "MLWF_PII_HASH_KEY" in r.check_privacy(ev).detail
    ev["privacy"] |= {"hash_key": True, "log_columns": ["amount"]}
    assert r.check_privacy(ev).passed
    ev["privacy"]["log_entities_unhashed"] = 3
    assert "3 request-log entity value(s)" in r.check_privacy(ev).detail


def test_a_cluster_drift_schedule_counts_as_monitoring() -> None:
    ev = changed("monitoring.last_run", None)
    assert not r.check_monitoring(ev).passed
    ev["monitoring"]["schedules"] = ["mlwf-drift-monitor (0 0 * * * *)"]
    assert r.check_monitoring(ev).passed


def test_policy_sets_blocking_and_advisory_and_the_cluster_overrides() -> None:
    data = yaml.safe_load(bundled_policy_path().read_text())
    local, cluster = r.parse_policy(data, "bundled", "local"), r.parse_policy(data, "bundled", "cluster")
    assert local.severity["monitoring"] == "advisory" and cluster.severity["monitoring"] == "blocking"
    assert set(local.severity) == set(r.ITEMS)
    ev = changed("rollback", {})
    assert r.assess(ev, local).ready and not r.assess(ev, cluster).ready  # the same failure, advisory vs blocking
    assert [x.status for x in r.assess(ev, local).items if x.item == "rollback"] == ["WARN"]
    # an item the file leaves out blocks
    assert r.parse_policy({"items": {}}).severity["secrets"] == "blocking"


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"items": {"gates": "blocking"}}, "items.gates is not an item"),
        ({"items": {"gate": "maybe"}}, "must be blocking or advisory"),
        ({"gate": {"require": ["speed"]}}, "unknown kind(s) ['speed']"),
        ({"extra": 1}, "unknown key(s) ['extra']"),
        ([], "expected a mapping"),
    ],
)
def test_bad_policy_is_one_line(doc: Any, message: str) -> None:
    with pytest.raises(r.ReadinessError, match=None) as err:
        r.parse_policy(doc, "p.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_load_policy_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(r.ReadinessError, match="readiness policy not found"):
        load_policy(str(tmp_path / "none.yaml"))
    assert load_policy().version >= 1


def test_dockerfile_user_and_secret_scan() -> None:
    assert final_user("FROM a AS build\nUSER 1000\nFROM b\nRUN x\n") is None  # USER of an earlier stage does not count
    assert final_user("FROM a\nUSER 1000:1000\n") == "1000:1000" and not is_root("1000:1000") and is_root("root")
    package = "env:\n  - name: AWS_SECRET_ACCESS_KEY\n    valueFrom: {secretKeyRef: {name: mlwf-s3}}\n"
    assert secret_findings(package, {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}) == []
    assert secret_findings(package + "x: s3cr3t-value\n", {"AWS_SECRET_ACCESS_KEY": "s3cr3t-value"}) == [
        "the value of AWS_SECRET_ACCESS_KEY"
    ]
    assert secret_findings("- name: MLFLOW_TRACKING_PASSWORD\n  value: hunter22\n", {}) == ["a literal value for MLFLOW_TRACKING_PASSWORD"]
    assert secret_findings("uri: postgresql://feast:pw@db:5432/x key AKIAABCDEFGHIJKLMNOP", {}) == [
        "AWS access key id",
        "password in a URL",
    ]


def test_report_files_say_the_verdict_and_escape_values(tmp_path: Path) -> None:
    ev = changed("gate_tag", "failed")
    ev["validation"]["suite_version"] = "<script>alert(1)</script>"
    a = r.assess(ev, POLICY)
    files = write(a, str(tmp_path))
    record = json.loads(Path(files["json"]).read_text())
    assert record["ready"] is False and record["blocking_failures"] == ["gate"]
    assert record["links"]["evaluation_report"].endswith("evaluation/report.html")
    assert {i["item"]: i["status"] for i in record["items"]}["gate"] == "FAIL"
    page = html(a)
    assert "<script>alert" not in page and "&lt;script&gt;" in page and "NOT READY" in page
    assert 'href="file:///mlflow/run/artifacts/evaluation/report.html"' in page
    md = markdown(a)
    assert md.startswith("# Readiness NOT READY: clf v3\n") and "| FAIL | Gate passed | blocking |" in md
