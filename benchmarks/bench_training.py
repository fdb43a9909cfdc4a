"""Training throughput: the project's loop (components/training/train.py) beside a plain DataLoader loop, same run.

Both train the same TabularNet on the same demo data (components/data/datagen.py), same batch size, optimizer,
loss and autocast, on the same device. The anchor is the ordinary way: `DataLoader(TensorDataset(...),
shuffle=True)` on host tensors, each batch copied to the device, `loss.item()` per batch. Throughput is
counted over the training part of each epoch only (validation and data preparation excluded), the first
epoch is warm-up, and the figure is the median of the remaining epochs.

On a GPU the benchmark also reports the fraction of the GPU's peak memory bandwidth the project's loop
reaches. That is an ESTIMATE: bytes moved per step are counted from the model's shapes (inputs gathered,
weights, gradients and AdamW state, activations), not measured with a profiler, and the peak comes from a
small table of datasheet figures by device name.

Both loops run with the thread count the train step uses (components/training/step.py: apply_torch_threads(), sized
from the cgroup quota and the CPU affinity by components/core/threads.py), not a pinned count: the benchmark
measures what the pipeline runs. The second figure is the same train step with a busy neighbour: a process spinning
on one of this process's CPUs for the whole measurement, as a CPU-bound pod on the same node would. torch's default
(one spinning OpenMP worker per core) collapsed 85x under exactly that (shared/FACTS.md, "CPU threads"); the goal
is that the step keeps >= 40% of its quiet samples/s. Quiet and busy rounds alternate, so drift of a shared machine
hits both; "quiet" means no neighbour started by the benchmark, not an idle machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd

from benchmarks.harness import Figure

NAME = "training"
GOAL_RATIO = 3.0
GOAL_BUSY = 0.40  # the train step with one core busy keeps at least this share of its quiet samples/s
# Datasheet peak memory bandwidth (bytes/s), matched by substring of torch.cuda.get_device_name(); first match wins.
PEAK_BANDWIDTH = (
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),
    ("GH200", 4.0e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),
    ("L40S", 0.864e12),
    ("L40", 0.864e12),
    ("L4", 0.3e12),
    ("A10G", 0.6e12),
    ("A10", 0.6e12),
    ("T4", 0.32e12),
    ("V100", 0.9e12),
)


def training_frame(rows: int, seed: int = 7) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The demo data shaped as the features step hands it to training (event_timestamp, label, features)."""
    from components.core.spec import load_spec
    from components.data.datagen import GenConfig, generate

    spec = load_spec("transactions")
    raw = generate(GenConfig(rows=rows, seed=seed))
    frame = raw[spec.feature_names].copy()
    frame["event_timestamp"] = pd.to_datetime(raw[spec.timestamp], utc=True)
    frame["label"] = raw[spec.label].astype("int8")
    return frame, [f.name for f in spec.numeric], [c.name for c in spec.categorical]


def project_rates(frame: pd.DataFrame, numeric: list[str], categorical: list[str], params: Any) -> list[float]:
    from components.training.train import train_model

    _, _, result = train_model(frame, numeric, categorical, params)
    return [row["samples_per_s"] for row in result.history]


@contextmanager
def busy_neighbour() -> Iterator[int]:
    """A process spinning on one of this process's CPUs (the last one) while the block runs; yields that CPU."""
    cpu = max(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL)
    try:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(spinner.pid, {cpu})  # one core busy, not a share of every core
        time.sleep(0.2)  # let it start spinning before anything is timed
        yield cpu
    finally:
        spinner.kill()
        spinner.wait(timeout=10)


