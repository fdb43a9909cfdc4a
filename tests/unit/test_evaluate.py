"""The evaluate step on real model bundles and small synthetic data: each gate branch, the baseline,
the report, the model card and the registry's aliases. Nothing here mocks the metric code: every
bundle is trained or exported by the project's own code and scored by the evaluation itself.

The "bad" models are honest programs: one trained on shuffled labels, one that does the good model's
work plus a chain of real matrix products, one that scores a single country at random.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Markdown, Metrics, Model
from torch import nn

from components.core import bundle as bundle_lib
from components.core import tracking
from components.core.settings import get_settings
from components.evaluation.baseline import fit_baseline
from components.evaluation.evaluate import GatePolicy, classification_metrics, evaluate, permutation_importance
from components.evaluation.policy import SlicePolicy
from components.evaluation.report import full_card, report_html
from components.training.train import TrainParams, build_bundle, train_model

NUMERIC = ["x1", "x2"]
CATEGORICAL = ["country", "channel"]
COUNTRIES, COUNTRY_P = ["A", "B", "C", "D"], [0.5, 0.3, 0.18, 0.02]  # D is tiny: reported, never gated
TRAINING_CARD = (
    "# Model card: synth\n\n## Intended use\nTests.\n\n## Evaluation\nSee the evaluation report.\n\n## Limitations\nSynthetic.\n"
)
# Latency is not the subject of most tests: a generous budget keeps a loaded CI machine from failing them.
RELAXED = GatePolicy(min_roc_auc=0.7, max_p99_latency_ms=100.0, max_regression={}, baseline=None, importance_repeats=0)
SLICED = SlicePolicy(attributes=("country", "channel"), min_rows=100, min_positives=20, max_gap={"roc_auc": 0.15})


def synthetic(n: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.lognormal(size=n)  # no signal: its importance must come out near zero
    country = rng.choice(COUNTRIES, n, p=COUNTRY_P)
    channel = rng.choice(["web", "store"], n, p=[0.4, 0.6])
    logit = 2.2 * x1 + 0.8 * (channel == "web") - 1.2
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype("int8")
    x2[::40] = np.nan
    return pd.DataFrame(
        {
            "event_timestamp": pd.date_range("2026-01-01", periods=n, freq="min", tz="UTC"),
            "x1": x1,
            "x2": x2,
            "country": country,
            "channel": channel,
            "label": y,
        }
    )


class SlowProgram(nn.Module):
    """The good model's scores, after a chain of real 512x512 matrix products: the same accuracy, far slower per row."""

    def __init__(self, inner: nn.Module, steps: int = 12, width: int = 512) -> None:
        super().__init__()
        self.inner, self.steps = inner, steps
        self.register_buffer("weight", torch.randn(width, width, generator=torch.Generator().manual_seed(0)) / width**0.5)

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(numeric[:1, :1] + self.weight)
        for _ in range(self.steps):
            h = torch.tanh(h @ self.weight)
        return self.inner(numeric, codes) + 0.0 * h.mean()  # the work is in the graph; the scores are unchanged


class SliceBiasedProgram(nn.Module):
    """The good model everywhere except one category, where it scores by an unrelated feature (x2): random there."""

    def __init__(self, inner: nn.Module, column: int, code: int) -> None:
        super().__init__()
        self.inner, self.column, self.code = inner, column, code

    def forward(self, numeric: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        good = self.inner(numeric, codes)
        unrelated = torch.sigmoid(torch.nan_to_num(torch.log(numeric[:, 1].abs() + 1e-3)))
        return torch.where(codes[:, self.column] == self.code, unrelated, good)


@pytest.fixture(scope="module")
def data():
    df = synthetic()
    cut = int(len(df) * 0.7)  # time split: the latest 30% is the held-out period
    return df.iloc[:cut].reset_index(drop=True), df.iloc[cut:].reset_index(drop=True)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, data):
    """Real bundles: a good model, one trained on shuffled labels, a slow one and two slice-biased ones."""
    train, _ = data
    root = tmp_path_factory.mktemp("bundles")
    params = TrainParams(epochs=12, batch_size=128, seed=3)
    program, vocab, result = train_model(train, NUMERIC, CATEGORICAL, params)
    shuffled = train.assign(label=np.random.default_rng(1).permutation(train["label"].to_numpy()))
    worse_program, worse_vocab, worse_result = train_model(shuffled, NUMERIC, CATEGORICAL, params)
    country = CATEGORICAL.index("country")
    made = {
        "good": (program, vocab, result),
        "worse": (worse_program, worse_vocab, worse_result),
        "slow": (SlowProgram(program).eval(), vocab, result),
        "biased": (SliceBiasedProgram(program, country, vocab["country"].index("C") + 1).eval(), vocab, result),
        "biased_tiny": (SliceBiasedProgram(program, country, vocab["country"].index("D") + 1).eval(), vocab, result),
    }
    out = {}
    for name, (prog, voc, res) in made.items():
        build_bundle(root / name, prog, voc, res, train, NUMERIC, CATEGORICAL, {"dataset": "synth", "model_name": name}, TRAINING_CARD)
        out[name] = str(root / name)
    return out


