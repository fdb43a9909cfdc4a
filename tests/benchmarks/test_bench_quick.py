"""Every benchmark still runs (quick mode, small sizes). Figures are reported, never asserted on."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
def test_every_benchmark_runs_in_quick_mode(tmp_path):
    names = sorted(p.stem for p in (ROOT / "benchmarks").glob("bench_*.py"))
    assert names, "no benchmarks found"
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "results-quick.json").read_text())
    assert report["errors"] == {}
    assert {f["benchmark"] for f in report["figures"]} >= {n.removeprefix("bench_") for n in names}
    for figure in report["figures"]:
        assert figure["project"] == figure["project"] and figure["project"] > 0, figure  # a real, positive number
    assert (tmp_path / "results-quick.md").read_text().count("\n| ") >= len(report["figures"])
