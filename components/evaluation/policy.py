"""The gate policy: what a model version must show on the held-out latest period before it may serve.

One YAML file per model, next to its dataset spec (`components/datasets/<name>.policy.yaml`), reviewed
in diffs like code and resolved like specs: a bundled name, a local path or an s3:// URI. The pipeline's
`gate_policy` parameter names the file; empty means "the policy next to the dataset spec". A few pipeline
parameters (`min_roc_auc`, `max_p99_latency_ms`, `max_regression`) override single values when set to a
non-negative number, so tests and one-off runs can force each branch without editing the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from components.core import storage
from components.core.candidates import check_families

# Metrics a policy may name, and which way is better. Slices and champion comparisons use these names.
HIGHER_IS_BETTER = ("roc_auc", "pr_auc", "f1", "precision", "recall", "accuracy")
LOWER_IS_BETTER = ("ece", "brier", "fpr")
BASELINE_KINDS = ("logistic_regression", "hist_gradient_boosting")
FAIRNESS_METRICS = ("demographic_parity_difference", "equalized_odds_difference")
POLICY_SUFFIX = ".policy.yaml"
UNSET = -1.0  # pipeline parameters cannot be None under kfp.local: a negative override means "use the file"


class PolicyError(ValueError):
    """The gate policy file is missing, malformed or does not fit the dataset."""


@dataclass(frozen=True)
class SlicePolicy:
    attributes: tuple[str, ...] = ()
    min_rows: int = 200  # smaller slices are reported, never gated: their metrics are noise
    min_positives: int = 20  # a slice's ROC-AUC on fewer positives moves by +-0.1 from sampling alone
    max_gap: dict[str, float] = field(default_factory=dict)  # metric -> largest allowed best-to-worst difference


@dataclass(frozen=True)
class GatePolicy:
    min_roc_auc: float | None = 0.75
    min_pr_auc: float | None = None
    min_f1: float | None = None
    max_ece: float | None = None
    max_brier: float | None = None
    # The decision threshold's objective (chosen by training on calibrated scores): None = best F1, else the cost
    # of each outcome per row, {"fp": .., "fn": .., "tp": .., "tn": ..}, every cost >= 0.
    costs: dict[str, float] | None = None
    max_p99_latency_ms: float = 5.0  # per-row scoring on the CPU: the production latency budget
    latency_rows: int = 200  # rows timed one at a time
    max_regression: dict[str, float] = field(default_factory=lambda: {"roc_auc": 0.01})  # drop allowed vs the champion
    slices: SlicePolicy = field(default_factory=SlicePolicy)
    baseline: str | None = "logistic_regression"  # trained on the same split and reported beside the model
    # Gated against the baseline on the same test rows: largest drop allowed per metric (empty: reported only).
    baseline_tolerance: dict[str, float] = field(default_factory=dict)
    importance_repeats: int = 3  # permutation feature importance, for the report
    importance_rows: int = 5000
    # The model families the train step tries; the evaluate step deploys the best that passes every check, the
    # cheaper one when its lead is within noise (components/evaluation/selection.py).
    candidates: tuple[str, ...] = ("network", "lightgbm", "logistic")
    # The bias audit over the spec's sensitive attributes (components/evaluation/fairness.py): groups with fewer
    # test rows are reported, not gated; bounds on demographic_parity_difference / equalized_odds_difference gate.
    fairness_min_rows: int = 200
    fairness_bounds: dict[str, float] = field(default_factory=dict)
    version: int = 0
    dataset: str | None = None
    source: str = "defaults"  # where the policy came from (file, plus the overrides applied)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """sha256 of the effective policy (source excluded): recorded with every verdict."""
        body = {k: v for k, v in asdict(self).items() if k != "source"}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


_TOP = {
    "version",
    "dataset",
    "description",
    "thresholds",
    "latency",
    "slices",
    "champion",
    "baseline",
    "importance",
    "decision",
    "candidates",
    "fairness",
}
COST_KEYS = ("fp", "fn", "tp", "tn")


def _keys(where: str, given: Any, allowed: set[str]) -> dict[str, Any]:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise PolicyError(f"{where}: expected a mapping, got {type(given).__name__}")
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return given


def _number(where: str, value: Any, lo: float = 0.0, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{where}: expected a number, got {value!r}")
    if value < lo or (hi is not None and value > hi):
        raise PolicyError(f"{where}: {value} is outside [{lo}, {hi if hi is not None else 'inf'}]")
    return float(value)


def _metric_map(where: str, value: Any, allowed: tuple[str, ...]) -> dict[str, float]:
    given = _keys(where, value, set(allowed))
    return {name: _number(f"{where}.{name}", v) for name, v in given.items()}


def parse_policy(data: Any, source: str = "inline") -> GatePolicy:
    """Build a policy from parsed YAML, raising PolicyError that names the offending key."""
    top = _keys("policy", data, _TOP)
    if not top:
        raise PolicyError(f"gate policy {source} is empty")
    version = top.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise PolicyError("version: a positive integer is required (bump it when a threshold changes)")
    thresholds = _keys("thresholds", top.get("thresholds"), {"min_roc_auc", "min_pr_auc", "min_f1", "max_ece", "max_brier"})
    decision = _keys("decision", top.get("decision"), {"costs"})
    latency = _keys("latency", top.get("latency"), {"max_p99_ms", "rows"})
    slices = _keys("slices", top.get("slices"), {"attributes", "min_rows", "min_positives", "max_gap"})
    champion = _keys("champion", top.get("champion"), {"max_regression"})
    baseline = _keys("baseline", top.get("baseline"), {"kind", "max_regression"})
    importance = _keys("importance", top.get("importance"), {"repeats", "rows"})
    fairness = _keys("fairness", top.get("fairness"), {"min_group_rows", "max"})
    attributes = slices.get("attributes") or []
    if not isinstance(attributes, list) or not all(isinstance(a, str) and a for a in attributes):
        raise PolicyError("slices.attributes: expected a list of column names")
    kind = baseline.get("kind", "logistic_regression")
    if kind is not None and kind not in BASELINE_KINDS:
        raise PolicyError(f"baseline.kind: {kind!r} is not one of {list(BASELINE_KINDS)} (or null for none)")
    defaults = GatePolicy()
    given = top.get("candidates", list(defaults.candidates))
    if not isinstance(given, list):
        raise PolicyError(f"candidates: expected a list of model families such as {list(defaults.candidates)}, got {given!r}")
    try:
        candidates = check_families(given)
    except ValueError as err:
        raise PolicyError(str(err)) from None

    def optional(key: str, hi: float) -> float | None:
        return None if thresholds.get(key) is None else _number(f"thresholds.{key}", thresholds[key], 0.0, hi)

    return GatePolicy(
        min_roc_auc=optional("min_roc_auc", 1.0),
        min_pr_auc=optional("min_pr_auc", 1.0),
        min_f1=optional("min_f1", 1.0),
        max_ece=optional("max_ece", 1.0),
        max_brier=optional("max_brier", 1.0),
        costs=_costs(decision.get("costs")),
        max_p99_latency_ms=_number("latency.max_p99_ms", latency.get("max_p99_ms", defaults.max_p99_latency_ms)),
        latency_rows=int(_number("latency.rows", latency.get("rows", defaults.latency_rows), 1)),
        max_regression=_metric_map(
            "champion.max_regression", champion.get("max_regression", {"roc_auc": 0.01}), HIGHER_IS_BETTER + LOWER_IS_BETTER
        ),
        slices=SlicePolicy(
            attributes=tuple(attributes),
            min_rows=int(_number("slices.min_rows", slices.get("min_rows", 200), 1)),
            min_positives=int(_number("slices.min_positives", slices.get("min_positives", 20), 1)),
            max_gap=_metric_map("slices.max_gap", slices.get("max_gap"), HIGHER_IS_BETTER + LOWER_IS_BETTER),
        ),
        baseline=kind,
        baseline_tolerance=_metric_map("baseline.max_regression", baseline.get("max_regression"), HIGHER_IS_BETTER + LOWER_IS_BETTER),
        importance_repeats=int(_number("importance.repeats", importance.get("repeats", 3))),
        importance_rows=int(_number("importance.rows", importance.get("rows", 5000), 1)),
        candidates=candidates,
        fairness_min_rows=int(_number("fairness.min_group_rows", fairness.get("min_group_rows", 200), 1)),
        fairness_bounds=_metric_map("fairness.max", fairness.get("max"), FAIRNESS_METRICS),
        version=version,
        dataset=None if top.get("dataset") is None else str(top["dataset"]),
        source=source,
    )


def _costs(given: Any) -> dict[str, float] | None:
    """decision.costs: a cost matrix (fp and fn required, tp and tn default 0), every entry a finite number >= 0."""
    if given is None:
        return None
    costs = _keys("decision.costs", given, set(COST_KEYS))
    missing = [k for k in ("fp", "fn") if k not in costs]
    if missing:
        raise PolicyError(f"decision.costs: needs both 'fp' and 'fn' (missing {missing})")
    out = {}
    for key in COST_KEYS:
        value = costs.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
            raise PolicyError(f"decision.costs.{key}: {value!r} is not a cost (a finite number >= 0)")
        out[key] = float(value)
    if out["fp"] == 0 and out["fn"] == 0:
        raise PolicyError("decision.costs: fp and fn are both 0, so errors cost nothing and any threshold would do")
    return out


def threshold_objective(policy: GatePolicy) -> str:
    """What training's TrainParams.threshold_objective takes: "f1", or the cost matrix as JSON."""
    return "f1" if policy.costs is None else json.dumps(policy.costs, sort_keys=True)


