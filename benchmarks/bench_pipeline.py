"""End to end: wall time and peak memory of the whole local pipeline (kfp.local) on demo data.

Each kfp.local task is a fresh process, so process start-up and imports are part of every step's time.
The run happens in a child process (a fresh state directory, its own model-server port) so the peak
memory is that of the run: the largest resident set of any step process (RUSAGE_CHILDREN of the run).
Each step's share of the wall time shows which one to make faster. The anchor is the bare cost of
starting the step processes: one `python -c "import <what the step imports>"` per step, measured here.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import Figure

STEP_IMPORTS = {
    "ingest-op": "import pandas, pyarrow, kfp",
    "validate-op": "import great_expectations, pandas, kfp",
    "features-op": "import feast, pandas, kfp",
    "train-op": "import torch, mlflow, sklearn, kfp",
    "evaluate-op": "import torch, mlflow, sklearn, matplotlib, kfp",
    "deploy-op": "import torch, mlflow, requests, kfp",
}

CHILD = r"""
import json, os, resource, sys, time
from components.data.datagen import GenConfig, write
from pipelines.local import run_local
from components.deployment.processes import stop_local
rows, data = int(sys.argv[1]), sys.argv[2]
write(GenConfig(rows=rows, seed=7, bad_fraction=0.01), data)
run = run_local({"dataset_spec": "transactions", "source_uri": data, "epochs": 10, "min_roc_auc": 0.5})
for record in (run.run_dir.parent.parent / "serving").glob("*/server.json"):
    stop_local(record)
peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": run.seconds, "steps": run.step_seconds(), "peak_mb": peak_kb / 1024}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(rows: int) -> dict:
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "MLWF_STATE_DIR": state, "MLWF_SERVE_PORT": str(_free_port()), "MLWF_PROFILE": "local"}
        env.pop("MLFLOW_TRACKING_URI", None)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(rows), str(Path(state) / "tx.csv")],
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
            cwd=Path(__file__).resolve().parents[1],
        )
        if out.returncode != 0:
            raise RuntimeError(f"pipeline run on {rows} rows failed: {out.stderr.strip().splitlines()[-1:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def _startup_seconds() -> float:
    total = 0.0
    for imports in STEP_IMPORTS.values():
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", imports], check=True, capture_output=True)
        total += time.perf_counter() - started
    return total


def run(quick: bool) -> list[Figure]:
    sizes = [5_000] if quick else [100_000, 1_000_000]
    startup = _startup_seconds()
    figures = []
    for rows in sizes:
        result = _run(rows)
        steps = result["steps"]
        slowest = max(steps, key=steps.get)
        shares = ", ".join(f"{k.removesuffix('-op')} {v / result['seconds']:.0%}" for k, v in steps.items())
        figures.append(
            Figure(
                "pipeline",
                f"local pipeline, {rows:,} rows: wall time (s)",
                result["seconds"],
                startup,
                "process start-up + imports of the 6 steps",
                False,
                "report; slowest step visible",
                notes=f"slowest: {slowest} ({steps[slowest]:.1f}s); shares: {shares}",
            )
        )
        figures.append(
            Figure("pipeline", f"local pipeline, {rows:,} rows: peak memory of a step (MB)", result["peak_mb"], None, "", False, "report")
        )
    return figures