def test_a_good_first_model_passes_every_check(bundles, data):
    _, test = data
    policy = replace(RELAXED, min_pr_auc=0.5, min_f1=0.5, max_ece=0.3, slices=SLICED)
    ev = evaluate(bundles["good"], test, policy, None, None)
    assert ev.passed, ev.reasons
    assert {c.name for c in ev.checks} == {
        "min_roc_auc",
        "min_pr_auc",
        "min_f1",
        "max_ece",
        "max_p99_latency_ms",
        "slice_gap.country.roc_auc",
        "slice_gap.channel.roc_auc",
        "threshold_objective",
    }
    assert ev.metrics["roc_auc"] > 0.85 and ev.metrics["rows"] == len(test)
    good = bundle_lib.load(bundles["good"])
    direct = classification_metrics(
        test["label"].to_numpy(), good.predict_proba(bundle_lib.columns_from_frame(test, good.feature_names)), good.threshold
    )
    assert ev.metrics["roc_auc"] == direct["roc_auc"] and ev.metrics["f1"] == direct["f1"]


def test_a_deliberately_worse_model_fails_with_the_right_reason(bundles, data):
    _, test = data
    policy = replace(RELAXED, min_roc_auc=0.8)
    good = evaluate(bundles["good"], test, policy, None, None)
    ev = evaluate(bundles["worse"], test, policy, None, None)
    assert good.passed, good.reasons
    assert not ev.passed
    assert len(ev.reasons) == 1 and ev.reasons[0].startswith("roc_auc 0.") and "is below the minimum 0.8000" in ev.reasons[0]
    # Trained on shuffled labels, it learned nothing from them; what ranking it has comes from its random
    # initial weights happening to lean on x1, the informative feature.
    assert ev.metrics["roc_auc"] < good.metrics["roc_auc"] - 0.1


def test_a_good_but_slow_model_fails_on_latency_only(bundles, data):
    _, test = data
    policy = replace(RELAXED, max_p99_latency_ms=2.0, latency_rows=10)
    good = evaluate(bundles["good"], test, replace(policy, max_p99_latency_ms=100.0), None, None)
    slow = evaluate(bundles["slow"], test, policy, None, None)
    # the same scores (so the same accuracy), and the time is measured on the bundle, one row at a time
    assert slow.metrics["roc_auc"] == good.metrics["roc_auc"] and slow.metrics["f1"] == good.metrics["f1"]
    assert not slow.passed
    assert len(slow.reasons) == 1 and slow.reasons[0].startswith("per-row p99 latency") and "exceeds the budget 2.0 ms" in slow.reasons[0]


def test_a_model_biased_against_one_slice_fails_the_slice_check(bundles, data):
    _, test = data
    policy = replace(RELAXED, slices=SLICED)
    ev = evaluate(bundles["biased"], test, policy, None, None)
    assert ev.metrics["roc_auc"] >= 0.7  # the overall number alone would have let it through
    assert not ev.passed and len(ev.reasons) == 1
    assert ev.reasons[0].startswith("roc_auc gap across country slices is") and " vs C 0." in ev.reasons[0]
    by_value = {r["value"]: r for r in ev.slices if r["attribute"] == "country"}
    assert by_value["C"]["gated"] and by_value["C"]["roc_auc"] < 0.65 < 0.8 < by_value["A"]["roc_auc"]
    assert not by_value["D"]["gated"] and by_value["D"]["rows"] < 100