def bundled_policy_path(name: str) -> Path:
    return Path(str(resources.files("components") / "datasets" / f"{name}{POLICY_SUFFIX}"))


def _beside_spec(dataset_spec: str) -> str | None:
    """The policy file that sits next to a dataset spec, when there is one."""
    if not (storage.is_s3(dataset_spec) or dataset_spec.endswith((".yaml", ".yml")) or "/" in dataset_spec):
        path = bundled_policy_path(dataset_spec)
        return str(path) if path.exists() else None
    stem = dataset_spec.rsplit(".", 1)[0] if dataset_spec.endswith((".yaml", ".yml")) else dataset_spec
    candidate = stem + POLICY_SUFFIX
    return candidate if storage.exists(candidate) else None


def resolve_policy_ref(gate_policy: str, dataset_spec: str) -> str | None:
    """Where the policy lives: the named one (bundled name, path, s3://), else the one beside the spec, else None."""
    ref = (gate_policy or "").strip()
    if not ref:
        return _beside_spec(dataset_spec)
    if storage.is_s3(ref) or ref.endswith((".yaml", ".yml")) or "/" in ref:
        if not storage.exists(ref):
            raise PolicyError(f"gate policy not found: {ref}")
        return ref
    path = bundled_policy_path(ref)
    if not path.exists():
        raise PolicyError(f"no bundled gate policy named {ref!r} (looked for {path.name})")
    return str(path)


