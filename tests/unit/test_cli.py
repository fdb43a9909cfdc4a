"""The CLI as a user meets it: bad input gives one line, a non-zero exit, and nothing in the state directory."""

import subprocess
import sys

import pytest

from pipelines.cli import main
from pipelines.kfp_api import parse_arguments
from tests.conftest import make_csv


def run_cli(*args: str, env_state) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "MLWF_STATE_DIR": str(env_state)}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "input not found"),
        (b"", "empty (0 bytes)"),
        (b"transaction_id,event_time\n", "lacks"),
        (b'a,b\n1,"2\n', "unreadable CSV"),
    ],
)
def test_bad_input_one_line_error_and_nothing_written(tmp_path, content, message):
    state = tmp_path / "state"
    data = tmp_path / "input.csv"
    if content is not None:
        data.write_bytes(content)
    result = run_cli("run", "--local", "--data", str(data), env_state=state)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("mlwf: error:") and message in lines[0], result.stderr
    assert not state.exists() or not any(p.is_file() for p in state.rglob("*"))


def test_spec_naming_a_missing_column(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nlabel: {column: y, positive: 1}\nfeatures: {numeric: [x, nope]}\n")
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,0\n2,1\n")
    result = run_cli("run", "--local", "--dataset", str(spec), "--data", str(data), env_state=tmp_path / "state")
    assert result.returncode == 2 and "lacks: ['nope']" in result.stderr


@pytest.mark.parametrize(
    "policy, message",
    [
        ("version: 1\ncandidates: [network, xgboost]\n", "candidates: unknown model family 'xgboost'"),
        ("version: 1\nthresholds: {min_auc: 0.7}\n", "min_auc"),
        ("version: 1\ndecision: {costs: {fp: -1, fn: 5}}\n", "decision.costs.fp: -1 is not a cost"),
    ],
)
def test_a_bad_gate_policy_fails_in_one_line_before_any_step(tmp_path, policy, message):
    """The train step reads its candidates and costs from the policy: a bad one must not cost a pipeline run."""
    state = tmp_path / "state"
    data = make_csv(tmp_path / "tx.csv", rows=50)
    (tmp_path / "bad.policy.yaml").write_text(policy)
    result = run_cli("run", "--local", "--data", str(data), "--gate-policy", str(tmp_path / "bad.policy.yaml"), env_state=state)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not (state / "kfp").exists()


def test_the_spark_engine_without_java_fails_in_one_line_before_any_step(tmp_path, state_dir, monkeypatch, capsys):
    """`--engine spark` on a machine without Java: what to install, and no pipeline run started."""
    data = make_csv(tmp_path / "tx.csv", rows=50)
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no java on PATH
    monkeypatch.delenv("JAVA_HOME", raising=False)
    assert main(["run", "--local", "--data", str(data), "--engine", "spark"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Java 17 runtime" in lines[0] and "openjdk-17" in lines[0], lines
    assert not (state_dir / "kfp").exists()


def test_the_engine_option_reaches_the_validate_step_as_a_pipeline_parameter():
    from pipelines.cli import _run_arguments, build_parser

    args = build_parser().parse_args(["run", "--local", "--engine", "spark"])
    assert _run_arguments(args, "data.csv")["engine"] == "spark"
    assert _run_arguments(build_parser().parse_args(["run", "--local"]), "data.csv")["engine"] == ""  # the MLWF_ENGINE setting


def test_generate_writes_the_demo_data(tmp_path, capsys):
    out = tmp_path / "tx.parquet"
    assert main(["generate", "--rows", "300", "--out", str(out)]) == 0
    assert out.exists() and "wrote 300 rows" in capsys.readouterr().out


def test_run_without_local_points_to_submit(tmp_path, state_dir, capsys):
    data = make_csv(tmp_path / "tx.csv", rows=50)
    assert main(["run", "--data", str(data)]) == 2
    assert "mlwf submit" in capsys.readouterr().err


def test_submit_arguments_parse_as_json_when_they_can():
    assert parse_arguments(["epochs=5", "source_uri=s3://b/k.csv", "min_roc_auc=0.8"]) == {
        "epochs": 5,
        "source_uri": "s3://b/k.csv",
        "min_roc_auc": 0.8,
    }
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_arguments(["oops"])


def test_digest_pinning_keeps_a_registry_port():
    from pipelines.compile import pin_digest

    digest = "sha256:" + "b" * 64
    assert pin_digest("localhost:5000/mlwf/components:1.2", digest) == f"localhost:5000/mlwf/components@{digest}"
    assert pin_digest("ghcr.io/mlwf/components", digest) == f"ghcr.io/mlwf/components@{digest}"
    assert pin_digest("ghcr.io/mlwf/components@sha256:old", digest) == f"ghcr.io/mlwf/components@{digest}"


def test_submit_fills_gpu_placement_from_settings(monkeypatch):
    from pathlib import Path

    from pipelines.kfp_api import with_gpu_placement

    package = str(Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "training.yaml")
    monkeypatch.setenv("MLWF_GPU_TOLERATIONS", '[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]')
    monkeypatch.setenv("MLWF_GPU_NODE_SELECTOR", '{"nvidia.com/gpu.present": "true"}')
    gpu = with_gpu_placement(package, {})
    assert gpu["gpu_tolerations"][0]["key"] == "nvidia.com/gpu" and gpu["gpu_node_selector"] == {"nvidia.com/gpu.present": "true"}
    cpu = with_gpu_placement(package, {"gpu_count": 0})
    assert cpu["gpu_node_selector"] == {} and cpu["gpu_count"] == 0
    assert with_gpu_placement(package, {"gpu_node_selector": {"a": "b"}})["gpu_node_selector"] == {"a": "b"}


def test_suite_command_and_first_use_of_a_local_spec(tmp_path, state_dir, capsys):
    from pipelines.cli import check_inputs

    spec = tmp_path / "churn.yaml"
    spec.write_text("name: churn\nlabel: {column: y, positive: 1}\nfeatures: {numeric: {x: {min: 0}}}\n")
    data = tmp_path / "d.csv"
    data.write_text("x,y\n1,0\n2,1\n")
    check_inputs(str(spec), str(data))  # first use: the suite is written beside the spec, and the user told
    assert (tmp_path / "churn.suite.json").exists() and "wrote the validation suite" in capsys.readouterr().out
    assert main(["suite", "--dataset", str(spec), "--check"]) == 0
    spec.write_text(spec.read_text().replace("min: 0", "min: 1"))
    assert main(["suite", "--dataset", str(spec), "--check"]) == 2
    assert "stale" in capsys.readouterr().err
    with pytest.raises(ValueError, match="stale"):
        check_inputs(str(spec), str(data))
    assert main(["suite", "--dataset", str(spec)]) == 0 and "wrote" in capsys.readouterr().out
    check_inputs(str(spec), str(data))


# --- a local run as a person reads it -----------------------------------------------------------------------------
# Two tiny lightweight components run by the real kfp.local SubprocessRunner (as `mlwf run --local` runs its steps):
# one floods its output the way a real step does, one fails with a traceback after doing so.

from kfp import dsl  # noqa: E402  (beside the components it builds)

_component = dsl.component(base_image="python:3.11", install_kfp_package=False)


@_component
def noisy_op(lines: int) -> int:
    import sys
    import warnings

    for i in range(lines):
        print(f"noisy line {i}")
    print("native-looking noise on stderr", file=sys.stderr)
    warnings.warn("a library warning", stacklevel=1)
    return lines


@_component
def failing_op(lines: int):
    for i in range(lines):
        print(f"chatter {i}")

    def load_model(path: str) -> None:
        raise ValueError(f"the model bundle at {path} has no signature")

    load_model("/nowhere/bundle")


@dsl.pipeline(name="log-capture-ok")
def ok_pipeline(lines: int = 200) -> None:
    first = noisy_op(lines=lines).set_display_name("first")
    noisy_op(lines=first.output).set_display_name("second")


@dsl.pipeline(name="log-capture-fail")
def failing_pipeline(lines: int = 200) -> None:
    first = noisy_op(lines=lines).set_display_name("first")
    failing_op(lines=first.output).set_display_name("breaks")


def test_a_local_run_prints_a_line_per_step_and_logs_everything_else(state_dir, capfd):
    import io

    from pipelines.local import run_pipeline_locally

    console = io.StringIO()
    seen = []
    run = run_pipeline_locally(
        ok_pipeline, {"lines": 200}, "log-capture-ok", console, lambda task, where: seen.append(task) or f"{task} result"
    )
    lines = console.getvalue().splitlines()
    assert len(lines) == 2, console.getvalue()
    assert lines[0].startswith("[1/2] first ...") and lines[0].endswith("noisy-op result")
    assert lines[1].startswith("[2/2] second ...") and " s  " in lines[1]
    leaked = capfd.readouterr()
    assert "noisy line" not in leaked.out + leaked.err and "executor_input" not in leaked.out + leaked.err, leaked
    logs = run.logs_dir
    assert sorted(p.name for p in logs.iterdir()) == ["noisy-op-2.log", "noisy-op.log", "pipeline.log"]
    first = (logs / "noisy-op.log").read_text()
    assert "noisy line 199" in first and "Got executor_input" in first and "native-looking noise on stderr" in first
    assert "Running pipeline" in (logs / "pipeline.log").read_text()
    assert [s.display for s in run.steps] == ["first", "second"] and all(s.ok for s in run.steps)
    assert run.output("noisy-op-2", "Output") == 200


def test_a_failing_step_names_itself_its_log_and_prints_the_tail(state_dir, capfd):
    import io

    from pipelines.local import TAIL_LINES, PipelineFailed, run_pipeline_locally

    console = io.StringIO()
    with pytest.raises(PipelineFailed) as caught:
        run_pipeline_locally(failing_pipeline, {"lines": 200}, "log-capture-fail", console)
    err = caught.value
    first_line = str(err).splitlines()[0]
    assert "'breaks'" in first_line and "ValueError: the model bundle at /nowhere/bundle has no signature" in first_line
    assert err.log is not None and err.log.name == "failing-op.log" and str(err.log) in str(err)
    assert 0 < len(err.tail) <= TAIL_LINES
    assert any("Traceback (most recent call last)" in line for line in err.tail)
    assert any("in load_model" in line for line in err.tail)  # the traceback in full, down to the raising frame
    assert "chatter 199" in err.log.read_text()  # the whole output is in the log
    progress = console.getvalue().splitlines()
    assert progress[0].startswith("[1/2] first ...") and progress[1].startswith("[2/2] breaks ...")
    assert "FAILED" in progress[1] and str(err.log) in progress[1]
    leaked = capfd.readouterr()
    assert "chatter" not in leaked.out + leaked.err


def test_mlwf_run_prints_the_failing_steps_log_tail(tmp_path, state_dir, capfd, monkeypatch):
    from pipelines import cli, local

    def run_local(arguments, console=None, describe=None):
        return local.run_pipeline_locally(failing_pipeline, {"lines": 60}, "log-capture-fail", console, describe)

    monkeypatch.setattr(local, "run_local", run_local)
    monkeypatch.setattr(cli, "check_inputs", lambda dataset, source, gate_policy="", engine="": None)
    assert main(["run", "--local", "--data", str(tmp_path / "any.csv")]) == 2
    out, err = capfd.readouterr()
    assert "[2/2] breaks ..." in out and "FAILED" in out
    assert err.startswith("mlwf: error: step 'breaks' (failing-op) failed: ValueError: the model bundle")
    assert "failing-op.log" in err and "Traceback (most recent call last)" in err and 'raise ValueError(f"the model bundle' in err
    assert "executor_input" not in out + err and "chatter 0" not in out + err  # only the tail, never the whole dump


def test_every_option_says_its_default_and_epochs_is_a_maximum(capsys):
    import argparse

    from pipelines.cli import HelpFormatter, build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    formatter = HelpFormatter("mlwf")
    for name, command in commands.items():
        for action in command._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction) or action.required:
                continue
            text = formatter._get_help_string(action) or ""
            assert "default" in text.lower(), f"mlwf {name} {action.option_strings[0]}: {text!r}"
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--epochs EPOCHS maximum training epochs: early stopping ends training sooner" in help_text
    assert "(default: 30)" in help_text and "(default: transactions)" in help_text


def test_an_unknown_bundled_spec_lists_the_bundled_ones(tmp_path):
    result = run_cli("run", "--local", "--dataset", "transaction", "--data", str(tmp_path / "x.csv"), env_state=tmp_path / "state")
    assert result.returncode == 2
    assert "did you mean 'transactions'?" in result.stderr and "the bundled ones are transactions" in result.stderr


def test_a_misspelt_column_gets_did_you_mean(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: s\nlabel: {column: y, positive: 1}\nfeatures: {numeric: [amout, x]}\n")
    data = tmp_path / "d.csv"
    data.write_text("amount,x,y\n1,2,0\n2,3,1\n")
    result = run_cli("run", "--local", "--dataset", str(spec), "--data", str(data), env_state=tmp_path / "state")
    assert result.returncode == 2 and "lacks: ['amout'] (did you mean 'amount'?)" in result.stderr, result.stderr


def test_the_mlflow_line_is_a_command_that_runs_and_the_training_view_url(tmp_path, state_dir, monkeypatch):
    from pathlib import Path

    from components.core import tracking
    from components.core.settings import get_settings
    from pipelines.summary import mlflow_lines

    settings = get_settings()
    client = tracking.configure(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment).experiment_id
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the project's root, where `make mlflow-ui` works
    first, second = mlflow_lines(settings, client, None)
    assert f"make mlflow-ui MLWF_STATE_DIR={settings.state_dir}" in first
    command = first.split("(or: ", 1)[1].rstrip(")").split()
    assert command[1:] == ["ui", "--backend-store-uri", settings.mlflow_tracking_uri]
    assert Path(command[0]).absolute() == Path(sys.executable).parent.absolute() / "mlflow"  # this venv's mlflow
    assert second.strip() == f"then open http://127.0.0.1:5000/#/experiments/{experiment}?workflowType=machine_learning"
