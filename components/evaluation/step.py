"""The evaluate step: judge a version by its gate policy; verdict, report and model card.

Each function takes the step's KFP artifacts (anything with `.path` and `.metadata`), calls the stage's
logic, and records outputs and metadata. Tests call these directly with artifacts on local paths;
pipelines/ops.py wraps them as @dsl.component bodies.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from components.core.logs import log_metrics, setup_logging

log = logging.getLogger("mlwf")


def evaluate_step(
    model: Any,
    train_set: Any,
    test_set: Any,
    model_name: str,
    version: str,
    dataset_spec: str,
    gate_policy: str,
    min_roc_auc: float,
    max_p99_latency_ms: float,
    max_regression: float,
    metrics: Any,
    roc: Any,
    report: Any,
    model_card: Any,
    verdict: Any = None,
    pipeline_run: str = "",
    chosen: Any = None,
) -> bool:
    """Judge every candidate by the gate policy, choose one (components/evaluation/selection.py); record the verdict,
    report and model card; the winner's bundle goes to `chosen` and gets the `challenger` alias, on pass only.

    `model` is the train step's artifact: one bundle (`version`), or one per family with candidates.json. The
    verdict (PASS/FAIL, each check and the key metrics) goes to the `verdict` Markdown output, the MLflow run and
    the registered version's description, so a failed gate shows wherever someone looks at this run.
    """
    setup_logging()
    from pathlib import Path

    import pandas as pd

    from components.core import bundle as bundle_lib
    from components.core import storage, tracking
    from components.core.candidates import read_candidates
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.evaluation.evaluate import evaluate, references
    from components.evaluation.governance import add_attributions
    from components.evaluation.policy import policy_for_run
    from components.evaluation.report import full_card, report_html
    from components.evaluation.selection import Contender, choose, program_size
    from components.evaluation.verdict import evaluation_summary, verdict_markdown

    started = time.perf_counter()
    # Scoring and the latency check run with the thread count the server uses: the CPU budget of the pod
    # (cgroup quota, affinity), not the node's core count (shared/FACTS.md, "CPU threads").
    from components.core.threads import apply_torch_threads

    log.info("evaluate: %d torch thread(s) (the CPU budget of this process)", apply_torch_threads())
    pipeline_run = tracking.pipeline_run_id(pipeline_run)
    spec = load_spec(dataset_spec)
    policy = policy_for_run(gate_policy, dataset_spec, spec.name, float(min_roc_auc), float(max_p99_latency_ms), float(max_regression))
    client = tracking.configure(get_settings())
    test, train = pd.read_parquet(test_set.path), pd.read_parquet(train_set.path)
    candidates = read_candidates(model.path, version)
    first = next((c.version for c in candidates if c.version), version)
    refs = references(test, policy, model_name, first, train, client, [f.name for f in spec.numeric], [c.name for c in spec.categorical])
    contenders = []
    for candidate in candidates:
        if candidate.refused or not candidate.version and len(candidates) > 1:
            contenders.append(Contender(candidate, None, None, refused=candidate.refused or "not registered"))
            continue
        scored = evaluate(
            candidate.path, test, policy, model_name, candidate.version, train=train, client=client, refs=refs, sensitive=spec.sensitive
        )
        contenders.append(Contender(candidate, scored, scored.probabilities, program_size(candidate.path)))
    selection = choose(contenders, test["label"].to_numpy(dtype=int))
    evaluated = [c for c in contenders if c.evaluation is not None]
    if not evaluated:
        raise RuntimeError("no candidate to evaluate: " + "; ".join(f"{c.family}: {c.refused}" for c in contenders))
    primary = selection.winner or selection.reference or max(evaluated, key=lambda c: c.metric())
    ev = primary.evaluation
    assert ev is not None
    version = str(primary.candidate.version)
    if len(contenders) > 1:
        ev.candidates, ev.selection = selection.rows, selection.why
        if selection.winner is None:
            ev.passed = False
            ev.reasons = [f"{c.family}: {r}" for c in contenders for r in (c.evaluation.reasons if c.evaluation else [c.refused])]
    log.info("evaluate: %s", selection.why)
    add_attributions(ev, primary.candidate.path, test)
    scalars = dict(ev.metrics)
    scalars.update({f"baseline.{k}": v for k, v in (ev.baseline or {}).items() if isinstance(v, float)})
    scalars.update({f"champion.{k}": v for k, v in (ev.champion or {}).items() if isinstance(v, float) and k != "threshold"})
    scalars.update({f"slice_gap.{g['attribute']}.{g['metric']}": g["gap"] for g in ev.slice_gaps if "gap" in g})
    scalars["gate_passed"] = float(ev.passed)
    finite = {k: float(v) for k, v in scalars.items() if v == v}  # NaN (one-class test set) is not loggable
    log_metrics(metrics, finite)
    if ev.curves:
        roc.log_roc_curve(ev.curves["roc"]["fpr"], ev.curves["roc"]["tpr"], ev.curves["roc"]["thresholds"])
        roc.log_confusion_matrix(["negative", "positive"], ev.curves["confusion"])
    page = report_html(ev, model_name, version)
    card = full_card(Path(primary.candidate.path, bundle_lib.CARD).read_text(), ev, model_name, version)
    verdict_text = verdict_markdown(ev, model_name, version, pipeline_run)
    storage.write_bytes(report.path, page.encode())
    storage.write_bytes(model_card.path, card.encode())
    if verdict is not None:
        storage.write_bytes(verdict.path, verdict_text.encode())
    mv = client.get_model_version(model_name, version)
    import mlflow

    run_ids = [mv.run_id]
    parent = client.get_run(mv.run_id).data.tags.get("mlflow.parentRunId")
    if parent:  # a candidate's child run: the training run above it shows the same evaluation
        run_ids.append(parent)
    for run_id in run_ids:
        with mlflow.start_run(run_id=run_id):
            mlflow.log_metrics({f"test_{k}": v for k, v in finite.items()})
            mlflow.log_text(json.dumps(ev.summary(), indent=2, default=str), "evaluation/gate.json")
            mlflow.log_text(verdict_text, "evaluation/verdict.md")
            mlflow.log_text(page, "evaluation/report.html")
            mlflow.log_text(card, "model_card.md")  # the full card: training-time card + this evaluation
            # On the run too, so the runs table can show the verdict as a column; a version reused by a later
            # pipeline run is re-evaluated there, and this names the latest one.
            mlflow.set_tags(
                {
                    "mlwf.gate": "passed" if ev.passed else "failed",
                    **({"mlwf.evaluation_pipeline_run": pipeline_run} if pipeline_run else {}),
                }
            )
    for c in contenders:  # every candidate's version says how it fared, so the registry explains the choice
        row = next(r for r in selection.rows if r["family"] == c.family)
        if c.candidate.version and c.candidate.version != version and len(contenders) > 1:
            client.set_model_version_tag(model_name, c.candidate.version, "mlwf.gate", "passed" if row["passed"] else "failed")
            client.set_model_version_tag(model_name, c.candidate.version, "mlwf.selection", str(row["status"])[:4000])
    if len(contenders) > 1:
        client.set_model_version_tag(
            model_name, version, "mlwf.selection", (selection.why if ev.passed else "not chosen: no candidate passed")[:4000]
        )
    client.update_model_version(
        model_name, version, description=tracking.with_evaluation(mv.description or "", evaluation_summary(ev, pipeline_run))
    )
    client.set_model_version_tag(model_name, version, "mlwf.gate", "passed" if ev.passed else "failed")
    client.set_model_version_tag(model_name, version, "mlwf.gate_reasons", "; ".join(ev.reasons)[:4000] or "none")
    client.set_model_version_tag(
        model_name, version, "mlwf.gate_policy", f"{policy.source} v{policy.version} sha256:{policy.fingerprint()[:16]}"[:4000]
    )
    if ev.passed:  # a fail changes no alias; `champion` moves only after a successful deploy
        client.set_registered_model_alias(model_name, "challenger", version)
        if chosen is not None:  # what deploy serves: the winner's bundle, and which version it is
            storage.copy_dir(primary.candidate.path, chosen.path)
            chosen.metadata.update({"version": version, "family": primary.family, "model_name": model_name})
    reasons = "; ".join(ev.reasons) or "all checks passed"
    for artifact in (report, model_card, verdict):
        if artifact is not None:
            artifact.metadata.update({"passed": ev.passed, "reasons": reasons, "policy_version": policy.version})
    log.info(
        "evaluate: gate %s for %s v%s (%s) in %.1fs",
        "PASSED" if ev.passed else "FAILED",
        model_name,
        version,
        reasons,
        time.perf_counter() - started,
    )
    return bool(ev.passed)