def test_a_tiny_slice_is_reported_but_not_gated(bundles, data):
    _, test = data
    ev = evaluate(bundles["biased_tiny"], test, replace(RELAXED, slices=SLICED), None, None)
    assert ev.passed, ev.reasons
    assert any(n.startswith("reported, not gated (too small): country=D") for n in ev.notes)
    assert [r["value"] for r in ev.slices if r["attribute"] == "country" and not r["gated"]] == ["D"]


def test_a_slice_attribute_the_data_lacks_is_an_error(bundles, data):
    _, test = data
    policy = replace(RELAXED, slices=SlicePolicy(attributes=("region",), max_gap={"roc_auc": 0.1}))
    with pytest.raises(ValueError, match="slice attribute 'region' named by the gate policy is not a column"):
        evaluate(bundles["good"], test, policy, None, None)


def test_baseline_is_trained_on_the_same_split_and_reported_with_its_latency(bundles, data):
    train, test = data
    ev = evaluate(bundles["good"], test, replace(RELAXED, baseline="logistic_regression"), None, None, train=train)
    assert ev.baseline is not None and ev.baseline["kind"] == "logistic_regression"
    assert ev.baseline["roc_auc"] > 0.85 and ev.baseline["rows"] == len(test)  # the signal is linear: LR finds it
    assert ev.baseline["latency_p99_ms"] > 0 and ev.baseline["latency_p50_ms"] <= ev.baseline["latency_p99_ms"]
    assert ev.passed  # reported beside the model, never gating
    trees = fit_baseline(train, NUMERIC, CATEGORICAL, "hist_gradient_boosting")
    p = trees.predict_proba({"x1": [3.0, -3.0, None], "x2": [1.0, None, 1.0], "country": ["A", "never-seen", None], "channel": ["web"] * 3})
    assert p[0] > 0.5 > p[1] and 0 <= p[2] <= 1


def test_permutation_importance_finds_the_signal(bundles, data):
    _, test = data
    good = bundle_lib.load(bundles["good"])
    ranked = permutation_importance(
        good.predict_proba, bundle_lib.columns_from_frame(test, good.feature_names), test["label"].to_numpy(), repeats=2
    )
    assert ranked[0]["feature"] == "x1" and float(ranked[0]["mean"]) > 0.2
    assert abs(float({r["feature"]: r for r in ranked}["x2"]["mean"])) < 0.02


def test_report_and_model_card_read_the_same_verdict(bundles, data):
    train, test = data
    policy = replace(RELAXED, slices=SLICED, baseline="logistic_regression", importance_repeats=1)
    ev = evaluate(bundles["biased"], test, policy, None, None, train=train)
    page = report_html(ev, "synth", "7")
    assert "synth v7: gate FAIL" in page and "roc_auc gap across country slices" in page
    assert page.count("data:image/png;base64,") == 3  # trade-off, curves, importance
    assert "baseline (logistic_regression)" in page and "<h3>By country</h3>" in page
    card = full_card(TRAINING_CARD, ev, "synth", "7")
    assert card.startswith("# Model card: synth") and "## Intended use" in card and "## Limitations\nSynthetic." in card
    assert "See the evaluation report." not in card  # the placeholder is replaced by the measured section
    assert "## Evaluation (gate: FAIL)" in card and "| country | C |" in card and "**FAIL**: roc_auc gap" in card


