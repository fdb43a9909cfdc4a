"""The bundle is also an MLflow pyfunc model: registered, aliased and loaded by `models:/<name>@champion`."""

import json

import numpy as np
import pandas as pd
import pytest

from components.core import bundle as bundle_lib
from components.core.pyfunc import verify_mlflow_files
from components.training.pyfunc import write_mlflow_model
from components.training.train import TrainParams, build_bundle, train_model
from tests.factories import synthetic

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["colour"]


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    """A small bundle as the train step seals it, then made an MLflow model (the call the training run makes)."""
    df = synthetic(1500, seed=3)
    program, vocab, result = train_model(df, NUMERIC, CATEGORICAL, TrainParams(epochs=4, batch_size=64, seed=1))
    root = tmp_path_factory.mktemp("pyfunc") / "bundle"
    build_bundle(root, program, vocab, result, df, NUMERIC, CATEGORICAL, {"dataset": "synthetic"}, "# card\n")
    write_mlflow_model(root, df)
    return root, df


def _rows(df: pd.DataFrame) -> pd.DataFrame:
    rows = df[NUMERIC + CATEGORICAL].head(300).copy()
    rows.loc[rows.index[:3], "x1"] = np.nan  # missing values go through as the server takes null
    rows.loc[rows.index[3], "colour"] = None
    rows.loc[rows.index[4], "colour"] = "never-seen"
    return rows


def test_registered_bundle_loads_as_champion_and_predicts_what_the_bundle_predicts(tmp_path, monkeypatch, sealed):
    import mlflow
    from mlflow.tracking import MlflowClient

    from components.core import tracking

    root, df = sealed
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # set_tracking_uri exports it; monkeypatch restores it afterwards
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("pyfunc", artifact_location=(tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:  # as components/training/run.py logs and registers
        mlflow.log_artifacts(str(root), artifact_path="bundle")
    version = tracking.register(client, "pyfunc_classifier", run.info.run_id, f"{run.info.artifact_uri}/bundle", {}, "test")
    client.set_registered_model_alias("pyfunc_classifier", "champion", version)

    model = mlflow.pyfunc.load_model("models:/pyfunc_classifier@champion")
    rows = _rows(df)
    predicted = model.predict(rows)
    expected = bundle_lib.load(root).predict_proba(bundle_lib.columns_from_frame(rows, NUMERIC + CATEGORICAL))
    assert list(predicted.columns) == ["probability", "label"]
    np.testing.assert_allclose(predicted["probability"].to_numpy(), expected, rtol=0, atol=1e-6)
    threshold = json.loads((root / bundle_lib.SIGNATURE).read_text())["threshold"]
    assert (predicted["label"].to_numpy() == (expected >= threshold)).all()

    inputs = model.metadata.get_input_schema()
    assert [(c.name, c.type.name) for c in inputs.inputs] == [("x1", "double"), ("x2", "double"), ("colour", "string")]
    assert [c.name for c in model.metadata.get_output_schema().inputs] == ["probability", "label"]
    local = mlflow.artifacts.download_artifacts("models:/pyfunc_classifier@champion", dst_path=str(tmp_path / "dl"))
    example = mlflow.models.Model.load(local).load_input_example(local)
    assert list(example.columns) == NUMERIC + CATEGORICAL and 0 < len(example) <= 5
    assert not example.isna().any().any()  # complete rows: strict JSON (no NaN) in the registry's example
    assert model.predict(example)["probability"].between(0, 1).all()  # the stored example is a valid request

    with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['colour'\]"):
        model.predict(rows.drop(columns=["colour"]))


def test_mlflow_files_are_sealed_with_the_bundle(tmp_path, sealed):
    import shutil

    root, _ = sealed
    digests = bundle_lib.verify(root)  # the core check still passes
    assert {"MLmodel", "input_example.json", "serving_input_example.json"} <= set(digests)
    assert set(verify_mlflow_files(root)) == set(digests)
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    mlmodel = copy / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace('"type": "string"', '"type": "double"'))  # loosen the schema after sealing
    bundle_lib.verify(copy)  # core files untouched
    with pytest.raises(bundle_lib.BundleError, match="MLmodel does not match its sha256"):
        verify_mlflow_files(copy)


def test_the_loader_names_missing_columns_and_refuses_other_inputs(sealed):
    from components.core.pyfunc import BundleModel

    root, df = sealed
    model = BundleModel(bundle_lib.load(root))  # what MLflow wraps; reached directly when a caller skips the schema
    with pytest.raises(bundle_lib.BundleError, match=r"missing feature column\(s\) \['x2'\]"):
        model.predict(df[["x1", "colour"]])
    with pytest.raises(bundle_lib.BundleError, match="expected a pandas DataFrame"):
        model.predict(np.zeros((2, 3)))


def test_an_example_without_the_features_is_refused_before_anything_is_written(tmp_path, sealed):
    import shutil

    root, df = sealed
    copy = tmp_path / "b"
    shutil.copytree(root, copy)
    before = (copy / bundle_lib.MANIFEST).read_text()
    with pytest.raises(bundle_lib.BundleError, match=r"input example lacks feature column\(s\) \['colour'\]"):
        write_mlflow_model(copy, df.drop(columns=["colour"]))
    assert (copy / bundle_lib.MANIFEST).read_text() == before
