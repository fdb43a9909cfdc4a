"""Data-parallel training for real: torchrun launches 2 processes (gloo on the CPU) on small synthetic data."""

import json

import numpy as np
import pytest
import torch

from components.core import bundle as bundle_lib
from components.training.distributed import (
    DistributedTrainingError,
    run_local,
    spec_from_json,
    spec_to_json,
)
from components.training.train import Shard, TrainParams, _rank_order
from tests.factories import SYNTHETIC_SPEC as SPEC
from tests.factories import synthetic

PARAMS = TrainParams(epochs=6, batch_size=64, seed=3, patience=10)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    train_path = root / "train.parquet"
    synthetic(1200, seed=5).to_parquet(train_path)
    out = root / "out"
    result = run_local(
        2,
        SPEC,
        str(train_path),
        str(out),
        PARAMS,
        {"feature_service": "synthetic_v1", "dataset_fingerprint": "fp"},
        dump_weights=True,
        timeout_s=300,
    )
    return out, result


def test_both_ranks_end_with_identical_weights(two_ranks):
    out, _ = two_ranks
    with np.load(out / "weights-rank0.npz") as rank0, np.load(out / "weights-rank1.npz") as rank1:
        assert sorted(rank0.files) == sorted(rank1.files) and rank0.files
        for name in rank0.files:
            assert np.array_equal(rank0[name], rank1[name]), name


def test_rank0_writes_a_bundle_that_loads_and_scores(two_ranks):
    out, result = two_ranks
    assert result.world_size == 2 and result.history and result.validation_auc > 0.7
    loaded = bundle_lib.load(out / "bundle")
    probs = loaded.predict_proba({"x1": [3.0, -3.0], "x2": [1.0, 1.0], "colour": ["red", "blue"]})
    assert probs[0] > 0.5 > probs[1]
    signature = json.loads((out / "bundle" / "signature.json").read_text())
    assert signature["lineage"]["world_size"] == 2 and signature["lineage"]["feature_service"] == "synthetic_v1"
    assert "synthetic_v1" in (out / "bundle" / "model_card.md").read_text()
    written = json.loads((out / "result.json").read_text())
    assert written["bundle_sha256"] == bundle_lib.bundle_digest(out / "bundle")


def test_ranks_train_on_disjoint_equal_shares():
    n = 1001
    shares = [_rank_order(n, torch.Generator().manual_seed(0), Shard(rank, 2), "cpu") for rank in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == n // 2
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    whole = _rank_order(n, torch.Generator().manual_seed(0), Shard(0, 1), "cpu")
    assert sorted(whole.tolist()) == list(range(n))


def test_spec_survives_the_command_line():
    assert spec_from_json(spec_to_json(SPEC)) == SPEC


def test_a_failing_run_raises_with_the_error(tmp_path):
    with pytest.raises(DistributedTrainingError, match="torchrun with 1 processes failed"):
        run_local(1, SPEC, str(tmp_path / "missing.parquet"), str(tmp_path / "out"), PARAMS, {}, timeout_s=120)
