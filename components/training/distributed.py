"""Data-parallel training under torchrun: `python -m torch.distributed.run ... -m components.training.distributed`.

Every process reads the same training set, builds the same vocabularies and statistics, and runs the
training loop of components/training/train.py wrapped in DistributedDataParallel (NCCL on GPUs, gloo on CPUs);
each rank trains on its share of every epoch and the gradients are averaged, so all ranks end with the
same weights. Rank 0 alone writes the result: a sealed model bundle (`<out>/bundle/`) and the training
history (`<out>/result.json`). The same entry runs several GPUs of one node (launched by the train step)
and several nodes (launched by a Kubeflow Trainer TrainJob: components/training/trainjob.py); torchrun reads its
rendezvous settings from the PET_* variables the Trainer sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.spec import CategoricalFeature, DatasetSpec, NumericFeature
from components.training.train import Shard, TrainParams, TrainResult

log = logging.getLogger(__name__)

RESULT = "result.json"
BUNDLE = "bundle"


class DistributedTrainingError(RuntimeError):
    """A data-parallel training run failed; the message names the launcher and the error's last lines."""


# ---------------------------------------------------------------- what travels on the command line


def spec_to_json(spec: DatasetSpec) -> str:
    return json.dumps(dataclasses.asdict(spec), sort_keys=True, default=str)


def spec_from_json(text: str) -> DatasetSpec:
    data = json.loads(text)
    data["numeric"] = tuple(NumericFeature(**f) for f in data["numeric"])
    data["categorical"] = tuple(
        CategoricalFeature(**{**f, "values": tuple(f["values"]) if f["values"] is not None else None}) for f in data["categorical"]
    )
    for name in ("sensitive", "pii"):  # tuples in the spec; JSON gives lists back
        if name in data:
            data[name] = tuple(data[name])
    return DatasetSpec(**data)


def params_from_json(text: str) -> TrainParams:
    return TrainParams(**json.loads(text)) if text else TrainParams()


def module_arguments(
    spec: DatasetSpec, train_uri: str, out_uri: str, params: TrainParams, lineage: dict[str, Any], dump_weights: bool = False
) -> list[str]:
    """The arguments after `-m components.training.distributed`, for torchrun here or in a TrainJob."""
    args = [
        "--spec-json",
        spec_to_json(spec),
        "--train-set",
        train_uri,
        "--out",
        out_uri,
        "--params",
        json.dumps(dataclasses.asdict(params), sort_keys=True),
        "--lineage",
        json.dumps(lineage, sort_keys=True),
    ]
    return args + (["--dump-weights"] if dump_weights else [])


def read_result(out_uri: str) -> TrainResult:
    data = json.loads(storage.read_bytes(storage.join(out_uri, RESULT)))["result"]
    return TrainResult(**data)


# ---------------------------------------------------------------- one process of the job


def _process_group() -> tuple[Shard, Any]:
    """Join the job torchrun started (RANK/WORLD_SIZE/LOCAL_RANK); a lone process trains without one."""
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cpu")
    if torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise DistributedTrainingError(f"local rank {local_rank} has no GPU: this node has {torch.cuda.device_count()}")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
        log.info("rank %d of %d joined (%s on %s)", rank, world, backend, device)
    return Shard(rank=rank, world=world), device


def _state_arrays(program: Any) -> dict[str, Any]:
    return {k: v.detach().cpu().numpy() for k, v in program.state_dict().items()}


