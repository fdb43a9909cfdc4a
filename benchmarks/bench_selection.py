"""Model selection (issue 18's goals): what the whole local pipeline deploys, beside the logistic-regression baseline.

The product runs as `make demo` runs it: pipelines/local.py `run_local` (ingest -> validate -> features -> train every
family the gate policy lists -> evaluate and choose -> deploy), in a child process with its own state directory and
model-server port; the served model is stopped afterwards. Two data sets:
- demo: the generated card transactions (components/data/datagen.py, seed 7, 1% bad rows), the bundled
  `transactions` spec and policy; full 20,000 rows and 30 epochs as `make demo`, quick 6,000 rows and 12 epochs
  (the smallest size whose calibration tail still holds fraud rows);
- affairs: a real survey shipped inside the statsmodels package (statsmodels.datasets.fair, Fair 1978, 6,366 rows;
  label: affairs > 0), with the spec and policy in benchmarks/datasets/ (how its ids and timestamps are derived is
  written there); every row in both modes, 12 epochs when quick.

Figures per data set, read from what the run recorded (the evaluate step's gate.json on the training run in MLflow):
the deployed model's ROC-AUC and Brier beside the baseline's on the same test rows (goals: >= baseline - 0.005,
<= baseline x 1.05), its ECE (goal <= 0.05 on the demo), which family was chosen and why; the tree program's per-row
p99 beside the network's, both as the evaluate step timed them (goal <= 2x); and a 1,000-row batch through the
sealed tree program (the bundle the train step wrote, calibration included) beside LightGBM's own predict of the
same booster. The bundle holds no booster, so it is rebuilt here the way the train step builds it (same rows,
split, seed and thread count; LightGBM is deterministic) and checked to reproduce the sealed program's
probabilities before it is timed; the notes give that difference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import Figure

NAME = "selection"
ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(__file__).resolve().parent / "datasets"
AFFAIRS_START = "2024-01-01T00:00:00Z"
BATCH = 1000


# ------------------------------------------------------------------------------------------------ data


def affairs_frame() -> Any:
    """statsmodels' `fair` data as the CSV the affairs spec describes (benchmarks/datasets/affairs.yaml)."""
    import pandas as pd
    from statsmodels.datasets import fair

    raw = fair.load_pandas().data.reset_index(drop=True)
    n = len(raw)
    # The package's table is sorted by the label; a hash of the row position gives a fixed order unrelated to it.
    order = sorted(range(n), key=lambda i: hashlib.sha256(f"affairs-{i}".encode()).digest())
    position = [0] * n
    for rank, row in enumerate(order):
        position[row] = rank
    times = pd.Timestamp(AFFAIRS_START) + pd.to_timedelta(position, unit="h")
    out = pd.DataFrame(
        {
            "respondent_id": [f"fair{i:05d}" for i in range(n)],
            "event_time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            **{c: raw[c] for c in ("rate_marriage", "age", "yrs_married", "children", "religious", "educ")},
            "occupation": raw["occupation"].astype(int).astype(str),
            "occupation_husb": raw["occupation_husb"].astype(int).astype(str),
            "had_affair": (raw["affairs"] > 0).astype(int),
        }
    )
    return out.iloc[order].reset_index(drop=True)  # the file in event-time order, as a real export would be


def _prepare(dataset: str, rows: int, state: Path) -> tuple[str, str]:
    """Write the data set's file (and, for affairs, its spec, policy and validation suite) -> (spec ref, data path)."""
    if dataset == "demo":
        from components.data.datagen import GenConfig, write

        data = state / "tx.csv"
        write(GenConfig(rows=rows, seed=7, bad_fraction=0.01), str(data))
        return "transactions", str(data)
    from components.data.suite import write_suite

    specs = state / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    for name in ("affairs.yaml", "affairs.policy.yaml"):
        shutil.copy(DATASETS / name, specs / name)
    write_suite(str(specs / "affairs.yaml"))  # beside the copy: the repository's tree stays as it is
    data = state / "affairs.csv"
    affairs_frame().to_csv(data, index=False)
    return str(specs / "affairs.yaml"), str(data)


# ------------------------------------------------------------------------------------------------ the child run