def load_policy(ref: str) -> GatePolicy:
    try:
        data = yaml.safe_load(storage.read_bytes(ref))
    except yaml.YAMLError as err:
        raise PolicyError(f"gate policy {ref} is not valid YAML: {err}") from err
    return parse_policy(data, source=ref)


def with_overrides(
    policy: GatePolicy, min_roc_auc: float = UNSET, max_p99_latency_ms: float = UNSET, max_regression: float = UNSET
) -> GatePolicy:
    """Apply the pipeline's explicit overrides (negative = not set); the source records which were applied."""
    changes: dict[str, Any] = {}
    if min_roc_auc is not None and min_roc_auc >= 0:
        changes["min_roc_auc"] = float(min_roc_auc)
    if max_p99_latency_ms is not None and max_p99_latency_ms >= 0:
        changes["max_p99_latency_ms"] = float(max_p99_latency_ms)
    if max_regression is not None and max_regression >= 0:
        # The parameter has always meant the ROC-AUC tolerance; other metrics keep the file's values.
        changes["max_regression"] = {**policy.max_regression, "roc_auc": float(max_regression)}
    if not changes:
        return policy
    shown = {k: (v["roc_auc"] if k == "max_regression" else v) for k, v in changes.items()}
    return replace(policy, source=f"{policy.source} + overrides {shown}", **changes)


def policy_for_run(
    gate_policy: str,
    dataset_spec: str,
    dataset_name: str,
    min_roc_auc: float = UNSET,
    max_p99_latency_ms: float = UNSET,
    max_regression: float = UNSET,
) -> GatePolicy:
    """The effective policy of a pipeline run: the file (or the defaults when the dataset has none) plus overrides."""
    ref = resolve_policy_ref(gate_policy, dataset_spec)
    policy = GatePolicy(source="defaults (no policy file beside the dataset spec)") if ref is None else load_policy(ref)
    if policy.dataset is not None and policy.dataset != dataset_name:
        raise PolicyError(f"gate policy {policy.source} is for dataset {policy.dataset!r}, not {dataset_name!r}")
    return with_overrides(policy, min_roc_auc, max_p99_latency_ms, max_regression)
