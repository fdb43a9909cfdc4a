"""Static security scans that run in CI on a clean clone: bandit on the project's code (the checkov scans of the
manifests are in test_manifests.py). The scanners are required: `make test` installs them into .venv-tools."""

from __future__ import annotations

import json
import subprocess

from tests.contract import manifest_tools as mt

PACKAGES = ("components", "pipelines", "serving")


def _bandit(*args: str) -> dict:
    proc = subprocess.run(
        [str(mt.tool("bandit")), "-q", "-r", *PACKAGES, "-f", "json", *args], cwd=mt.REPO, capture_output=True, text=True, timeout=300
    )
    if proc.returncode not in (0, 1):  # 1: findings at the requested level
        raise AssertionError(f"bandit failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


def test_bandit_is_installed() -> None:
    assert mt.tool("bandit").is_file()  # raises naming `make test` when absent: a failure, never a skip


def test_bandit_finds_no_high_severity_issue() -> None:
    """High severity at any confidence (-lll): e.g. shell=True, pickle/yaml.load of untrusted data, weak crypto,
    debug servers, disabled TLS verification. Lower levels are reviewed by hand (see the lead's notes)."""
    report = _bandit("-lll")
    assert not report["errors"], f"bandit could not scan: {report['errors']}"
    scanned = [name for name in report["metrics"] if name != "_totals"]
    assert any(name.startswith("serving/") for name in scanned) and len(scanned) > 20, "bandit scanned too little"
    findings = [f"{r['filename']}:{r['line_number']} {r['test_id']} {r['issue_text']}" for r in report["results"]]
    assert not findings, "bandit high-severity findings:\n" + "\n".join(findings)


def test_bandit_catches_a_high_severity_issue(tmp_path) -> None:
    """The scan above can fail: the same invocation flags a subprocess call with shell=True."""
    bad = tmp_path / "bad.py"
    bad.write_text("import subprocess\n\ndef run(cmd: str) -> None:\n    subprocess.call(cmd, shell=True)\n")
    proc = subprocess.run([str(mt.tool("bandit")), "-q", "-lll", "-f", "json", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert [r["test_id"] for r in json.loads(proc.stdout)["results"]] == ["B602"]