def _gate(run: Any) -> dict[str, Any]:
    """The evaluate step's gate.json, as logged to MLflow on the training (parent) run."""
    from components.core import tracking
    from components.core.settings import get_settings

    client = tracking.configure(get_settings())
    parent = run.metadata("train-op", "model")["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        return dict(json.loads(Path(client.download_artifacts(parent, "evaluation/gate.json", tmp)).read_text()))


def _tree_batch(run: Any, spec_ref: str, epochs: int, repeats: int) -> dict[str, Any]:
    """Rebuild the train step's booster, check it against the sealed tree program, time 1,000 rows through both."""
    import numpy as np
    import pandas as pd
    import torch

    from benchmarks.harness import median_seconds
    from components.core import bundle as bundle_lib
    from components.core.spec import EVENT_TIMESTAMP, load_spec
    from components.core.threads import apply_torch_threads, cpu_budget
    from components.training.train import TrainParams, TrainResult, calibrate_into, split_validation, tensors, vocabularies
    from components.training.tree_programs import to_program
    from components.training.trees import lightgbm_matrix, train_lightgbm

    threads = apply_torch_threads()
    spec = load_spec(spec_ref)
    numeric, categorical = [f.name for f in spec.numeric], [c.name for c in spec.categorical]
    # The train step's inputs and parameters (components/training/step.py, families.py): seed 42, the policy's F1 objective.
    params = TrainParams(epochs=epochs, seed=42)
    train = pd.read_parquet(run.artifact("features-op", "train_set"))
    ordered = train.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    fit_df, val_df, calib_df = split_validation(ordered, params)
    vocab = vocabularies(fit_df, categorical, params.max_vocabulary)
    xn, xc, y = (t.numpy() for t in tensors(fit_df, numeric, categorical, vocab, "cpu"))
    vn, vc, vy = (t.numpy() for t in tensors(val_df, numeric, categorical, vocab, "cpu"))
    booster = train_lightgbm(xn, xc, y, vn, vc, vy, num_threads=cpu_budget(), seed=params.seed).booster
    rebuilt = calibrate_into(to_program(booster, xn.shape[1], xc.shape[1]), calib_df, numeric, categorical, vocab, "f1", TrainResult())

    sealed = bundle_lib.load(run.artifact("train-op", "model") / "lightgbm")
    test = pd.read_parquet(run.artifact("features-op", "test_set"))
    rows = test.iloc[np.arange(BATCH) % len(test)]  # every test row, repeated when the test period is shorter
    numeric_t, codes_t = sealed.encode(bundle_lib.columns_from_frame(rows, sealed.feature_names))
    with torch.inference_mode():
        served = sealed.program(numeric_t, codes_t).numpy().astype(np.float64)
        again = rebuilt(numeric_t, codes_t).numpy().astype(np.float64)
    matrix = lightgbm_matrix(numeric_t.numpy(), codes_t.numpy())
    with torch.inference_mode():
        program_s = median_seconds(lambda: sealed.program(numeric_t, codes_t), repeats=repeats)
    native_s = median_seconds(lambda: booster.predict(matrix, num_threads=threads), repeats=repeats)
    return {
        "program_ms": program_s * 1000,
        "native_ms": native_s * 1000,
        "trees": int(booster.num_trees()),
        "threads": threads,
        "rebuilt_max_abs_diff": float(np.max(np.abs(served - again))),
        "rows_distinct": int(min(BATCH, len(test))),
    }


def child(dataset: str, rows: int, epochs: int, state: Path, repeats: int) -> dict[str, Any]:
    """One pipeline run on one data set and everything the figures need; the served model is stopped after."""
    from components.deployment.processes import stop_local
    from pipelines.local import run_local

    spec_ref, data = _prepare(dataset, rows, state)
    started = time.perf_counter()
    try:
        run = run_local({"dataset_spec": spec_ref, "source_uri": data, "epochs": epochs})
        seconds = time.perf_counter() - started
        gate = _gate(run)
        chosen = run.metadata("evaluate-op", "chosen") if run.ran("deploy-op") else {}
        served = [json.loads(p.read_text()) for p in (state / "serving").glob("*/server.json")]
        trees = _tree_batch(run, spec_ref, epochs, repeats)
    finally:
        for record in (state / "serving").glob("*/server.json"):
            stop_local(record)
    return {
        "dataset": dataset,
        "seconds": seconds,
        "deployed": run.ran("deploy-op"),
        "chosen": chosen,
        "served_versions": [s.get("version") for s in served],
        "gate": {k: gate.get(k) for k in ("passed", "reasons", "metrics", "baseline", "candidates", "selection")},
        "trees": trees,
    }


# ------------------------------------------------------------------------------------------------ figures


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(dataset: str, rows: int, epochs: int, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state:
        env = {**os.environ, "MLWF_STATE_DIR": state, "MLWF_SERVE_PORT": str(_free_port()), "MLWF_PROFILE": "local"}
        env.pop("MLFLOW_TRACKING_URI", None)
        args = [sys.executable, "-m", "benchmarks.bench_selection", dataset, str(rows), str(epochs), state, str(repeats)]
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=3600, cwd=ROOT)
        if out.returncode != 0:
            tail = (out.stderr.strip().splitlines() or ["no output"])[-3:]
            raise RuntimeError(f"selection benchmark on {dataset} failed: {' | '.join(tail)}")
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) else float("nan")