def anchor_rates(frame: pd.DataFrame, numeric: list[str], categorical: list[str], params: Any) -> list[float]:
    """The same model trained the ordinary way: a shuffling DataLoader over host tensors."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from components.core.spec import EVENT_TIMESTAMP
    from components.training.model import TabularNet
    from components.training.train import pick_device, tensors, vocabularies

    device = pick_device()
    torch.manual_seed(params.seed)
    ordered = frame.sort_values(EVENT_TIMESTAMP, kind="stable").reset_index(drop=True)
    fit_df = ordered.iloc[: int(len(ordered) * (1 - params.validation_fraction))]
    vocab = vocabularies(fit_df, categorical, params.max_vocabulary)
    transformed = TabularNet.transform(torch.tensor(fit_df[numeric].to_numpy(np.float32)))
    means = torch.nan_to_num(torch.nanmean(transformed, dim=0))
    stds = torch.nan_to_num(torch.tensor(np.nanstd(transformed.numpy(), axis=0)), nan=1.0)
    net = TabularNet(means, stds, [len(vocab[c]) for c in categorical], params.embedding_dim, params.hidden, params.dropout).to(device)
    xn, xc, y = tensors(fit_df, numeric, categorical, vocab, "cpu")
    positives = float(y.sum())
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - positives) / max(positives, 1.0), device=device))
    optimizer = torch.optim.AdamW(net.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    loader = DataLoader(
        TensorDataset(xn, xc, y), batch_size=params.batch_size, shuffle=True, generator=torch.Generator().manual_seed(params.seed)
    )
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    rates = []
    for _ in range(params.epochs):
        net.train()
        t0 = time.perf_counter()
        running = 0.0
        for xb, cb, yb in loader:
            xb, cb, yb = xb.to(device), cb.to(device), yb.to(device)
            with torch.autocast(**autocast):
                loss = loss_fn(net(xb, cb).float(), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            running += loss.item() * len(yb)
        rates.append(len(y) / (time.perf_counter() - t0))
    return rates


def bytes_per_step(net_params: int, batch: int, n_numeric: int, n_categorical: int, width: int, hidden: int) -> float:
    """Estimated HBM traffic of one training step (see the module docstring): a floor, not a measurement."""
    inputs = 2 * batch * (4 * n_numeric + 8 * n_categorical + 4) + 8 * batch  # gathered rows read and written, indices
    weights = net_params * (4 + 2 + 2 + 4 + 28)  # fp32 read + bf16 copy, bf16 read in backward, fp32 grad, fused AdamW
    activations = 3 * batch * 2 * (width + 2 * hidden + 2 * (hidden // 2) + 2)  # written forward, read and grads backward
    return float(inputs + weights + activations)


def peak_bandwidth(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BANDWIDTH if key in name), None)


def run(quick: bool) -> list[Figure]:
    import torch

    from components.core.threads import apply_torch_threads
    from components.training.model import TabularNet
    from components.training.train import TrainParams

    rows, epochs, rounds = (20_000, 3, 1) if quick else (200_000, 4, 2)
    frame, numeric, categorical = training_frame(rows)
    params = TrainParams(epochs=epochs, patience=epochs + 1)  # the step's defaults (batch 1024, ...); no early stop
    device = "cuda" if torch.cuda.is_available() else "cpu"
    previous = torch.get_num_threads()
    threads = apply_torch_threads()  # what the train step sets before training (components/training/step.py)
    project, anchor, busy = [], [], []
    try:
        for _ in range(rounds):  # alternate, so drift of a shared machine hits every loop alike
            project += project_rates(frame, numeric, categorical, params)[1:]
            anchor += anchor_rates(frame, numeric, categorical, params)[1:]
            with busy_neighbour():
                busy += project_rates(frame, numeric, categorical, params)[1:]
    finally:
        torch.set_num_threads(previous)
    mine, theirs, loaded = statistics.median(project), statistics.median(anchor), statistics.median(busy)
    ratio = mine / theirs
    setting = f"{threads} torch thread(s) (the step's CPU budget: cgroup quota and affinity, {os.cpu_count()} cores seen)"
    figures = [
        Figure(
            benchmark=NAME,
            figure=f"training throughput on {device}, {rows:,} rows (samples/s)",
            project=mine,
            anchor=theirs,
            anchor_name="plain DataLoader loop, same model, data and batch",
            higher_is_better=True,
            goal=f">= {GOAL_RATIO:g}x anchor",
            met=ratio >= GOAL_RATIO,
            notes=f"median of {len(project)} epochs each (warm-up epochs dropped); batch {params.batch_size}; {setting} for both",
        ),
        Figure(
            benchmark=NAME,
            figure=f"train step with one core busy vs quiet on {device}, {rows:,} rows (samples/s)",
            project=loaded,
            anchor=mine,
            anchor_name="the same train step, no neighbour (figure above)",
            higher_is_better=True,
            goal=f">= {GOAL_BUSY:.2f}x quiet",
            met=loaded / mine >= GOAL_BUSY,
            notes=f"a process spinning on one CPU throughout; median of {len(busy)} epochs; {setting}; the DataLoader anchor "
            f"quiet: {theirs:,.0f}",
        ),
    ]
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
        cardinalities = [min(frame[c].nunique(), params.max_vocabulary) for c in categorical]
        net = TabularNet(torch.zeros(len(numeric)), torch.ones(len(numeric)), cardinalities, params.embedding_dim, params.hidden)
        width = len(numeric) + sum(int(e.embedding_dim) for e in net.embeddings)
        per_step = bytes_per_step(
            sum(p.numel() for p in net.parameters()), params.batch_size, len(numeric), len(categorical), width, params.hidden
        )
        achieved = per_step * mine / params.batch_size
        peak = peak_bandwidth(name)
        figures.append(
            Figure(
                benchmark=NAME,
                figure="GPU memory bandwidth reached by the training loop (ESTIMATE, fraction of peak)",
                project=achieved / peak if peak else achieved,
                anchor=None,
                anchor_name=f"datasheet peak {peak / 1e12:.2f} TB/s of {name}"
                if peak
                else f"{name}: not in the peak table (bytes/s shown)",
                higher_is_better=True,
                goal="report only (estimate)",
                met=None,
                notes=f"~{per_step / 1e6:.2f} MB per step estimated from shapes; {achieved / 1e9:.1f} GB/s",
            )
        )
    return figures
