"""Model candidates: every family sealed in the same bundle contract, the policy's `candidates`, and the selection
rule (the best that passes; a cheaper one when the lead is within noise; never a failing or refused one)."""

from __future__ import annotations

import numpy as np
import pytest

from components.core import bundle as bundle_lib
from components.core.candidates import Candidate, check_families, read_candidates
from components.evaluation.evaluate import Evaluation
from components.evaluation.policy import PolicyError, parse_policy
from components.evaluation.selection import Contender, choose
from components.training.families import train_lightgbm_family, train_logistic_family
from components.training.train import TrainParams, build_bundle
from tests.factories import synthetic

NUMERIC, CATEGORICAL = ["x1", "x2"], ["colour"]


@pytest.mark.parametrize("family", ["lightgbm", "logistic"])
def test_each_family_is_a_calibrated_bundle_that_scores_like_its_library(family, tmp_path):
    train, test = synthetic(2000, seed=1), synthetic(500, seed=2)
    if family == "lightgbm":
        program, vocab, result, extra = train_lightgbm_family(train, NUMERIC, CATEGORICAL, TrainParams(seed=3), num_threads=1)
        assert extra["parity_edge_rows"] > 0 and extra["parity_max_abs_diff"] <= 1e-5
    else:
        program, vocab, result, extra = train_logistic_family(train, NUMERIC, CATEGORICAL, TrainParams(seed=3))
        assert extra["native_max_abs_diff"] <= 1e-5
    assert result.calibration["method"] in ("isotonic", "platt") and 0.0 < result.threshold < 1.0
    assert result.validation_auc > 0.75  # the synthetic label is learnable: x1 and colour drive it
    build_bundle(tmp_path, program, vocab, result, train, NUMERIC, CATEGORICAL, {"family": family}, "# card\n")
    bundle = bundle_lib.load(tmp_path)  # exported, sealed and verified like the network's
    columns = bundle_lib.columns_from_frame(test, bundle.feature_names)
    p = bundle.predict_proba(columns)
    assert p.shape == (500,) and np.all((p >= 0) & (p <= 1))
    # missing and unseen values are handled inside the program
    odd = bundle.predict_proba({"x1": [None, 0.5], "x2": [None, None], "colour": ["purple", None]})
    assert np.all(np.isfinite(odd))
    assert read_candidates(str(tmp_path), "7") == [Candidate(family, "7", str(tmp_path))]


def test_logistic_program_equals_scikit_learns_fit_before_calibration():
    """The cheap model carried over exactly (checked inside the family too, on the validation rows)."""
    import torch

    from components.training.model import LogisticProgram

    program = LogisticProgram(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0]), [torch.tensor([0.0, 1.0, -1.0])], -0.5)
    numeric = torch.tensor([[0.0], [np.e - 1], [float("nan")]], dtype=torch.float32)
    codes = torch.tensor([[1], [2], [7]])  # 7 is past the table: read as unseen (code 0)
    logits = np.array([-0.5 + 0 + 1.0, -0.5 + 2.0 * 1.0 - 1.0, -0.5 + 0.0 + 0.0])
    np.testing.assert_allclose(program(numeric, codes).numpy(), 1 / (1 + np.exp(-logits)), rtol=1e-6)


def test_policy_candidates_are_checked_before_anything_trains():
    assert parse_policy({"version": 1}).candidates == ("network", "lightgbm", "logistic")
    assert parse_policy({"version": 1, "candidates": ["LightGBM", "logistic", "lightgbm"]}).candidates == ("lightgbm", "logistic")
    with pytest.raises(PolicyError, match="unknown model family 'xgboost'"):
        parse_policy({"version": 1, "candidates": ["network", "xgboost"]})
    with pytest.raises(PolicyError, match="no model family"):
        parse_policy({"version": 1, "candidates": []})
    with pytest.raises(PolicyError, match="expected a list"):
        parse_policy({"version": 1, "candidates": "network"})
    with pytest.raises(ValueError, match="unknown model family"):
        check_families(["forest"])


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def _contender(family: str, scores: np.ndarray, y: np.ndarray, p99: float, size: int, passed: bool = True) -> Contender:
    from sklearn.metrics import roc_auc_score

    metrics = {"roc_auc": float(roc_auc_score(y, scores)), "latency_p99_ms": p99}
    ev = Evaluation(metrics=metrics, passed=passed, reasons=[] if passed else ["ece 0.2 exceeds the maximum 0.05"])
    return Contender(Candidate(family, {"network": "1", "lightgbm": "2", "logistic": "3"}[family], f"/{family}"), ev, scores, size)


