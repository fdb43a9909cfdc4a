import json

import pytest
import torch

from components.core import bundle as bundle_lib
from components.training.train import TrainParams, build_bundle, train_model
from tests.factories import synthetic

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["colour"]


@pytest.fixture(scope="module")
def trained():
    df = synthetic()
    return df, *train_model(df, NUMERIC, CATEGORICAL, TrainParams(epochs=15, batch_size=64, seed=1))


def test_same_inputs_and_seed_give_identical_weights(trained):
    df, program, _, _ = trained
    again, _, _ = train_model(df, NUMERIC, CATEGORICAL, TrainParams(epochs=15, batch_size=64, seed=1))
    for (name, a), (_, b) in zip(program.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


def test_learns_and_reports_progress(trained):
    _, _, vocab, result = trained
    assert result.validation_auc > 0.75
    assert 0 < result.threshold < 1
    assert [r["epoch"] for r in result.history] == list(range(1, len(result.history) + 1))
    assert all(r["samples_per_s"] > 0 for r in result.history)
    assert vocab["colour"] == sorted(vocab["colour"], key=lambda v: v) or len(vocab["colour"]) == 3


def test_bundle_round_trip_scores_raw_values(tmp_path, trained):
    df, program, vocab, result = trained
    build_bundle(tmp_path / "b", program, vocab, result, df, NUMERIC, CATEGORICAL, {"dataset": "synthetic"}, "# card\n")
    loaded = bundle_lib.load(tmp_path / "b")
    probs = loaded.predict_proba({"x1": [3.0, -3.0, None], "x2": [1.0, 1.0, 1.0], "colour": ["red", "blue", "never-seen"]})
    assert probs[0] > 0.8 > 0.2 > probs[1]
    assert 0 <= probs[2] <= 1
    sig = json.loads((tmp_path / "b" / "signature.json").read_text())
    assert [f["name"] for f in sig["features"]] == NUMERIC + CATEGORICAL
    profile = json.loads((tmp_path / "b" / "reference_profile.json").read_text())
    assert len(profile["numeric"]["x1"]["edges"]) == 11 and abs(sum(profile["prediction"]["frequencies"]) - 1) < 1e-9


def test_tampered_bundle_is_refused(tmp_path, trained):
    df, program, vocab, result = trained
    build_bundle(tmp_path / "b", program, vocab, result, df, NUMERIC, CATEGORICAL, {}, "# card\n")
    sig = tmp_path / "b" / "signature.json"
    sig.write_text(sig.read_text().replace('"threshold"', '"threshold" ', 1))
    with pytest.raises(bundle_lib.BundleError, match="signature.json does not match its sha256"):
        bundle_lib.load(tmp_path / "b")
    (tmp_path / "b" / "manifest.json").unlink()
    with pytest.raises(bundle_lib.BundleError, match="not a model bundle"):
        bundle_lib.load(tmp_path / "b")


def test_refuses_data_it_cannot_learn_from():
    df = synthetic(200)
    with pytest.raises(ValueError, match="one class"):
        train_model(df.assign(label=0), NUMERIC, CATEGORICAL, TrainParams(epochs=1))
    with pytest.raises(ValueError, match="too few"):
        train_model(df.head(5), NUMERIC, CATEGORICAL, TrainParams(epochs=1))


def _training_set(tmp_path, rows: int = 1500):
    from benchmarks.bench_training import training_frame

    frame, _, _ = training_frame(rows, seed=11)
    path = tmp_path / "train.parquet"
    frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("processes", [1, 2])
def test_training_run_logs_lineage_environment_and_history(tmp_path, state_dir, transactions_spec, monkeypatch, processes):
    """One process trains in the step; two go through torchrun (DDP, gloo), as a pod with two GPUs would."""
    import mlflow

    from components.core.settings import get_settings
    from components.core.tracking import configure
    from components.training import run as training_run

    monkeypatch.setattr(training_run, "_local_processes", lambda: processes)
    train_path = _training_set(tmp_path)
    params = TrainParams(epochs=3, batch_size=128, seed=4, patience=5)
    out = training_run.run_training_step(transactions_spec, train_path, str(tmp_path / "m"), params, "transactions_v3", "fp-123")
    assert out["reused"] is False and out["world_size"] == processes
    client = configure(get_settings())
    run = client.get_run(out["run_id"])
    p, tags = run.data.params, run.data.tags
    assert p["feature_service"] == "transactions_v3" and tags["mlwf.feature_service_version"] == "3"
    assert p["dataset_fingerprint"] == "fp-123" and p["code_version"] == tags["mlflow.source.git.commit"]
    assert {"env.python", "env.torch", "env.cuda", "env.device_name", "env.gpu_count"} <= set(p)
    assert p["processes_per_node"] == str(processes) and tags["mlwf.world_size"] == str(processes)
    assert len(client.get_metric_history(out["run_id"], "val_roc_auc")) == out["epochs"]  # one point per epoch
    assert run.inputs.dataset_inputs and run.inputs.dataset_inputs[0].dataset.name == "transactions_v3"
    signature = json.loads((tmp_path / "m" / "signature.json").read_text())
    assert signature["lineage"]["run_id"] == out["run_id"] and signature["lineage"]["feature_service_version"] == "3"
    version = client.get_model_version(out["model_name"], out["version"])
    assert version.run_id == out["run_id"] and mlflow.get_run(out["run_id"]).info.status == "FINISHED"
    again = training_run.run_training_step(transactions_spec, train_path, str(tmp_path / "m2"), params, "transactions_v3", "fp-123")
    assert again["reused"] is True and again["version"] == out["version"]


def test_program_holds_its_calibration_and_the_threshold_is_a_calibrated_probability(trained):
    from components.training.calibration import Calibrated

    _, program, _, result = trained
    assert isinstance(program, Calibrated)  # exported with the map: the served probability is the calibrated one
    cal = result.calibration
    assert cal["method"] in ("isotonic", "platt") and cal["rows"] >= 50 and cal["objective"] == "f1"
    assert cal["ece_after"] <= cal["ece_before"] + 1e-9


def test_cost_matrix_moves_the_threshold_and_bad_objectives_fail_before_training():
    df = synthetic()
    params = dict(epochs=3, batch_size=64, seed=1)
    _, _, f1 = train_model(df, NUMERIC, CATEGORICAL, TrainParams(**params))
    _, _, costly_misses = train_model(df, NUMERIC, CATEGORICAL, TrainParams(**params, threshold_objective='{"fp": 1, "fn": 50}'))
    assert costly_misses.threshold < f1.threshold  # a missed positive costs 50x a false alarm: call more positives
    assert costly_misses.calibration["objective"] == {"fp": 1.0, "fn": 50.0, "tp": 0.0, "tn": 0.0}
    with pytest.raises(ValueError, match="'fn' = -5 must be a finite cost >= 0"):
        train_model(df, NUMERIC, CATEGORICAL, TrainParams(epochs=1, threshold_objective='{"fp": 1, "fn": -5}'))


def test_too_little_data_for_a_calibration_tail_is_named():
    with pytest.raises(ValueError, match="too little data to hold out a calibration tail: the latest 15 training rows"):
        train_model(synthetic(200), NUMERIC, CATEGORICAL, TrainParams(epochs=1))
