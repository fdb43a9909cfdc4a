"""What a person reads about a run: MLflow run names and links, a version's description, the gate's verdict
Markdown, the image a step records and the pipeline parameters' descriptions. All pure functions."""

from __future__ import annotations

from dataclasses import replace

import pytest

from components.core import tracking
from components.core.settings import get_settings
from components.evaluation.evaluate import Evaluation, GatePolicy, checks
from components.evaluation.verdict import evaluation_summary, verdict_markdown
from components.training.run import training_description
from pipelines.ops import STEP_IMAGE_ENV, stamp_image
from pipelines.training import one_line_args

UUID = "1a2b3c4d-5e6f-4a1b-8c9d-0e1f2a3b4c5d"
POLICY = GatePolicy(
    min_roc_auc=0.8,
    max_p99_latency_ms=5.0,
    max_regression={"roc_auc": 0.01},
    version=3,
    source="components/datasets/transactions.policy.yaml",
)
METRICS = {
    "roc_auc": 0.7712,
    "pr_auc": 0.41,
    "f1": 0.5,
    "precision": 0.45,
    "recall": 0.56,
    "ece": 0.02,
    "latency_p50_ms": 0.1,
    "latency_p99_ms": 0.3,
}
DATA = {"rows": 1200, "positives": 140, "from": "2024-03-01", "to": "2024-03-31"}


def evaluation(metrics: dict, champion: dict | None = None, policy: GatePolicy = POLICY) -> Evaluation:
    """An Evaluation as evaluate() fills it, the verdict decided by the gate's own check code."""
    found = checks(metrics, policy, champion)
    reasons = [c.message for c in found if not c.passed]
    return Evaluation(
        metrics=metrics,
        passed=not reasons,
        reasons=reasons,
        checks=found,
        champion=champion,
        policy=policy,
        data=DATA,
        notes=["no champion yet: judged on the absolute thresholds only"],
    )


# --- run names and pipeline links ------------------------------------------------------------------------


def test_run_names_say_dataset_version_and_pipeline_run():
    assert tracking.run_name("transactions", "3", UUID) == "transactions · candidate v3 · run 1a2b3c4d"
    assert tracking.run_name("transactions", None, UUID) == "transactions · training · run 1a2b3c4d"
    assert tracking.run_name("transactions", "3", "") == "transactions · candidate v3"  # a direct call: no pipeline
    assert tracking.run_name("transactions", "12", "48213077") == "transactions · candidate v12 · run 48213077"  # kfp.local ids


def test_pipeline_run_url_only_with_a_ui_and_a_run():
    assert (
        tracking.pipeline_run_url("https://kf.example.com/_/pipeline/", UUID) == f"https://kf.example.com/_/pipeline/#/runs/details/{UUID}"
    )
    assert tracking.pipeline_run_url("", UUID) == ""
    assert tracking.pipeline_run_url("https://kf.example.com", "") == ""


def test_pipeline_run_tags_link_on_a_cluster_only(state_dir, monkeypatch):
    monkeypatch.setenv("MLWF_KFP_UI_URL", "https://kf.example.com/_/pipeline")
    local = tracking.pipeline_run_tags(get_settings(), "48213077", "mlwf-training-2026-01-02-03-04-05-000001")
    assert local == {"mlwf.pipeline_run": "48213077", "mlwf.pipeline_run_name": "mlwf-training-2026-01-02-03-04-05-000001"}
    monkeypatch.setenv("MLWF_PROFILE", "cluster")
    cluster = tracking.pipeline_run_tags(get_settings(), UUID, "retrain-drift")
    assert cluster["mlwf.pipeline_run_url"] == f"https://kf.example.com/_/pipeline/#/runs/details/{UUID}"
    monkeypatch.delenv("MLWF_KFP_UI_URL")
    assert "mlwf.pipeline_run_url" not in tracking.pipeline_run_tags(get_settings(), UUID)
    # outside a pipeline, or with a placeholder a runner left unresolved, nothing is recorded
    assert tracking.pipeline_run_tags(get_settings(), "") == {}
    assert tracking.pipeline_run_tags(get_settings(), "{{$.pipeline_job_uuid}}", "{{$.pipeline_job_name}}") == {}


# --- the registered version's description ------------------------------------------------------------------


def test_description_keeps_the_training_line_and_the_latest_evaluation():
    registered = training_description("transactions", 0.91234, 7)
    trained = "transactions (network): validation ROC-AUC 0.9123 (best epoch 7)."
    assert registered.startswith(trained + "\n\nNot evaluated yet")
    failed = tracking.with_evaluation(registered, evaluation_summary(evaluation(METRICS), UUID))
    assert failed.startswith(trained + "\n\n**Gate: FAIL**") and "Not evaluated yet" not in failed
    assert "roc_auc 0.7712 is below the minimum 0.8000" in failed and f"pipeline run `{UUID}`" in failed
    assert "Test period: 1200 rows (140 positive), 2024-03-01 to 2024-03-31." in failed
    assert "ROC-AUC 0.7712 · PR-AUC 0.4100" in failed and "p99 latency, ms per row 0.3000" in failed
    # re-evaluated by a later pipeline run (the version reused): the old verdict is replaced, not appended
    passed = tracking.with_evaluation(failed, evaluation_summary(evaluation({**METRICS, "roc_auc": 0.9}), "other"))
    assert passed.count("**Gate:") == 1 and "**Gate: PASS**" in passed and passed.startswith(trained + "\n\n")
    assert "below the minimum" not in passed and "All 2 checks passed." in passed