def train_process(
    spec: DatasetSpec, train_uri: str, out_uri: str, params: TrainParams, lineage: dict[str, Any], dump_weights: bool = False
) -> TrainResult:
    """What each torchrun process does; rank 0 writes the bundle and the result."""
    import numpy as np
    import pandas as pd
    import torch.distributed as dist

    from components.training.card import model_card
    from components.training.train import build_bundle, train_model

    shard, device = _process_group()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            train = pd.read_parquet(storage.local_copy(train_uri, tmp))
        numeric = [f.name for f in spec.numeric]
        categorical = [c.name for c in spec.categorical]

        def progress(row: dict[str, float]) -> None:
            if shard.rank == 0:
                log.info(
                    "epoch %d  loss %.4f  val_roc_auc %.4f  %.0f samples/s",
                    row["epoch"],
                    row["loss"],
                    row["val_roc_auc"],
                    row["samples_per_s"],
                )

        program, vocab, result = train_model(train, numeric, categorical, params, progress, shard=shard, device=device)
        if dump_weights:  # for checking that every rank ended with the same weights (npz: no pickle)
            buffer = io.BytesIO()
            np.savez(buffer, **_state_arrays(program))
            storage.write_bytes(storage.join(out_uri, f"weights-rank{shard.rank}.npz"), buffer.getvalue())
        if shard.rank == 0:
            lineage = {
                "dataset": spec.name,
                "dataset_fingerprint": "",
                "feature_service": "",
                "code_version": "unknown",
                "model_name": f"{spec.name}_classifier",
                **lineage,
                "world_size": shard.world,
            }
            with tempfile.TemporaryDirectory() as tmp:
                staged = Path(tmp) / BUNDLE
                card = model_card(spec, str(lineage["model_name"]), lineage, result, train)
                digest = build_bundle(staged, program, vocab, result, train, numeric, categorical, lineage, card)
                storage.upload_dir(str(staged), storage.join(out_uri, BUNDLE))
            # The result is written last: its presence says the bundle beside it is whole.
            payload = {"result": dataclasses.asdict(result), "bundle_sha256": digest, "rows": len(train)}
            storage.write_bytes(storage.join(out_uri, RESULT), json.dumps(payload, indent=2).encode())
        if shard.world > 1:
            dist.barrier()  # no rank exits (and tears the group down) before rank 0 has written
        return result
    finally:
        if shard.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------- launching it on this machine


def torchrun_command(nproc: int, module_args: list[str]) -> list[str]:
    """torchrun for the processes of one node (a standalone rendezvous on a free local port)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "components.training.distributed",
        *module_args,
    ]


def run_local(
    nproc: int,
    spec: DatasetSpec,
    train_uri: str,
    out_uri: str,
    params: TrainParams,
    lineage: dict[str, Any],
    dump_weights: bool = False,
    timeout_s: float = 24 * 3600,
) -> TrainResult:
    """Train with `nproc` processes on this node (one per GPU, or gloo on CPUs) and return rank 0's result."""
    if nproc < 1:
        raise ValueError(f"nproc must be at least 1, got {nproc}")
    command = torchrun_command(nproc, module_arguments(spec, train_uri, out_uri, params, lineage, dump_weights))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun sets it too; explicit, so n processes do not fight for cores
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, env=env)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise DistributedTrainingError(f"torchrun with {nproc} processes failed (exit {done.returncode}):\n{tail}")
    if not storage.exists(storage.join(out_uri, RESULT)):
        raise DistributedTrainingError(f"torchrun finished but rank 0 wrote no {RESULT} under {out_uri}")
    return read_result(out_uri)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec-json", required=True, help="the dataset spec as JSON (distributed.spec_to_json)")
    parser.add_argument("--train-set", required=True, help="Parquet training set: a path or s3:// URI every node can read")
    parser.add_argument("--out", required=True, help="where rank 0 writes bundle/ and result.json: a path or s3:// URI")
    parser.add_argument("--params", default="", help="TrainParams as JSON")
    parser.add_argument("--lineage", default="{}", help="lineage written into the bundle's signature, as JSON")
    parser.add_argument("--dump-weights", action="store_true", help="every rank writes weights-rank<N>.npz under --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank{os.environ.get('RANK', '0')} %(levelname)s %(name)s: %(message)s")
    train_process(
        spec_from_json(args.spec_json), args.train_set, args.out, params_from_json(args.params), json.loads(args.lineage), args.dump_weights
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
