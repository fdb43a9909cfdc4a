"""Train: the tabular network on CUDA (bf16 autocast) when present, else the CPU, and seal a model bundle.

The data lives on the device and batches are cut there (no per-batch DataLoader overhead), and the loop
reads nothing back from the device inside an epoch (one sync per epoch). Early stopping watches a
time-ordered validation split (the latest rows of the training set). The loss is NOT class-weighted: pos_weight
shifts every score away from the observed rate (ECE 0.11-0.37 measured, shared/FACTS.md) and the decision
threshold handles the imbalance. The latest part of the validation period (the calibration tail), never
trained on, fits a calibration map that becomes part of the exported program (Calibrated), and the decision
threshold is chosen on its calibrated scores for the policy's objective (F1, or expected cost).
Same inputs and seed give the same weights on the CPU. The same loop runs data-parallel
(DistributedDataParallel) when given a Shard: see components/training/distributed.py for the torchrun entry.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.core import bundle as bundle_lib
from components.core.spec import EVENT_TIMESTAMP, LABEL
from components.core.stats import expected_calibration_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 30
    batch_size: int = 1024  # per process; measured on the demo data: same validation AUC as 512, 1.4x the samples/s
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 64
    embedding_dim: int = 8
    dropout: float = 0.1
    patience: int = 4
    # Smaller batches when the data is small: without pos_weight, 6,000 rows (4 steps of 1,024 per epoch) reached
    # test ROC-AUC 0.738 in 12 epochs, 0.808 with 16 steps per epoch (batch 252), against the baseline's 0.819.
    min_steps_per_epoch: int = 16
    validation_fraction: float = 0.15
    calibration_fraction: float = 0.5  # the latest half of the validation period fits the calibration map
    # "f1", or a cost matrix as JSON ('{"fp": 1, "fn": 20}'): what the decision threshold optimises on calibrated scores
    threshold_objective: str = "f1"
    seed: int = 42
    max_vocabulary: int = 1000  # rarer categories share the unseen slot


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    threshold: float = 0.5
    validation_auc: float = float("nan")
    device: str = "cpu"
    samples_per_second: float = 0.0  # median over epochs of the training part (validation excluded), all ranks
    world_size: int = 1
    calibration: dict[str, Any] = field(default_factory=dict)  # method, rows, ECE before/after on the tail, objective


MIN_CALIBRATION_ROWS = 50


def threshold_objective(text: str) -> str | dict[str, float]:
    """TrainParams.threshold_objective -> "f1" or a validated cost matrix; a one-line ValueError otherwise."""
    from components.training.calibration import validate_costs

    if text.strip() in ("", "f1"):
        return "f1"
    try:
        costs = json.loads(text)
    except ValueError as err:
        raise ValueError(f"threshold objective {text!r} is neither 'f1' nor a JSON cost matrix: {err}") from None
    if not isinstance(costs, dict):
        raise ValueError(f'threshold objective {text!r} is neither \'f1\' nor a cost matrix like {{"fp": 1, "fn": 20}}')
    return validate_costs(costs)


def split_validation(ordered: pd.DataFrame, params: TrainParams) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Time-ordered rows -> (fit, validation, calibration tail = the latest part of validation); raises, naming the
    tail, when it cannot calibrate.

    Checked before any training: a data set too small for a calibration tail fails in seconds, not after the fit."""
    cut = int(len(ordered) * (1 - params.validation_fraction))
    fit_df, val_df = ordered.iloc[:cut], ordered.iloc[cut:]
    tail = int(len(val_df) * (1 - params.calibration_fraction))
    calib_df = val_df.iloc[tail:]
    positives = int(calib_df[LABEL].sum())
    negatives = len(calib_df) - positives
    if len(calib_df) < MIN_CALIBRATION_ROWS or min(positives, negatives) < 1:
        raise ValueError(
            f"too little data to hold out a calibration tail: the latest {len(calib_df)} training rows "
            f"({positives} positive, {negatives} negative) are the tail; it needs at least {MIN_CALIBRATION_ROWS} rows "
            f"with both classes (train on more rows, or a longer period)"
        )
    # Early stopping watches the WHOLE validation period, tail included: halving it made the stopping epoch noise on
    # small sets (6,000 rows: ~13 positives left, test ROC-AUC 0.74 against 0.81). Choosing an epoch by ranking
    # (ROC-AUC) fits nothing the calibration map fits; the map and the threshold are fitted on the tail alone.
    return fit_df, val_df, calib_df


