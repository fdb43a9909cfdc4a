"""The train step: train, track in MLflow, seal the bundle, register the version.

Each function takes the step's KFP artifacts (anything with `.path` and `.metadata`), calls the stage's
logic, and records outputs and metadata. Tests call these directly with artifacts on local paths;
pipelines/ops.py wraps them as @dsl.component bodies.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from components.core.logs import log_metrics, setup_logging

log = logging.getLogger("mlwf")


def train_step(
    dataset_spec: str,
    train_set: Any,
    feature_service: str,
    dataset_fingerprint: str,
    epochs: int,
    seed: int,
    model: Any,
    metrics: Any,
    nodes: int = 1,
    gpus_per_node: int = 1,
    pipeline_run: str = "",
    pipeline_run_name: str = "",
    threshold_objective: str = "f1",
    families: str = "network",
) -> tuple[str, str]:
    """`threshold_objective`: "f1" or the policy's cost matrix as JSON (what the decision threshold optimises).
    `families`: the model families to train as candidates, comma-separated (the gate policy's `candidates`)."""
    setup_logging()
    from components.core.spec import load_spec
    from components.core.threads import apply_torch_threads
    from components.training.run import run_training_step
    from components.training.train import TrainParams

    started = time.perf_counter()
    # torch would start one thread per core of the node, not per CPU of this pod: with one core busy that ran
    # 85x slower (shared/FACTS.md, "CPU threads"). Sized from the cgroup quota and affinity instead.
    threads = apply_torch_threads()
    log.info("train: %d torch thread(s) (the CPU budget of this process)", threads)
    spec = load_spec(dataset_spec)
    params = TrainParams(epochs=int(epochs), seed=int(seed), threshold_objective=threshold_objective or "f1")
    out = run_training_step(
        spec,
        train_set.path,
        model.path,
        params,
        feature_service,
        dataset_fingerprint,
        nodes=int(nodes),
        gpus_per_node=int(gpus_per_node),
        pipeline_run=pipeline_run,
        pipeline_run_name=pipeline_run_name,
        families=[f for f in families.split(",") if f.strip()] or ["network"],
    )
    model.metadata.update({k: v for k, v in out.items() if isinstance(v, (str, int, float, bool))})
    model.metadata["framework"] = "torch.export bundle" + (" per candidate" if "candidates" in out else "")
    log_metrics(metrics, {k: out[k] for k in ("val_roc_auc", "epochs", "world_size") if k in out})
    log.info(
        "train: %s %s (%s) in %.1fs",
        out["model_name"],
        out.get("candidates") or f"version {out['version']}",
        "reused" if out["reused"] else "new",
        time.perf_counter() - started,
    )
    return str(out["model_name"]), str(out["version"])
