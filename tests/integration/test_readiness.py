"""`mlwf readiness` against a real local MLflow store and state directory, built by the pipeline's own step
functions (ingest, validate, features, train, evaluate, then the readiness step): a version that meets every
blocking item exits 0; a blocking item that fails (a policy that makes the missing monitor blocking, a validation
record gone) exits 1 and says which; a reference to no version exits 2 in one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Markdown, Metrics, Model

from components.core import tracking
from components.core.settings import get_settings
from pipelines.cli import main
from tests.conftest import make_csv

pytestmark = pytest.mark.integration

MODEL = "transactions_classifier"
# The gate this test needs a small logistic model to pass, with a check of every kind the readiness policy asks for.
GATE = """
version: 1
dataset: transactions
candidates: [logistic]
thresholds: {min_roc_auc: 0.55, max_brier: 0.2}
latency: {max_p99_ms: 200.0, rows: 50}
slices: {attributes: [channel], min_rows: 100, min_positives: 5, max_gap: {roc_auc: 1.0}}
champion: {max_regression: {roc_auc: 1.0}}
baseline: {kind: logistic_regression, max_regression: {roc_auc: 1.0}}
importance: {repeats: 1, rows: 300}
"""
# The bundled policy less the bias bound (that gate check belongs to the evaluation's own tests): a fresh store has
# no monitor run, no previous champion and no built image, which the bundled policy makes advisory locally.
READINESS = """
version: 1
items: {monitoring: advisory, rollback: advisory, images: advisory}
gate: {require: [baseline, champion, calibration, latency, slices]}
"""


def art(cls: Any, folder: Path, name: str) -> Any:
    return cls(name=name, uri=str(folder / name), metadata={})


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A version trained and evaluated by the step functions, as the pipeline runs them, in a fresh state store
    (built once for the module: training is the slow part)."""
    from components.data.step import ingest_step, validate_step
    from components.evaluation.step import evaluate_step
    from components.features.step import features_step
    from components.training.step import train_step

    tmp_path = tmp_path_factory.mktemp("readiness")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLWF_STATE_DIR", str(tmp_path / "state"))
    mp.setenv("MLWF_PROFILE", "local")
    for var in ("MLFLOW_TRACKING_URI", "MLWF_FEAST_REGISTRY", "MLWF_FEAST_ONLINE", "MLWF_FEAST_OFFLINE_ROOT", "MLWF_MODEL_NAME"):
        mp.delenv(var, raising=False)
    out = tmp_path / "steps"
    out.mkdir()
    (tmp_path / "gate.policy.yaml").write_text(GATE)
    data = make_csv(tmp_path / "tx.csv", rows=4000, bad_fraction=0.01)
    raw, valid, quarantine = art(Dataset, out, "raw"), art(Dataset, out, "valid"), art(Dataset, out, "quarantine")
    _, fingerprint = ingest_step("transactions", str(data), raw, "run-r1")
    validate_step("transactions", "run-r1", raw, valid, quarantine, art(HTML, out, "validation.html"), art(Metrics, out, "vm"))
    train_set, test_set = art(Dataset, out, "train"), art(Dataset, out, "test")
    service = features_step("transactions", valid, train_set, test_set)
    model = art(Model, out, "model")
    name, version = train_step("transactions", train_set, service, fingerprint, 3, 42, model, art(Metrics, out, "tm"), families="logistic")
    chosen = art(Model, out, "chosen")
    passed = evaluate_step(
        model,
        train_set,
        test_set,
        name,
        version,
        "transactions",
        str(tmp_path / "gate.policy.yaml"),
        -1.0,
        -1.0,
        -1.0,
        art(Metrics, out, "em"),
        art(ClassificationMetrics, out, "roc"),
        art(HTML, out, "report.html"),
        art(Markdown, out, "card.md"),
        verdict=art(Markdown, out, "verdict.md"),
        chosen=chosen,
    )
    assert passed and name == MODEL, "the fixture's gate must pass"
    (tmp_path / "readiness.policy.yaml").write_text(READINESS)
    yield {"version": version, "chosen": chosen, "out": out, "policy": str(tmp_path / "readiness.policy.yaml")}
    mp.undo()


def run_cli(*args: str) -> int:
    return main(["readiness", *args])


def test_the_pipeline_step_writes_html_markdown_and_logs_to_the_version(evaluated: dict[str, Any]) -> None:
    from components.governance.step import readiness_step

    out = evaluated["out"]
    report, summary = art(HTML, out, "readiness.html"), art(Markdown, out, "readiness.md")
    ready = readiness_step(MODEL, "0", evaluated["chosen"], report, summary, policy=evaluated["policy"])
    version = evaluated["version"]  # from the chosen bundle's metadata, not the argument
    assert ready is True and report.metadata["version"] == version and report.metadata["ready"] is True
    assert Path(summary.path).read_text().startswith(f"# Readiness READY (with advisories): {MODEL} v{version}\n")
    client = tracking.configure(get_settings())
    mv = client.get_model_version(MODEL, version)
    assert mv.tags["mlwf.readiness"] == "ready"
    logged = {Path(a.path).name for a in client.list_artifacts(mv.run_id, "readiness")}
    assert logged == {"readiness.md", "readiness.html", "readiness.json"}


def test_readiness_exit_codes_follow_the_blocking_items(
    evaluated: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version, policy = evaluated["version"], evaluated["policy"]
    good = tmp_path / "good"
    assert run_cli(f"{MODEL}@challenger", "--out", str(good), "--policy", policy) == 0
    record = json.loads((good / "readiness.json").read_text())
    assert record["ready"] is True and record["version"] == version
    status = {i["item"]: i["status"] for i in record["items"]}
    assert {k for k, v in status.items() if v == "PASS"} >= {"data_validated", "lineage", "reproducible", "gate", "explanations"}
    assert status["monitoring"] == "WARN" and status["rollback"] == "WARN"  # advisory: reported, not blocking
    # the readiness report links to the evaluation report the evaluate step logged to the version's run
    link = record["links"]["evaluation_report"]
    assert link.endswith("/evaluation/report.html") and Path(link.removeprefix("file://")).exists()
    assert "href=" in (good / "readiness.html").read_text() and "READY" in capsys.readouterr().out

    # the same version under a policy that makes the missing monitor blocking: not ready, exit 1
    strict = tmp_path / "strict.yaml"
    strict.write_text(Path(policy).read_text().replace("monitoring: advisory", "monitoring: blocking"))
    assert run_cli(f"{MODEL}/{version}", "--out", str(tmp_path / "strict"), "--policy", str(strict)) == 1
    assert "NOT READY: blocking monitoring" in capsys.readouterr().out

    # evidence gone: without the validation record of its training data, the version is not ready
    validation = Path(json.loads((good / "readiness.json").read_text())["items"][0]["evidence"][2].removeprefix("record "))
    validation.unlink()
    assert run_cli(f"{MODEL}@challenger", "--out", str(tmp_path / "gone"), "--policy", policy) == 1
    failed = json.loads((tmp_path / "gone" / "readiness.json").read_text())["blocking_failures"]
    assert failed == ["data_validated"]

    # bad input: one line, exit 2, nothing written
    capsys.readouterr()
    assert run_cli(f"{MODEL}@nosuch", "--out", str(tmp_path / "bad")) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlwf: error: no model version") and err.count("\n") == 1 and not (tmp_path / "bad").exists()
    assert run_cli(MODEL, "--out", str(tmp_path / "bad")) == 2