def figures_for(result: dict[str, Any], label: str) -> list[Figure]:
    gate, trees = result["gate"], result["trees"]
    rows = {r["family"]: r for r in gate.get("candidates") or []}
    model, base = gate.get("metrics") or {}, gate.get("baseline") or {}
    deployed = bool(result["deployed"])
    family = (result["chosen"] or {}).get("family") or next((f for f, r in rows.items() if r.get("chosen")), "none")
    version = (result["chosen"] or {}).get("version", "?")
    which = (
        f"deployed: {family} v{version}" if deployed else "NOT deployed (gate failed: " + "; ".join(gate.get("reasons") or [])[:300] + ")"
    )
    candidates = "; ".join(
        f"{f} ROC-AUC {_number(r.get('roc_auc')):.4f} Brier {_number(r.get('brier')):.4f} ECE {_number(r.get('ece')):.4f} "
        f"p99 {_number(r.get('latency_p99_ms')):.3g} ms ({r.get('status', '')[:120]})"
        for f, r in rows.items()
    )
    roc, base_roc = _number(model.get("roc_auc")), _number(base.get("roc_auc"))
    brier, base_brier = _number(model.get("brier")), _number(base.get("brier"))
    ece = _number(model.get("ece"))
    tree_p99 = _number(rows.get("lightgbm", {}).get("latency_p99_ms"))
    net_p99 = _number(rows.get("network", {}).get("latency_p99_ms"))
    demo = result["dataset"] == "demo"
    return [
        Figure(
            NAME,
            f"{label}: deployed model's test ROC-AUC",
            roc,
            base_roc,
            "logistic-regression baseline, same test rows",
            True,
            ">= baseline - 0.005",
            met=deployed and roc >= base_roc - 0.005,
            notes=f"{which}; why: {gate.get('selection') or '-'}; candidates: {candidates}; pipeline {result['seconds']:.0f} s",
        ),
        Figure(
            NAME,
            f"{label}: deployed model's test Brier score",
            brier,
            base_brier,
            "logistic-regression baseline, same test rows",
            False,
            "<= baseline x 1.05",
            met=deployed and brier <= base_brier * 1.05,
            notes=f"{family}; baseline x 1.05 = {base_brier * 1.05:.4f}",
        ),
        Figure(
            NAME,
            f"{label}: deployed model's test ECE",
            ece,
            _number(base.get("ece")) if "ece" in base else None,
            "logistic-regression baseline" if "ece" in base else "",
            False,
            "<= 0.05" if demo else "report (the goal is on the demo; the policy gates <= 0.05)",
            met=(deployed and ece <= 0.05) if demo else None,
            notes=f"{family}; ten equal-width bins (components/core/stats.py)",
        ),
        Figure(
            NAME,
            f"{label}: tree program per-row p99 (ms)",
            tree_p99,
            net_p99,
            "network program, same evaluate step",
            False,
            "<= 2x the network's",
            met=tree_p99 <= 2 * net_p99,
            notes=(
                f"both as the evaluate step timed them (one row at a time); p50 lightgbm "
                f"{_number(rows.get('lightgbm', {}).get('latency_p50_ms')):.3g} ms, network "
                f"{_number(rows.get('network', {}).get('latency_p50_ms')):.3g} ms"
            ),
        ),
        Figure(
            NAME,
            f"{label}: tree program, {BATCH:,}-row batch (ms)",
            trees["program_ms"],
            trees["native_ms"],
            "LightGBM booster.predict, same booster and rows",
            False,
            "report the ratio",
            notes=(
                f"the sealed bundle's program (calibration included), {trees['trees']} trees, {trees['threads']} threads, "
                f"{trees['rows_distinct']:,} distinct test rows; rebuilt booster reproduces the sealed program to "
                f"{trees['rebuilt_max_abs_diff']:.2g}"
            ),
        ),
    ]


def run(quick: bool) -> list[Figure]:
    demo_rows, epochs = (6_000, 12) if quick else (20_000, 30)
    repeats = 5 if quick else 30
    out = []
    demo = _run("demo", demo_rows, epochs, repeats)
    out += figures_for(demo, f"demo, {demo_rows:,} rows")
    affairs = _run("affairs", 0, epochs, repeats)
    out += figures_for(affairs, "affairs (statsmodels fair), 6,366 rows")
    return out


def main(argv: list[str] | None = None) -> int:
    """The child: python -m benchmarks.bench_selection DATASET ROWS EPOCHS STATE_DIR REPEATS (prints one JSON line)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("dataset", choices=("demo", "affairs"))
    parser.add_argument("rows", type=int)
    parser.add_argument("epochs", type=int)
    parser.add_argument("state", type=Path)
    parser.add_argument("repeats", type=int)
    args = parser.parse_args(argv)
    from components.core.threads import passive_openmp

    passive_openmp()  # as every pipeline step and benchmarks/run.py do before torch loads
    result = child(args.dataset, args.rows, args.epochs, args.state, args.repeats)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