def test_the_bias_audit_gates_like_any_check_and_the_report_shows_it(bundles, data):
    """A model that scores one country at random: its equalized-odds difference is large, and a bound refuses it;
    the good model's passes the same bound. The audit and the chosen model's attributions reach report and card."""
    from components.evaluation.governance import add_attributions

    train, test = data
    policy = replace(RELAXED, fairness_min_rows=100, fairness_bounds={"equalized_odds_difference": 0.2})
    good = evaluate(bundles["good"], test, policy, None, None, train=train, sensitive=["country", "region"])
    biased = evaluate(bundles["biased"], test, policy, None, None, train=train, sensitive=["country"])
    check = next(c for c in good.checks if c.name == "bias.equalized_odds_difference[country]")
    assert check.passed and check.limit == 0.2 and good.passed, good.reasons
    assert any("do not carry the sensitive attribute(s) ['region']" in n for n in good.notes)
    bad = next(c for c in biased.checks if c.name == "bias.equalized_odds_difference[country]")
    assert not bad.passed and bad.value > 0.2 and not biased.passed
    groups = biased.fairness["attributes"]["country"]["groups"]
    assert {"A", "B", "C", "D"} <= {g["group"] if isinstance(g, dict) else g for g in groups}
    add_attributions(good, bundles["good"], test, rows=40)
    assert next(iter(good.attributions)) == "x1"  # the signal, first; x2 carries none
    page = report_html(biased, "synth", "8")
    assert "<h2>Bias audit</h2>" in page and "equalized" in page
    card = full_card(TRAINING_CARD, good, "synth", "7")
    assert "### Bias audit" in card and "- country: demographic-parity difference" in card


# --- the champion and the registry (a real MLflow on SQLite in a temporary directory) -------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    state = tmp_path_factory.mktemp("state")
    mp.setenv("MLWF_STATE_DIR", str(state))
    mp.setenv("MLWF_PROFILE", "local")
    for var in ("MLFLOW_TRACKING_URI", "MLWF_MODEL_NAME"):
        mp.delenv(var, raising=False)
    client = tracking.configure(get_settings())
    yield client
    mp.undo()


def register(client, name: str, bundle_dir: str) -> str:
    """What training does: a run with the bundle as artifacts, then a registered version pointing at it."""
    import mlflow

    with mlflow.start_run(run_name=f"test-{name}") as run:
        mlflow.log_artifacts(bundle_dir, artifact_path="bundle")
    return tracking.register(client, name, run.info.run_id, f"{run.info.artifact_uri}/bundle", {}, "test")


def test_the_very_first_model_has_no_champion_to_beat(registry, bundles, data):
    _, test = data
    version = register(registry, "first_model", bundles["good"])
    ev = evaluate(bundles["good"], test, replace(RELAXED, max_regression={"roc_auc": 0.0}), "first_model", version, client=registry)
    assert ev.passed and ev.champion is None
    assert "no champion yet: judged on the absolute thresholds only" in ev.notes
    assert not [c for c in ev.checks if c.name.startswith("champion")]


