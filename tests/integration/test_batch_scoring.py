"""Batch scoring for real: a network trained here (two epochs), registered in a fresh local MLflow store as
`clf@champion`, scores generated transactions with 5% deliberately bad rows.

The scores are the bundle's own predict on the valid rows, in input order; bad rows are quarantined with their
reasons beside the output; rows in = scored + quarantined; the label column is optional; a rerun (and the
`mlwf score --local` run through the scoring pipeline under kfp.local) writes byte-identical files; bad input
(a feature column missing, a model reference that resolves to nothing) exits 2 in one line and writes nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from components.core import bundle as bundle_lib
from components.core import tracking
from components.core.settings import get_settings
from components.scoring.batch import INPUT_FINGERPRINT, MODEL_NAME, MODEL_VERSION, PREDICTION, PROBABILITY, ScoringError
from components.scoring.step import ScoringRequest, score_batch
from pipelines.cli import main
from pipelines.scoring_data import data_stage
from tests.conftest import make_csv
from tests.factories import transactions_frame

pytestmark = pytest.mark.integration

MODEL = "clf"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def scoring(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A network bundle registered as clf@champion in a fresh state store, and rows to score (5% bad)."""
    import mlflow

    from components.training.train import TrainParams, build_bundle, train_model

    tmp = tmp_path_factory.mktemp("scoring")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLWF_STATE_DIR", str(tmp / "state"))
    mp.setenv("MLWF_PROFILE", "local")
    for var in ("MLFLOW_TRACKING_URI", "MLWF_FEAST_REGISTRY", "MLWF_FEAST_ONLINE", "MLWF_FEAST_OFFLINE_ROOT", "MLWF_MODEL_NAME"):
        mp.delenv(var, raising=False)
    frame, numeric, categorical = transactions_frame(2000, seed=11)
    program, vocab, result = train_model(frame, numeric, categorical, TrainParams(epochs=2, seed=3))
    bundle_dir = tmp / "bundle"
    build_bundle(bundle_dir, program, vocab, result, frame, numeric, categorical, {"model_name": MODEL, "dataset": "transactions"}, "c\n")
    client = tracking.configure(get_settings())
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
    version = tracking.register(client, MODEL, run.info.run_id, f"{run.info.artifact_uri}/bundle", {}, "scoring test")
    client.set_registered_model_alias(MODEL, "champion", version)
    data = make_csv(tmp / "score.csv", rows=800, seed=21, bad_fraction=0.05)
    yield {"tmp": tmp, "bundle": bundle_lib.load(bundle_dir), "version": version, "data": data}
    mp.undo()


@pytest.fixture(scope="module")
def direct(scoring: dict[str, Any]) -> Any:
    """The labelled rows scored once by the step's function (no pipeline): what the other runs are compared with."""
    out = scoring["tmp"] / "direct" / "scores.parquet"
    return score_batch(ScoringRequest(f"{MODEL}@champion", str(scoring["data"]), str(out)), data_stage()), out


def test_scores_are_the_bundles_predict_and_every_row_is_accounted_for(scoring: dict[str, Any], direct: Any) -> None:
    result, out = direct
    scores = pd.read_parquet(out)
    quarantine = pd.read_parquet(result.quarantine_uri)
    source = pd.read_csv(scoring["data"], dtype=str, keep_default_na=False, na_values=[""])
    assert result.rows_in == len(source) == len(scores) + len(quarantine) == result.scored + result.quarantined
    assert 0 < len(quarantine) < 0.2 * len(source) and quarantine["failed_expectations"].str.len().min() > 0
    assert set(quarantine["source_line"]).isdisjoint(set(source.index[source["transaction_id"].isin(scores["transaction_id"])] + 2))
    assert list(scores.columns) == [
        "transaction_id",
        "event_timestamp",
        PROBABILITY,
        PREDICTION,
        "label",
        MODEL_NAME,
        MODEL_VERSION,
        INPUT_FINGERPRINT,
        "source_file",
        "source_line",
    ]
    lines = dict(zip(source["transaction_id"], source.index + 2))  # line 1 is the header
    assert list(scores["source_line"]) == [lines[t] for t in scores["transaction_id"]]
    assert set(scores["source_file"]) == {str(scoring["data"])}
    # In input order, and each row's probability is what the bundle's own predict says for that row.
    rows = source.set_index("transaction_id").loc[scores["transaction_id"]]
    assert (np.diff(source.reset_index().set_index("transaction_id").loc[scores["transaction_id"], "index"].to_numpy()) > 0).all()
    bundle = scoring["bundle"]
    typed = rows.astype({f: "float64" for f in bundle.numeric})
    expected = bundle.predict_proba(bundle_lib.columns_from_frame(typed, bundle.feature_names))
    np.testing.assert_allclose(scores[PROBABILITY].to_numpy(), expected, rtol=0, atol=1e-6)
    assert (scores[PREDICTION] == (scores[PROBABILITY] >= bundle.threshold).astype("int8")).all()
    assert (scores["label"].to_numpy() == rows["is_fraud"].astype(int).to_numpy()).all()
    assert set(scores[MODEL_NAME]) == {MODEL} and set(scores[MODEL_VERSION]) == {scoring["version"]}
    assert set(scores[INPUT_FINGERPRINT]) == {result.input_fingerprint}


