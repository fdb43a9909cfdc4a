"""Running the pipeline on one machine with kfp.local: the embedded default, no cluster, no Docker.

Every step is a fresh Python process of this virtualenv (SubprocessRunner with use_venv=False: the
project is installed, nothing is pip-installed at run time). Settings reach the steps through the
environment, so the state directory is made absolute before the first step starts.

kfp.local prints everything on the console: each step's executor-input JSON, its logs and library
warnings, then every output artifact's metadata (hundreds of lines a step). A person reads one line
per step instead: the whole output of each step goes to `<run dir>/logs/<task>.log`, kfp's own lines to
`<run dir>/logs/pipeline.log`, and a failing step's error names the step, its log and the log's tail.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from components.core.settings import get_settings

TAIL_LINES = 40  # a failing step's log lines shown with its error: enough for the traceback


class PipelineFailed(RuntimeError):
    """A step of the local run failed; the message names the step, its error line, its log and the log's tail."""

    def __init__(self, message: str, step: str | None = None, log: Path | None = None, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.step, self.log, self.tail = step, log, tail or []


@dataclass
class StepRecord:
    task: str  # the task's name in the pipeline (= its output directory), e.g. "train-op"
    display: str  # its display name, e.g. "train"
    seconds: float
    ok: bool
    log: Path
    result: str = ""  # the key result a person reads on the progress line


@dataclass
class LocalRun:
    run_dir: Path
    seconds: float
    started_at: float  # time.time() when the run started
    tasks: dict[str, Path] = field(default_factory=dict)  # task name -> its output directory
    steps: list[StepRecord] = field(default_factory=list)  # in the order they ran
    logs_dir: Path | None = None

    def ran(self, task: str) -> bool:
        return task in self.tasks

    def artifact(self, task: str, name: str) -> Path:
        return self.tasks[task] / name

    def log(self, task: str) -> Path | None:
        return next((s.log for s in self.steps if s.task == task), None)

    def step_seconds(self) -> dict[str, float]:
        """Wall time of each step, process start-up and imports included, in the order they ran.

        Measured around each task when the run recorded its steps; otherwise the gap between one step's
        executor output and the previous one's (the steps of this pipeline run one after another).
        """
        if self.steps:
            return {s.task: s.seconds for s in self.steps}
        done = sorted(
            ((p / "executor_output.json").stat().st_mtime, name) for name, p in self.tasks.items() if (p / "executor_output.json").exists()
        )
        out: dict[str, float] = {}
        previous = self.started_at
        for mtime, name in done:
            out[name] = max(mtime - previous, 0.0)
            previous = mtime
        return out

    def output(self, task: str, name: str) -> Any:
        """A task's output parameter, as the local runner recorded it."""
        return task_output(self.tasks[task], name)

    def metadata(self, task: str, artifact: str) -> dict[str, Any]:
        """An output artifact's metadata (Metrics values included), as the local runner recorded it."""
        return artifact_metadata(self.tasks[task], artifact)


def _executor_output(task_dir: Path) -> dict[str, Any]:
    path = task_dir / "executor_output.json"
    return json.loads(path.read_text()) if path.exists() else {}


def task_output(task_dir: Path, name: str) -> Any:
    return _executor_output(task_dir).get("parameterValues", {}).get(name)


def artifact_metadata(task_dir: Path, artifact: str) -> dict[str, Any]:
    found = _executor_output(task_dir).get("artifacts", {}).get(artifact, {}).get("artifacts", [])
    return dict(found[0].get("metadata", {})) if found else {}


# What a caller shows on each step's progress line: (task name, its output directory) -> a short text;
# for a step that did not run the directory is None and the text says why.
Describe = Callable[[str, "Path | None"], str]
# Where progress lines go and how steps are described, for runs started by code the caller does not
# control (pipelines.monitoring starts its own run): set with `progress_to`.
_PROGRESS: threading.local = threading.local()


@contextlib.contextmanager
def progress_to(console: IO[str] | None, describe: Describe | None = None) -> Iterator[None]:
    """Within this block, local runs print one progress line per step to `console` (None: silent)."""
    saved = getattr(_PROGRESS, "value", None)
    _PROGRESS.value = (console, describe)
    try:
        yield
    finally:
        _PROGRESS.value = saved


def run_local(arguments: dict[str, Any], console: IO[str] | None = None, describe: Describe | None = None) -> LocalRun:
    """Run the training pipeline locally (no GPU request: kfp.local ignores it anyway)."""
    from pipelines.training import PIPELINE_NAME, training_pipeline

    return run_pipeline_locally(training_pipeline, {"gpu_count": 0, **arguments}, PIPELINE_NAME, console, describe)


def run_pipeline_locally(
    pipeline: Any, arguments: dict[str, Any], name: str, console: IO[str] | None = None, describe: Describe | None = None
) -> LocalRun:
    """Run a pipeline with kfp.local; return where its steps wrote and what they logged.

    Each step's output goes to its log file; `console` (default: the one set by `progress_to`, else none)
    gets a line per step as it starts and ends, with `describe`'s key result. A failed step raises
    PipelineFailed naming the step, its error line and its log, with the log's tail.
    """
    import kfp.local

    if console is None and describe is None:
        console, describe = getattr(_PROGRESS, "value", None) or (None, None)
    settings = get_settings()
    os.environ["MLWF_STATE_DIR"] = settings.state_dir  # absolute, for every step process
    os.environ.setdefault("MLWF_PROFILE", "local")
    root = Path(settings.state_dir) / "kfp"
    root.mkdir(parents=True, exist_ok=True)
    kfp.local.init(runner=kfp.local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    before = {p.name for p in root.iterdir()}
    recorder = _StepRecorder(console, describe, _executor_tasks(pipeline))
    pipeline_log = root / f".{name}-{os.getpid()}-{time.time_ns()}.log"  # moved into the run directory after
    started_at = time.time()
    started = time.perf_counter()
    failure: RuntimeError | None = None
    with recorder.console_open():  # before the redirection: progress lines must reach the real console
        try:
            with _captured(pipeline_log), _hooked(recorder), warnings.catch_warnings():
                # Every step names the placeholder image on purpose (compile writes the real one); kfp warns
                # about it once a step, which would open every failing step's log tail.
                warnings.filterwarnings(
                    "ignore",
                    message="You may be attemping to run a task that uses custom or non-Python base image",
                    category=RuntimeWarning,
                )
                pipeline(**arguments)
        except RuntimeError as err:  # kfp.local raises this when a task fails (raise_on_error=True)
            failure = err
        finally:
            elapsed = time.perf_counter() - started
        new = sorted(
            (p for p in root.iterdir() if p.name not in before and p.is_dir() and p.name.startswith(name)), key=lambda p: p.stat().st_mtime
        )
        run_dir = recorder.run_dir or (new[-1] if new else None)
        logs = run_dir / "logs" if run_dir else None
        if logs is not None:
            logs.mkdir(parents=True, exist_ok=True)
            pipeline_log = pipeline_log.replace(logs / "pipeline.log")
        if failure is not None:
            raise recorder.failure(failure, pipeline_log) from failure
        if run_dir is None:
            raise PipelineFailed(f"the local run of {name} left no output under {root} (kfp's log: {pipeline_log})")
        tasks = {p.name: p for p in run_dir.iterdir() if p.is_dir() and p.name != "logs"}
        recorder.report_skipped(tasks)
    return LocalRun(run_dir=run_dir, seconds=elapsed, started_at=started_at, tasks=tasks, steps=recorder.steps, logs_dir=logs)


def _executor_tasks(pipeline: Any) -> list[tuple[str, str]]:
    """(task directory name, display name) of every step the pipeline may run, sub-DAGs (dsl.If) included."""
    from kfp.local import executor_input_utils

    spec = getattr(pipeline, "pipeline_spec", None)
    if spec is None:
        return []
    found: list[tuple[str, str]] = []

    def walk(dag: Any) -> None:
        for task_name, task in dag.tasks.items():
            component = spec.components[task.component_ref.name]
            if component.WhichOneof("implementation") == "dag":
                walk(component.dag)
            else:
                found.append((executor_input_utils.get_local_task_resource_name(task.component_ref.name), task.task_info.name or task_name))

    walk(spec.root.dag)
    return found


@contextlib.contextmanager
def _captured(path: Path) -> Iterator[None]:
    """Everything written to stdout/stderr in this block goes to `path`: Python-level writers (kfp prints a
    step's output line by line, warnings, logging handlers on sys.stdout) and file-descriptor-level ones
    (native libraries, child processes that inherit the descriptors). Nested blocks nest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _flush_all()
    with open(path, "a", buffering=1, encoding="utf-8", errors="replace") as log:
        saved: list[tuple[int, int]] = []
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # no such descriptor (a daemonised process): nothing to redirect
                    continue
                os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            _flush_all()
            log.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _flush_all() -> None:
    for stream in {id(s): s for s in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__) if s is not None}.values():
        with contextlib.suppress(Exception):
            stream.flush()


@contextlib.contextmanager
def _console_stream(console: IO[str] | None) -> Iterator[IO[str] | None]:
    """A writer for progress lines that the redirection of descriptor 1 does not swallow: a copy of the
    descriptor when `console` writes to it, else `console` itself (a pytest capture, a StringIO)."""
    try:
        writes_fd1 = console is not None and console.fileno() == 1
    except (OSError, ValueError, AttributeError):
        writes_fd1 = False
    if not writes_fd1:
        yield console
        return
    assert console is not None
    console.flush()
    copy = os.fdopen(os.dup(1), "w", buffering=1, encoding=getattr(console, "encoding", None) or "utf-8", errors="replace")
    try:
        yield copy
    finally:
        copy.close()


class _StepRecorder:
    """Wraps each task kfp.local runs: its output into its log file, a progress line on the console."""

    def __init__(self, console: IO[str] | None, describe: Describe | None, planned: list[tuple[str, str]]) -> None:
        self.console, self.describe, self.planned = console, describe, planned
        self.total = len(planned)
        self.width = max((len(display) for _, display in planned), default=8)
        self.steps: list[StepRecord] = []
        self.run_dir: Path | None = None
        self.failed: StepRecord | None = None
        self.lock = threading.Lock()  # one step's descriptors at a time (parallel tasks take turns)
        self.out: IO[str] | None = None

    def _say(self, text: str) -> None:
        if self.out is not None:
            self.out.write(text)
            self.out.flush()

    def _prefix(self, display: str) -> str:
        return f"[{len(self.steps) + 1}/{max(self.total, len(self.steps) + 1)}] {display + ' ...':<{self.width + 4}} "

    def run(self, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        from kfp.local import executor_input_utils, status

        bound = inspect.signature(original).bind(*args, **kwargs)
        task_name = str(bound.arguments["task_name"])
        spec = bound.arguments["task_spec"]
        display = spec.task_info.name or task_name
        directory = executor_input_utils.get_local_task_resource_name(spec.component_ref.name)
        run_dir = Path(bound.arguments["pipeline_root"]) / str(bound.arguments["pipeline_resource_name"])
        with self.lock:
            self.run_dir = self.run_dir or run_dir
            log = run_dir / "logs" / f"{directory}.log"
            self._say(self._prefix(display))
            started = time.perf_counter()
            try:
                with _captured(log):
                    outputs, task_status = original(*args, **kwargs)
            except BaseException:
                outcome = StepRecord(directory, display, time.perf_counter() - started, False, log)
                self._finish(outcome)
                raise
            ok = task_status == status.Status.SUCCESS
            outcome = StepRecord(directory, display, time.perf_counter() - started, ok, log)
            if ok and self.describe is not None:
                try:
                    outcome.result = self.describe(directory, run_dir / directory)
                except Exception as err:  # a summary that cannot be read must not fail a finished step
                    outcome.result = f"(no summary: {type(err).__name__}: {err})"
            self._finish(outcome)
            return outputs, task_status

    def _finish(self, outcome: StepRecord) -> None:
        self.steps.append(outcome)
        if outcome.ok:
            self._say(f"{outcome.seconds:6.1f} s  {outcome.result}".rstrip() + "\n")
        else:
            self.failed = self.failed or outcome
            self._say(f"{outcome.seconds:6.1f} s  FAILED (log: {outcome.log})\n")

    def report_skipped(self, ran: dict[str, Path]) -> None:
        """A line for each step that did not run (a dsl.If whose condition was false), so every step has one."""
        k = len(self.steps)
        for directory, display in self.planned:
            if directory in ran:
                continue
            reason = "its condition was false"
            if self.describe is not None:
                with contextlib.suppress(Exception):
                    reason = self.describe(directory, None) or reason
            k += 1
            self._say(f"[{k}/{self.total}] {display + ' ...':<{self.width + 4}} skipped: {reason}\n")

    def failure(self, err: BaseException, pipeline_log: Path) -> PipelineFailed:
        """The error a person reads: which step, its error line, where its whole log is, and the log's tail."""
        step = self.failed
        if step is None:  # kfp itself failed, outside any step
            tail = _tail(pipeline_log)
            return PipelineFailed(f"{_first_line(err)} (kfp's log: {pipeline_log})\n" + "\n".join(tail), None, pipeline_log, tail)
        tail = _tail(step.log)
        line = _error_line(tail) or _first_line(err)
        message = (
            f"step {step.display!r} ({step.task}) failed: {line}\nIts whole log: {step.log}\n"
            f"Last {len(tail)} lines of it:\n" + "\n".join(f"  {t}" for t in tail)
        )
        return PipelineFailed(message, step.display, step.log, tail)

    @contextlib.contextmanager
    def console_open(self) -> Iterator[None]:
        with _console_stream(self.console) as out:
            self.out = out
            try:
                yield
            finally:
                self.out = None


@contextlib.contextmanager
def _hooked(recorder: _StepRecorder) -> Iterator[None]:
    """Route every task of kfp.local through the recorder.

    kfp 2.17's orchestrators (plain and control-flow) both run a task through
    `kfp.local.orchestrator.task_executor.execute_single_task` (cache, retries, the task's subprocess).
    It is not public API: a kfp without it fails here loudly instead of flooding the console.
    """
    from kfp.local.orchestrator import task_executor

    original = getattr(task_executor, "execute_single_task", None)
    if original is None or not {"task_name", "task_spec", "pipeline_root", "pipeline_resource_name"} <= set(
        inspect.signature(original).parameters
    ):
        raise RuntimeError(
            "kfp.local.orchestrator.task_executor.execute_single_task is missing or changed: "
            "pipelines/local.py needs updating for this kfp version"
        )

    def execute(*args: Any, **kwargs: Any) -> Any:
        return recorder.run(original, args, kwargs)

    task_executor.execute_single_task = execute
    try:
        yield
    finally:
        task_executor.execute_single_task = original


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Failed|Failure|Exit|Interrupt)\b:?")


def _tail(path: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last lines of a log that say something: kfp's closing status lines and separators are left out."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    kept: list[str] = []
    dump = False  # inside kfp's executor-input JSON, which says nothing about the error
    closing = None  # the line that ends that JSON: its opening brace's indent, then "}"
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        if dump:
            if closing is None and line.strip() == "{":
                closing = line[: len(line) - 1] + "}"
            elif line == closing or closing is None:
                dump, closing = False, None
            continue
        if line.endswith("Got executor_input:"):
            dump = True
            continue
        kept.append(line)
    kept = [line for line in kept if line.strip("-= ") and "finished with status" not in line]
    return kept[-lines:]


def _error_line(tail: list[str]) -> str | None:
    """The step's own exception: the last exception line of its traceback."""
    found = [line.strip() for line in tail if _EXCEPTION.match(line.strip())]
    return found[-1] if found else None


def _first_line(err: BaseException) -> str:
    text = _ANSI.sub("", str(err)).strip()
    return text.splitlines()[0] if text else type(err).__name__