@dataclass(frozen=True)
class Shard:
    """This process's place in a data-parallel job: rank `rank` of `world` processes (1 = no DDP)."""

    rank: int = 0
    world: int = 1


def pick_device() -> Any:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def vocabularies(train: pd.DataFrame, categorical: list[str], limit: int) -> dict[str, list[str]]:
    """Per categorical feature, its most frequent values (ties by name, so the order is reproducible)."""
    vocab = {}
    for name in categorical:
        counts = train[name].dropna().astype(str).value_counts()
        ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        vocab[name] = [v for v, _ in ordered]
    return vocab


def reference_profile(train: pd.DataFrame, numeric: list[str], categorical: list[str], scores: np.ndarray) -> dict[str, Any]:
    """Bin edges (deciles) and frequencies per feature at training time: what drift is measured against."""
    profile: dict[str, Any] = {"rows": int(len(train)), "numeric": {}, "categorical": {}}
    for name in numeric:
        values = train[name].dropna().to_numpy(dtype=np.float64)
        edges = np.unique(np.quantile(values, np.linspace(0, 1, 11))) if len(values) else np.array([0.0])
        counts, _ = np.histogram(np.clip(values, edges[0], edges[-1]), bins=edges) if len(edges) > 1 else (np.array([len(values)]), None)
        profile["numeric"][name] = {
            "edges": edges.tolist(),
            "frequencies": (counts / max(counts.sum(), 1)).tolist(),
            "null_fraction": float(train[name].isna().mean()),
        }
    for name in categorical:
        freq = train[name].fillna("<null>").astype(str).value_counts(normalize=True)
        profile["categorical"][name] = {str(k): float(v) for k, v in sorted(freq.items())}
    edges = np.linspace(0, 1, 11)
    counts, _ = np.histogram(scores, bins=edges)
    profile["prediction"] = {"edges": edges.tolist(), "frequencies": (counts / max(counts.sum(), 1)).tolist()}
    return profile


def tensors(df: pd.DataFrame, numeric: list[str], categorical: list[str], vocab: dict[str, list[str]], device: Any) -> tuple[Any, Any, Any]:
    import torch

    n = len(df)
    num = df[numeric].to_numpy(dtype=np.float32) if numeric else np.zeros((n, 1), np.float32)
    codes = np.zeros((n, max(len(categorical), 1)), dtype=np.int64)
    for j, name in enumerate(categorical):
        lookup = {v: i + 1 for i, v in enumerate(vocab[name])}
        codes[:, j] = df[name].map(lambda v, table=lookup: table.get(v, 0) if isinstance(v, str) else 0).to_numpy()
    y = df[LABEL].to_numpy(dtype=np.float32)
    return (torch.from_numpy(num).to(device), torch.from_numpy(codes).to(device), torch.from_numpy(y).to(device))


def _rank_order(n: int, generator: Any, shard: Shard, device: Any) -> Any:
    """This rank's rows for one epoch: one seeded permutation shared by every rank, dealt out round-robin.

    Every rank draws the same permutation from the same generator state, so the shards never overlap; the
    tail that does not divide evenly is left out of this epoch so that every rank takes the same number of
    steps (DDP needs that), and the next epoch's permutation includes those rows again.
    """
    import torch

    order = torch.randperm(n, generator=generator)
    usable = n - n % shard.world
    return order[shard.rank : usable : shard.world].to(device, non_blocking=True)