def test_description_fits_the_registry_column():
    many = GatePolicy(min_roc_auc=0.99, min_pr_auc=0.99, min_f1=0.99, max_ece=0.0001, max_p99_latency_ms=0.0001)
    ev = evaluation(METRICS, policy=many)
    ev.reasons = ev.reasons * 40  # a policy with many slice checks fails with a long list
    text = tracking.with_evaluation("trained", evaluation_summary(ev))
    assert len(text) <= tracking.DESCRIPTION_LIMIT and text.endswith("every check is in the run's evaluation/gate.json)")
    assert text.startswith("trained\n\n**Gate: FAIL**")


# --- the verdict Markdown ------------------------------------------------------------------------------


def test_failing_verdict_says_fail_first_with_each_reason():
    champion = {
        "version": "2",
        "comparable": True,
        "roc_auc": 0.85,
        "pr_auc": 0.5,
        "f1": 0.6,
        "precision": 0.5,
        "recall": 0.7,
        "ece": 0.01,
        "latency_p99_ms": 0.25,
    }
    ev = evaluation(METRICS, champion)
    ev.baseline = {"kind": "logistic_regression", "roc_auc": 0.8, "latency_p99_ms": float("nan")}
    text = verdict_markdown(ev, "transactions_classifier", "3", UUID)
    assert text.startswith("# Gate FAIL: transactions_classifier v3\n")
    assert "2 of 3 checks failed: the version is **not deployed**" in text
    why = text.split("## Why\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert why == [f"- {r}" for r in ev.reasons] and len(why) == 2
    assert any("regresses against champion v2 (0.8500) by more than 0.01" in line for line in why)
    rows = [line for line in text.splitlines() if line.startswith("| FAIL") or line.startswith("| PASS")]
    assert [r.split(" | ")[1] for r in rows] == ["min_roc_auc", "champion.roc_auc", "max_p99_latency_ms"]  # failed first
    assert "| FAIL | min_roc_auc | 0.7712 | 0.8000 |" in text
    assert "| Metric | Candidate | Champion v2 | Baseline (logistic_regression) |" in text
    assert "| ROC-AUC | 0.7712 | 0.8500 | 0.8000 |" in text and "| p99 latency, ms per row | 0.3000 | 0.2500 | n/a |" in text
    assert f"Pipeline run: `{UUID}`." in text and "v3 (sha256 " in text


def test_passing_verdict_and_a_message_that_would_break_the_table():
    ev = evaluation({**METRICS, "roc_auc": 0.93})
    text = verdict_markdown(ev, "m", "1")
    assert text.startswith("# Gate PASS: m v1\n") and "All 2 checks passed" in text and "## Why" not in text
    assert "Pipeline run" not in text and "## Not judged\n\n- no champion yet" in text
    odd = replace(ev.checks[0], message="a | b\nc")
    ev.checks = [odd]
    assert "| a \\| b c |" in verdict_markdown(ev, "m", "1")


# --- the image a step records --------------------------------------------------------------------------


def test_the_package_tells_each_step_its_own_image():
    container = {"image": "mlwf/components:placeholder", "env": [{"name": "OTHER", "value": "1"}]}
    stamp_image(container, "registry.example.com/mlwf/components@sha256:" + "a" * 64)
    stamp_image(container, "registry.example.com/mlwf/components@sha256:" + "b" * 64)  # a recompile replaces it
    assert container["env"] == [
        {"name": "OTHER", "value": "1"},
        {"name": STEP_IMAGE_ENV, "value": "registry.example.com/mlwf/components@sha256:" + "b" * 64},
    ]
    assert container["image"] == container["env"][1]["value"]


def test_a_local_run_has_no_image(state_dir, monkeypatch):
    monkeypatch.delenv(STEP_IMAGE_ENV, raising=False)
    monkeypatch.setenv("MLWF_COMPONENTS_IMAGE", "ghcr.io/mlwf/components:9.9.9")  # the release tag is not where it ran
    assert get_settings().step_image == ""
    monkeypatch.setenv(STEP_IMAGE_ENV, "registry.example.com/mlwf/components:abc")
    assert get_settings().step_image == "registry.example.com/mlwf/components:abc"


# --- pipeline parameter descriptions ---------------------------------------------------------------------


def test_wrapped_args_become_one_line_each():
    def pipeline(a: int = 1, b: str = "") -> None:
        """Do things.

        More words
            that stay as they are.

        Args:
            a: First line of a
                and its continuation.
            b: Only line.
        """

    doc = one_line_args(pipeline).__doc__
    assert "    a: First line of a and its continuation." in doc and "    b: Only line." in doc
    assert "More words\n    that stay as they are." in doc


@pytest.mark.parametrize("name", ["min_roc_auc", "max_p99_latency_ms", "max_regression"])
def test_sentinels_are_explained_in_the_docstring(name):
    import docstring_parser

    from pipelines.training import training_pipeline

    params = {p.arg_name: p.description for p in docstring_parser.parse(training_pipeline.pipeline_func.__doc__).params}
    assert "-1.0" in params[name] and "policy file" in params[name]