def test_the_cheaper_candidate_wins_when_the_lead_is_noise_and_loses_when_it_is_not():
    rng = np.random.default_rng(0)
    y = (rng.random(4000) < 0.2).astype(int)
    signal = y + rng.normal(scale=1.0, size=y.size)
    best = signal + rng.normal(scale=0.05, size=y.size)
    close = signal + rng.normal(scale=0.05, size=y.size)  # the same model up to noise
    if _auc(y, close) > _auc(y, best):  # the expensive one is (insignificantly) the better
        best, close = close, best
    poor = y + rng.normal(scale=3.0, size=y.size)  # clearly worse
    network = _contender("network", best, y, p99=0.9, size=900_000)
    logistic = _contender("logistic", close, y, p99=0.2, size=20_000)
    chosen = choose([network, logistic], y)
    assert chosen.winner is logistic and "within noise" in chosen.why
    assert [r["status"].split(":")[0] for r in chosen.rows] == ["passed, not chosen", "chosen"]

    weak = _contender("logistic", poor, y, p99=0.2, size=20_000)
    chosen = choose([network, weak], y)
    assert chosen.winner is network and "highest ROC-AUC" in chosen.why
    lo, hi = chosen.rows[1]["ci_vs_best"]
    assert lo > 0 and hi > lo  # the network is measurably better: the cheaper one loses


def test_failing_or_refused_candidates_are_never_chosen():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.3).astype(int)
    great = y + rng.normal(scale=0.3, size=y.size)
    fine = y + rng.normal(scale=1.0, size=y.size)
    failing = _contender("lightgbm", great, y, p99=0.1, size=10, passed=False)  # the best score, but fails a check
    refused = Contender(Candidate("network", None, "/network", refused="ParityError: differs"), None, None, refused="ParityError: differs")
    ok = _contender("logistic", fine, y, p99=0.5, size=100)
    chosen = choose([refused, failing, ok], y)
    assert chosen.winner is ok
    statuses = {r["family"]: r["status"] for r in chosen.rows}
    assert statuses["network"].startswith("refused: ParityError") and statuses["lightgbm"].startswith("failed: ece")
    nothing = choose([refused, failing], y)
    assert nothing.winner is None and "none is deployed" in nothing.why


def test_a_training_run_of_several_families_registers_each_and_a_failing_one_is_refused(
    tmp_path, state_dir, transactions_spec, monkeypatch
):
    """One parent run with a child run per candidate, each registered and tagged with its family; a family that fails
    is recorded as refused and the others still compete; the same inputs again reuse every version."""
    import json

    from components.core.settings import get_settings
    from components.core.tracking import configure
    from components.training import families as families_lib
    from components.training import run as training_run
    from tests.factories import transactions_frame

    frame, _, _ = transactions_frame(2000, seed=4)
    train_path = tmp_path / "train.parquet"
    frame.to_parquet(train_path)

    def broken(*args, **kwargs):
        raise families_lib.CandidateRefused("lightgbm: the tree program does not match LightGBM: worst row 3")

    monkeypatch.setattr(families_lib, "train_lightgbm_family", broken)
    params = TrainParams(seed=2)
    out = training_run.run_training_step(
        transactions_spec, str(train_path), str(tmp_path / "m"), params, "transactions_v1", "fp", families=["lightgbm", "logistic"]
    )
    assert out["candidates"] == "lightgbm refused, logistic v1" and out["family"] == "logistic"
    found = read_candidates(str(tmp_path / "m"))
    assert [(c.family, c.version) for c in found] == [("lightgbm", None), ("logistic", "1")]
    assert "worst row 3" in found[0].refused and bundle_lib.load(found[1].path).feature_names
    client = configure(get_settings())
    child = client.get_run(client.get_model_version(out["model_name"], "1").run_id)
    assert child.data.tags["mlflow.parentRunId"] == out["run_id"] and child.data.tags["mlwf.family"] == "logistic"
    parent = client.get_run(out["run_id"])
    assert parent.data.tags["mlwf.candidates"] == "lightgbm,logistic"
    logged = json.loads(open(client.download_artifacts(out["run_id"], "candidates.json", str(tmp_path))).read())
    assert [e["family"] for e in logged] == ["lightgbm", "logistic"]
    with pytest.raises(ValueError, match="unknown model family 'forest'"):
        training_run.run_training_step(
            transactions_spec, str(train_path), str(tmp_path / "x"), params, "transactions_v1", "fp", families=["forest"]
        )
    again = training_run.run_training_step(
        transactions_spec, str(train_path), str(tmp_path / "m2"), params, "transactions_v1", "fp", families=["logistic"]
    )
    assert again["reused"] is True and again["version"] == "1"