def test_a_rerun_writes_the_same_bytes(scoring: dict[str, Any], direct: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Even an hour later, with a row 10 minutes ahead of the first run's clock: "in the future" is judged against
    the time the input was first scored (kept in the state store), not the rerun's wall clock."""
    from datetime import UTC, datetime, timedelta

    from components.scoring import step

    rows = pd.read_csv(scoring["data"], dtype=str, keep_default_na=False, na_values=[""])
    good = set(pd.read_parquet(direct[1])["transaction_id"])
    ahead = int(rows.index[rows["transaction_id"].isin(good)][0])  # a valid row, moved 10 minutes ahead of now
    rows.loc[ahead, "event_time"] = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    data = scoring["tmp"] / "rerun.csv"
    rows.to_csv(data, index=False)
    request = ScoringRequest(f"{MODEL}@champion", str(data), str(scoring["tmp"] / "rerun" / "scores.parquet"))
    first = score_batch(request, data_stage())
    before = (sha(Path(first.scores_uri)), sha(Path(first.quarantine_uri)))
    assert rows.loc[ahead, "transaction_id"] in set(pd.read_parquet(first.quarantine_uri)["transaction_id"])

    class AnHourLater(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.now(tz) + timedelta(hours=1)

    monkeypatch.setattr(step, "datetime", AnHourLater)
    second = score_batch(request, data_stage())
    assert (sha(Path(second.scores_uri)), sha(Path(second.quarantine_uri))) == before
    assert second.scores_sha256 == first.scores_sha256 == before[0]
    assert not [p.name for p in Path(first.scores_uri).parent.iterdir() if p.name.startswith(".")], "a temporary file was left"


def test_the_label_column_is_optional(scoring: dict[str, Any], direct: Any) -> None:
    source = pd.read_csv(scoring["data"], dtype=str, keep_default_na=False, na_values=[""])
    unlabelled = scoring["tmp"] / "unlabelled.csv"
    source.drop(columns=["is_fraud"]).to_csv(unlabelled, index=False)
    out = scoring["tmp"] / "unlabelled" / "scores.parquet"
    result = score_batch(ScoringRequest(f"{MODEL}@champion", str(unlabelled), str(out)), data_stage())
    scores, quarantine = pd.read_parquet(out), pd.read_parquet(result.quarantine_uri)
    assert "label" not in scores.columns and "is_fraud" not in quarantine.columns
    assert result.rows_in == len(source) == len(scores) + len(quarantine)
    assert not quarantine["failed_expectations"].str.contains("label").any()
    labelled = pd.read_parquet(direct[1])
    # Rows quarantined only for their label are scored here; the others agree with the labelled run.
    merged = scores.merge(labelled, on="transaction_id", suffixes=("", "_labelled"))
    assert len(merged) == len(labelled) <= len(scores)
    np.testing.assert_array_equal(merged[PROBABILITY].to_numpy(), merged[f"{PROBABILITY}_labelled"].to_numpy())


def test_mlwf_score_runs_the_scoring_pipeline_and_matches_the_direct_run(
    scoring: dict[str, Any], direct: Any, capsys: pytest.CaptureFixture
) -> None:
    out = scoring["tmp"] / "cli" / "scores.parquet"
    code = main(["score", "--local", "--model", f"{MODEL}@champion", "--data", str(scoring["data"]), "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sha(out) == sha(direct[1]), "the pipeline's scores differ from the direct run's on the same input and model"
    assert sha(out.with_name("scores.quarantine.parquet")) == sha(Path(direct[0].quarantine_uri))
    assert "scored +" in printed and str(out) in printed


@pytest.mark.parametrize(
    "case",
    ["missing feature", "unknown alias", "unknown model", "not a model reference", "spec without its suite", "registry down"],
)
def test_bad_input_exits_2_in_one_line_and_writes_nothing(
    scoring: dict[str, Any], case: str, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, model, spec, expected = scoring["data"], f"{MODEL}@champion", [], ""
    if case == "registry down":  # nothing listens there: the tracking client's error, in one line, not a traceback
        from tests.factories import free_port

        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        expected = "in the registry at http://127.0.0.1:"
    elif case == "spec without its suite":
        from components.core.spec import bundled_spec_path

        copy = scoring["tmp"] / "nosuite" / "transactions.yaml"
        copy.parent.mkdir(exist_ok=True)
        copy.write_text(bundled_spec_path("transactions").read_text())
        spec, expected = ["--dataset", str(copy)], "no validation suite next to the spec"
    elif case == "missing feature":
        data = scoring["tmp"] / "no-amount.csv"
        pd.read_csv(scoring["data"], dtype=str).drop(columns=["amount"]).to_csv(data, index=False)
    else:
        model = {"unknown alias": f"{MODEL}@nobody", "unknown model": "nothing@champion", "not a model reference": "transactions"}[case]
    out = scoring["tmp"] / "bad" / case.replace(" ", "-") / "scores.parquet"
    assert main(["score", "--local", "--model", model, "--data", str(data), "--out", str(out), *spec]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlwf: error: ") and err.count("\n") == 1, err
    assert expected in err if expected else ("'amount'" in err) if case == "missing feature" else (repr(model) in err)
    assert not out.parent.exists(), "a refused run wrote something"
    with pytest.raises(ScoringError):  # the step itself refuses the same input, for a run that skips the preflight
        score_batch(ScoringRequest(model, str(data), str(out), spec[1] if spec else ""), data_stage())
    assert not out.parent.exists()


def test_the_kfp_step_scores_a_directory_into_its_output_artifacts(scoring: dict[str, Any], direct: Any) -> None:
    """score_op's body with no out_uri: a directory of two files in, the step's artifacts out, rows in file order."""
    from kfp.dsl import Dataset, Markdown

    from components.scoring.step import score_step

    source = pd.read_csv(scoring["data"], dtype=str, keep_default_na=False, na_values=[""])
    folder = scoring["tmp"] / "parts"
    folder.mkdir()
    half = len(source) // 2
    source.iloc[:half].to_csv(folder / "part-0.csv", index=False)
    source.iloc[half:].to_csv(folder / "part-1.csv", index=False)
    out = scoring["tmp"] / "artifacts"
    scores, quarantine, summary = (
        cls(name=n, uri=str(out / n), metadata={}) for cls, n in ((Dataset, "scores"), (Dataset, "quarantine"), (Markdown, "summary"))
    )
    scored = score_step(ScoringRequest(f"{MODEL}@champion", str(folder), ""), data_stage(), scores, quarantine, summary)
    got, want = pd.read_parquet(scores.path), pd.read_parquet(direct[1])
    assert scored == len(got) == len(want) and scores.metadata["rows_in"] == len(source)
    assert list(got["transaction_id"]) == list(want["transaction_id"])  # part-0's rows, then part-1's: the input order
    np.testing.assert_array_equal(got[PROBABILITY].to_numpy(), want[PROBABILITY].to_numpy())
    bad = pd.read_parquet(quarantine.path)
    assert len(bad) == direct[0].quarantined and set(bad["source"]) <= {str(folder / "part-0.csv"), str(folder / "part-1.csv")}
    assert f"scored {len(got):,} + quarantined {len(bad):,}" in Path(summary.path).read_text()
    # the artifacts are the only copies: nothing written beside them (a cluster's pod would never upload it)
    assert sorted(p.name for p in out.iterdir()) == ["quarantine", "scores", "summary"]
    assert scores.metadata["uri"] == scores.uri and quarantine.metadata["uri"] == quarantine.uri