def train_model(
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    params: TrainParams,
    progress: Callable[[dict[str, float]], None] | None = None,
    shard: Shard | None = None,
    device: Any = None,
) -> tuple[Any, dict[str, list[str]], TrainResult]:
    """Fit the network; return (scoring program, vocabularies, result). Deterministic on the CPU for a seed.

    With `shard` (inside an initialised torch.distributed process group) the network is wrapped in
    DistributedDataParallel and each rank trains on its share of every epoch; the loss, the validation
    score and the early-stopping decision are agreed across ranks, so every rank ends with the same weights.
    """
    import torch
    from sklearn.metrics import roc_auc_score

    from components.training.model import ScoringProgram, StandardizedInputs, TabularNet

    shard = shard or Shard()
    if len(train) < 20:
        raise ValueError(f"too few training rows to train a model: {len(train)}")
    if train[LABEL].nunique() < 2:
        raise ValueError("the training set has only one class: cannot learn a classifier")
    device = torch.device(device) if device is not None else pick_device()
    if device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace; must be set before its first handle exists.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.manual_seed(params.seed)
    np.random.seed(params.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    objective = threshold_objective(params.threshold_objective)
    ordered = train.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    fit_df, val_df, calib_df = split_validation(ordered, params)
    vocab = vocabularies(fit_df, categorical, params.max_vocabulary)
    transformed = TabularNet.transform(torch.tensor(fit_df[numeric].to_numpy(np.float32))) if numeric else torch.zeros(1, 0)
    means = torch.nanmean(transformed, dim=0) if numeric else torch.zeros(0)
    means = torch.nan_to_num(means)
    stds = torch.tensor(np.nanstd(transformed.numpy(), axis=0)) if numeric else torch.zeros(0)
    stds = torch.nan_to_num(stds, nan=1.0)
    net = TabularNet(means, stds, [len(vocab[c]) for c in categorical], params.embedding_dim, params.hidden, params.dropout).to(device)
    # The preprocessing has no parameters: standardise the data once instead of in every step's forward.
    model: Any = StandardizedInputs(net)
    if shard.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's initial weights and averages gradients in the backward pass.
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    xn, xc, y = tensors(fit_df, numeric, categorical, vocab, device)
    vn, vc, vy = tensors(val_df, numeric, categorical, vocab, device)
    if numeric:
        with torch.no_grad():
            xn = net.standardize(xn)
    loss_fn = torch.nn.BCEWithLogitsLoss()  # unweighted: the scores estimate the observed rate
    # Fused AdamW: one kernel for the whole update instead of several per parameter tensor (CUDA and CPU).
    optimizer = torch.optim.AdamW(net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay, fused=True)
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    batch_size = max(1, min(params.batch_size, len(y) // (shard.world * params.min_steps_per_epoch)))
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    y_val = vy.cpu().numpy()
    result = TrainResult(device=str(device), world_size=shard.world)
    best_auc, best_state, stale = -1.0, None, 0
    started = time.perf_counter()
    for epoch in range(1, params.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        mine = _rank_order(len(y), generator, shard, device)
        # One gather per epoch; each batch is then a slice (a view), not three gathers per step.
        en, ec, ey = xn[mine], xc[mine], y[mine]
        # The loss is summed on the device: reading it per batch (float(loss)) would wait for the GPU every step.
        total = torch.zeros((), device=device)
        for start in range(0, len(mine), batch_size):
            end = start + batch_size
            with torch.autocast(**autocast):
                loss = loss_fn(model(en[start:end], ec[start:end]).float(), ey[start:end])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach() * len(ey[start:end])
        seen = torch.tensor(float(len(mine)), device=device)
        if shard.world > 1:
            import torch.distributed as dist

            sums = torch.stack([total, seen])
            dist.all_reduce(sums)
            total, seen = sums[0], sums[1]
        epoch_loss, samples = float(total) / float(seen), float(seen)  # one sync per epoch
        rate = samples / max(time.perf_counter() - t0, 1e-9)
        net.eval()
        with torch.inference_mode(), torch.autocast(**autocast):
            val_p = torch.sigmoid(net(vn, vc).float()).cpu().numpy()
        val_auc = float(roc_auc_score(y_val, val_p))
        if shard.world > 1:  # rank 0's score decides for everyone, so no rank can stop on its own
            import torch.distributed as dist

            agreed = torch.tensor([val_auc], dtype=torch.float64, device=device)
            dist.broadcast(agreed, src=0)
            val_auc = float(agreed)
        row = {"epoch": epoch, "loss": epoch_loss, "val_roc_auc": val_auc, "samples_per_s": rate}
        result.history.append(row)
        if progress:
            progress(row)
        if val_auc > best_auc + 1e-4:
            best_auc, stale, result.best_epoch = val_auc, 0, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= params.patience:
                break
    assert best_state is not None
    net.load_state_dict(best_state)
    net.eval()
    scoring = ScoringProgram(net.cpu()).eval()
    result.validation_auc = best_auc
    program = calibrate_into(scoring, calib_df, numeric, categorical, vocab, objective, result)
    result.samples_per_second = float(np.median([r["samples_per_s"] for r in result.history]))
    log.info(
        "trained %d epochs in %.1fs on %s (%d process%s)",
        len(result.history),
        time.perf_counter() - started,
        device,
        shard.world,
        "es" if shard.world > 1 else "",
    )
    return program, vocab, result


def calibrate_into(
    scoring: Any,
    calib_df: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    vocab: dict[str, list[str]],
    objective: str | dict[str, float],
    result: TrainResult,
) -> Any:
    """Wrap a scoring program (raw inputs -> uncalibrated probability) with the calibration map fitted on the tail,
    choose the decision threshold on the calibrated scores, record both in `result`; returns the calibrated program.

    Every model family goes through here, so each one's probabilities and threshold mean the same thing."""
    import torch

    from components.training.calibration import Calibrated, fit_calibrator, threshold_report

    cn, cc, cy = tensors(calib_df, numeric, categorical, vocab, "cpu")
    with torch.inference_mode():
        raw = scoring(cn, cc).numpy()
    y_calib = cy.numpy().astype(np.int64)
    fit = fit_calibrator(raw, y_calib)
    program = Calibrated(scoring, fit.calibrator).eval()
    with torch.inference_mode():
        calibrated = program(cn, cc).numpy().astype(np.float64)
    chosen = threshold_report(y_calib, calibrated, objective)
    result.threshold = chosen["threshold"]
    result.calibration = {
        "method": fit.method,
        "why": fit.reason,
        "rows": int(len(calib_df)),
        "positives": fit.positives,
        "from": str(calib_df[EVENT_TIMESTAMP].min()),
        "to": str(calib_df[EVENT_TIMESTAMP].max()),
        "ece_before": expected_calibration_error(y_calib, raw.astype(np.float64)),
        "ece_after": expected_calibration_error(y_calib, calibrated),
        "objective": objective,
        **{k: v for k, v in chosen.items() if k in ("f1", "expected_cost")},
    }
    return program


def export_program(program: Any, n_numeric: int, n_categorical: int, path: str | Path) -> None:
    import torch

    from components.training.model import export_dynamic

    torch.export.save(export_dynamic(program, n_numeric, n_categorical), str(path))


def build_bundle(
    directory: str | Path,
    program: Any,
    vocab: dict[str, list[str]],
    result: TrainResult,
    train: pd.DataFrame,
    numeric: list[str],
    categorical: list[str],
    lineage: dict[str, Any],
    model_card: str,
) -> str:
    """Write and seal the bundle; returns its digest."""
    import torch

    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    export_program(program, len(numeric), len(categorical), root / bundle_lib.PROGRAM)
    features = [{"name": n, "type": "numeric", "dtype": "float64"} for n in numeric] + [
        {"name": c, "type": "categorical", "dtype": "string", "vocabulary": vocab[c]} for c in categorical
    ]
    signature = {
        "format": "mlwf-bundle/1",
        "features": features,
        "output": {"name": "probability", "dtype": "float64", "meaning": "probability of the positive class"},
        "threshold": result.threshold,
        "calibration": result.calibration,
        "lineage": lineage,
    }
    (root / bundle_lib.SIGNATURE).write_text(json.dumps(signature, indent=2, sort_keys=True))
    numeric_t, codes_t = bundle_lib.Bundle(root, signature, {}, program).encode(bundle_lib.columns_from_frame(train, numeric + categorical))
    with torch.inference_mode():
        scores = program(numeric_t, codes_t).numpy()
    profile = reference_profile(train, numeric, categorical, scores)
    (root / bundle_lib.PROFILE).write_text(json.dumps(profile, indent=2, sort_keys=True))
    (root / bundle_lib.CARD).write_text(model_card)
    # The rows explanations are measured against (components/core/explain.py), sealed with the rest: a fixed seed
    # over the training frame, so the same training set gives the same background and the same bundle bytes.
    background = bundle_lib.background_document(train, numeric + categorical, rows=100, seed=0)
    (root / bundle_lib.BACKGROUND).write_text(json.dumps(background, sort_keys=True))
    bundle_lib.write_manifest(root)
    return bundle_lib.bundle_digest(root)


def params_dict(params: TrainParams) -> dict[str, Any]:
    return asdict(params)
