"""Running the pipeline on one machine with kfp.local: the embedded default, no cluster, no Docker.

Every step is a fresh Python process of this virtualenv (SubprocessRunner with use_venv=False: the
project is installed, nothing is pip-installed at run time). Settings reach the steps through the
environment, so the state directory is made absolute before the first step starts.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.settings import get_settings


class PipelineFailed(RuntimeError):
    """A step of the local run failed; the message names the step and its error."""


@dataclass
class LocalRun:
    run_dir: Path
    seconds: float
    started_at: float  # time.time() when the run started
    tasks: dict[str, Path] = field(default_factory=dict)  # task name -> its output directory

    def ran(self, task: str) -> bool:
        return task in self.tasks

    def artifact(self, task: str, name: str) -> Path:
        return self.tasks[task] / name

    def step_seconds(self) -> dict[str, float]:
        """Wall time of each step, process start-up and imports included, in the order they finished.

        The steps of this pipeline run one after another, so a step's time is the gap between its
        executor output and the previous one's (the first is measured from the start of the run).
        """
        done = sorted(
            ((p / "executor_output.json").stat().st_mtime, name)
            for name, p in self.tasks.items()
            if (p / "executor_output.json").exists()
        )
        out: dict[str, float] = {}
        previous = self.started_at
        for mtime, name in done:
            out[name] = max(mtime - previous, 0.0)
            previous = mtime
        return out

    def output(self, task: str, name: str) -> Any:
        """A task's output parameter, as the local runner recorded it."""
        meta = json.loads((self.tasks[task] / "executor_output.json").read_text())
        value = meta.get("parameterValues", {}).get(name)
        return value


def run_local(arguments: dict[str, Any]) -> LocalRun:
    """Run the training pipeline locally (no GPU request: kfp.local ignores it anyway)."""
    from pipelines.training import PIPELINE_NAME, training_pipeline

    return run_pipeline_locally(training_pipeline, {"gpu_count": 0, **arguments}, PIPELINE_NAME)


def run_pipeline_locally(pipeline: Any, arguments: dict[str, Any], name: str) -> LocalRun:
    """Run a pipeline with kfp.local; return where its steps wrote, raising PipelineFailed with the first error line."""
    import kfp.local

    settings = get_settings()
    os.environ["MLWF_STATE_DIR"] = settings.state_dir  # absolute, for every step process
    os.environ.setdefault("MLWF_PROFILE", "local")
    root = Path(settings.state_dir) / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    before = {p.name for p in root.iterdir()}
    started_at = time.time()
    started = time.perf_counter()
    try:
        pipeline(**arguments)
    except RuntimeError as err:
        raise PipelineFailed(_first_error_line(err)) from err
    finally:
        elapsed = time.perf_counter() - started
    new = sorted((p for p in root.iterdir() if p.name not in before and p.is_dir() and p.name.startswith(name)),
                 key=lambda p: p.stat().st_mtime)
    if not new:
        raise PipelineFailed(f"the local run of {name} left no output under {root}")
    run_dir = new[-1]
    tasks = {p.name: p for p in run_dir.iterdir() if p.is_dir()}
    return LocalRun(run_dir=run_dir, seconds=elapsed, started_at=started_at, tasks=tasks)


def _first_error_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