def test_champion_regression_uses_the_champions_score_on_the_same_test_set(registry, bundles, data):
    _, test = data
    champion = register(registry, "regress_model", bundles["good"])
    registry.set_registered_model_alias("regress_model", "champion", champion)
    candidate = register(registry, "regress_model", bundles["biased"])
    policy = replace(RELAXED, max_regression={"roc_auc": 0.01})
    ev = evaluate(bundles["biased"], test, policy, "regress_model", candidate, client=registry)
    # the champion was scored here, on these rows, by its own bundle from the registry
    good = bundle_lib.load(bundles["good"])
    expected = classification_metrics(
        test["label"].to_numpy(), good.predict_proba(bundle_lib.columns_from_frame(test, good.feature_names)), good.threshold
    )
    assert ev.champion["version"] == champion and ev.champion["roc_auc"] == expected["roc_auc"]
    assert not ev.passed and ev.reasons == [
        f"roc_auc {ev.metrics['roc_auc']:.4f} regresses against champion v{champion} ({expected['roc_auc']:.4f}) by more than 0.01"
    ]
    # on a different test period the champion's score is recomputed there, not reused
    later = evaluate(bundles["biased"], test.iloc[len(test) // 2 :], policy, "regress_model", candidate, client=registry)
    assert later.champion["rows"] == len(test) - len(test) // 2 and later.champion["roc_auc"] != ev.champion["roc_auc"]
    # within a wide tolerance the same candidate passes: the champion check is what failed it
    assert evaluate(
        bundles["biased"], test, replace(policy, max_regression={"roc_auc": 0.5}), "regress_model", candidate, client=registry
    ).passed


def _artifact(cls, tmp: Path, name: str):
    return cls(name=name, uri=str(tmp / name), metadata={})


def test_evaluate_step_records_the_verdict_and_moves_only_the_challenger(registry, bundles, data, tmp_path):
    """The step as Kubeflow runs it, on kfp artifacts with local paths: policy beside the spec, aliases, MLflow records."""
    import mlflow

    from components.evaluation.step import evaluate_step

    train, test = data
    spec = tmp_path / "synth.yaml"
    spec.write_text("name: synth\nlabel: {column: y, positive: 1}\nfeatures:\n  numeric: [x1, x2]\n  categorical: [country, channel]\n")
    (tmp_path / "synth.policy.yaml").write_text(
        "version: 4\ndataset: synth\nthresholds: {min_roc_auc: 0.7}\nlatency: {max_p99_ms: 100}\n"
        "slices: {attributes: [country, channel], min_rows: 100, min_positives: 20, max_gap: {roc_auc: 0.15}}\n"
        "baseline: {kind: logistic_regression}\nimportance: {repeats: 1, rows: 500}\n"
    )
    train_set, test_set = _artifact(Dataset, tmp_path, "train"), _artifact(Dataset, tmp_path, "test")
    train.to_parquet(train_set.path)
    test.to_parquet(test_set.path)

    def run(bundle: str, version: str, **overrides: float) -> tuple[bool, dict]:
        out = tmp_path / f"out-{version}-{len(overrides)}"
        out.mkdir()
        arts = {
            n: _artifact(c, out, n)
            for n, c in (("metrics", Metrics), ("roc", ClassificationMetrics), ("report", HTML), ("model_card", Markdown))
        }
        model = Model(name="model", uri=bundle, metadata={})
        knobs = {"min_roc_auc": -1.0, "max_p99_latency_ms": -1.0, "max_regression": -1.0, **overrides}
        passed = evaluate_step(model, train_set, test_set, "synth_step", version, str(spec), "", **knobs, **arts)
        return passed, arts

    good = register(registry, "synth_step", bundles["good"])
    passed, arts = run(bundles["good"], good)
    assert passed is True
    assert str(registry.get_model_version_by_alias("synth_step", "challenger").version) == good
    assert tracking.alias_version(registry, "synth_step", "champion") is None  # only a deploy moves the champion
    tags = registry.get_model_version("synth_step", good).tags
    assert tags["mlwf.gate"] == "passed" and tags["mlwf.gate_reasons"] == "none"
    assert tags["mlwf.gate_policy"].startswith(str(tmp_path / "synth.policy.yaml") + " v4 sha256:")
    assert arts["metrics"].metadata["roc_auc"] > 0.85 and "baseline.roc_auc" in arts["metrics"].metadata
    assert "slice_gap.channel.roc_auc" in arts["metrics"].metadata
    assert {"confidenceMetrics", "confusionMatrix"} <= set(arts["roc"].metadata)
    card = Path(arts["model_card"].path).read_text()
    assert card.startswith("# Model card: synth") and "## Evaluation (gate: PASS)" in card
    run_id = registry.get_model_version("synth_step", good).run_id
    assert mlflow.artifacts.load_text(f"runs:/{run_id}/model_card.md") == card
    assert "gate PASS" in Path(arts["report"].path).read_text()

    # a failing version: its reasons are recorded, and no alias moves
    worse = register(registry, "synth_step", bundles["worse"])
    passed, arts = run(bundles["worse"], worse)
    assert passed is False
    assert str(registry.get_model_version_by_alias("synth_step", "challenger").version) == good
    tags = registry.get_model_version("synth_step", worse).tags
    assert tags["mlwf.gate"] == "failed" and "is below the minimum 0.7000" in tags["mlwf.gate_reasons"]
    gate = json.loads(mlflow.artifacts.load_text(f"runs:/{registry.get_model_version('synth_step', worse).run_id}/evaluation/gate.json"))
    assert gate["passed"] is False and "; ".join(gate["reasons"]) == tags["mlwf.gate_reasons"]
    assert gate["policy"]["version"] == 4 and len(gate["policy"]["sha256"]) == 64
    assert arts["report"].metadata["passed"] is False

    # an explicit override forces the branch (what the integration test does with min_roc_auc)
    passed, _ = run(bundles["good"], good, min_roc_auc=1.01)
    assert passed is False and "below the minimum 1.0100" in registry.get_model_version("synth_step", good).tags["mlwf.gate_reasons"]
