"""The production-readiness checklist, executable: each item judged on gathered evidence, blocking or advisory by policy.

Pure functions: `evidence` (a JSON-ready dict that components/governance/evidence.py gathers from MLflow, the state
store and the repository's files) in, one `ItemResult` per item out; `assess` applies the readiness policy (which
items block). Nothing here reads a file or a registry, so every pass and fail is unit-tested on fabricated evidence.

Each item states its evidence (a link, a file, a number) whether it passes or not: a reviewer reads why, not only
the verdict. Missing evidence fails the item: a checklist that passes what it could not see proves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from components.governance.scan import is_root

ITEMS = (
    "data_validated",
    "lineage",
    "reproducible",
    "gate",
    "explanations",
    "privacy",
    "model_card",
    "monitoring",
    "rollback",
    "images",
    "secrets",
)
TITLES = {
    "data_validated": "Data validated, quarantine under its limit",
    "lineage": "Lineage complete",
    "reproducible": "Reproducible",
    "gate": "Gate passed",
    "explanations": "Explanations served",
    "privacy": "No personal data in logs or artifacts",
    "model_card": "Model card present",
    "monitoring": "Monitoring in place, with alert rules",
    "rollback": "A rollback target exists",
    "images": "Images non-root and pinned by digest",
    "secrets": "No secret values in the compiled packages",
}
SEVERITIES = ("blocking", "advisory")
GATE_KINDS = ("baseline", "champion", "calibration", "latency", "slices", "bias")
BIAS_METRICS = ("demographic_parity_difference", "equalized_odds_difference")


class ReadinessError(ValueError):
    """A readiness policy or reference that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class ReadinessPolicy:
    severity: dict[str, str]  # item -> blocking | advisory (after the profile's overrides)
    gate_require: tuple[str, ...] = GATE_KINDS
    monitor_max_age_hours: float = 48.0
    version: int = 0
    source: str = "defaults"
    sha256: str = ""


@dataclass
class ItemResult:
    item: str
    passed: bool
    detail: str  # one sentence: why it passed or failed
    evidence: list[str] = field(default_factory=list)  # links, files, numbers
    severity: str = "blocking"

    @property
    def title(self) -> str:
        return TITLES.get(self.item, self.item)

    @property
    def status(self) -> str:
        return "PASS" if self.passed else ("FAIL" if self.severity == "blocking" else "WARN")


@dataclass
class Assessment:
    model: str
    version: str
    ref: str
    items: list[ItemResult]
    policy: ReadinessPolicy
    generated_at: str
    links: dict[str, str] = field(default_factory=dict)  # evaluation report, run, pipeline run

    @property
    def blocking_failures(self) -> list[ItemResult]:
        return [r for r in self.items if not r.passed and r.severity == "blocking"]

    @property
    def ready(self) -> bool:
        return not self.blocking_failures

    def record(self) -> dict[str, Any]:
        """The JSON record: verdict, each item with its evidence, the policy that decided, the links."""
        return {
            "format": "mlwf-readiness/1",
            "model": self.model,
            "version": self.version,
            "ref": self.ref,
            "ready": self.ready,
            "blocking_failures": [r.item for r in self.blocking_failures],
            "advisory_failures": [r.item for r in self.items if not r.passed and r.severity == "advisory"],
            "generated_at": self.generated_at,
            "items": [{**asdict(r), "title": r.title, "status": r.status} for r in self.items],
            "policy": asdict(self.policy),
            "links": self.links,
        }


# --- the policy ---------------------------------------------------------------------------------------------


def parse_policy(data: Any, source: str = "inline", profile: str = "local", raw: bytes = b"") -> ReadinessPolicy:
    """A readiness policy from its YAML document; `profile` applies the `cluster:` overrides. One-line errors."""
    if not isinstance(data, dict):
        raise ReadinessError(f"readiness policy {source}: expected a mapping at the top")
    unknown = sorted(set(data) - {"version", "items", "cluster", "gate", "monitoring"})
    if unknown:
        raise ReadinessError(f"readiness policy {source}: unknown key(s) {unknown}")
    severity = {item: "blocking" for item in ITEMS}  # an item the file forgets blocks: the safe side
    for where, overrides in (("items", data.get("items")), ("cluster", data.get("cluster") if profile == "cluster" else None)):
        for item, value in (overrides or {}).items():
            if item not in ITEMS:
                raise ReadinessError(f"readiness policy {source}: {where}.{item} is not an item; the items are {list(ITEMS)}")
            if value not in SEVERITIES:
                raise ReadinessError(f"readiness policy {source}: {where}.{item} must be blocking or advisory, not {value!r}")
            severity[item] = value
    require = tuple((data.get("gate") or {}).get("require", GATE_KINDS))
    wrong = sorted(set(require) - set(GATE_KINDS))
    if wrong:
        raise ReadinessError(f"readiness policy {source}: gate.require has unknown kind(s) {wrong}; known: {list(GATE_KINDS)}")
    age = float((data.get("monitoring") or {}).get("max_age_hours", 48.0))
    return ReadinessPolicy(
        severity=severity,
        gate_require=require,
        monitor_max_age_hours=age,
        version=int(data.get("version", 0)),
        source=f"{source} ({profile})",
        sha256=hashlib.sha256(raw).hexdigest() if raw else "",
    )


# --- the items ----------------------------------------------------------------------------------------------


def _missing(*pairs: tuple[str, Any]) -> list[str]:
    return [name for name, value in pairs if value in (None, "", [], {})]


def check_data(ev: Mapping[str, Any]) -> ItemResult:
    v = ev.get("validation")
    if not v:
        where = ev.get("validation_path") or "the state store"
        return ItemResult("data_validated", False, f"no validation record for the training data ({where})", [str(where)])
    rows, bad = int(v.get("rows", 0)), int(v.get("quarantined", 0))
    limit = float(ev.get("max_bad_fraction", 0.0))
    fraction = bad / rows if rows else 1.0
    proof = [
        f"suite version {v.get('suite_version', '?')} (spec sha256 {str(v.get('spec_sha256', '?'))[:16]})",
        f"{v.get('valid', '?')} valid, {bad} quarantined of {rows} rows ({fraction:.2%}; limit {limit:.2%})",
        f"record {ev.get('validation_path', '?')}",
        f"quarantine {v.get('quarantine_store', '?')}",
    ]
    if not v.get("suite_version"):
        return ItemResult("data_validated", False, "the validation record names no suite version", proof)
    if not rows or fraction > limit:
        return ItemResult("data_validated", False, f"quarantined {fraction:.2%} of the rows, over the limit {limit:.2%}", proof)
    return ItemResult("data_validated", True, f"validated by suite {v['suite_version']}; quarantine {fraction:.2%} <= {limit:.2%}", proof)


def check_lineage(ev: Mapping[str, Any]) -> ItemResult:
    lin = ev.get("lineage") or {}
    fields = (
        ("dataset fingerprint", lin.get("dataset_fingerprint")),
        ("code version", lin.get("code_version")),
        ("FeatureService", lin.get("feature_service")),
        ("training set sha256", lin.get("training_set_sha256")),
    )
    proof = [f"{name}: {value}" for name, value in fields if value]
    if lin.get("manifest"):
        proof.append(f"ingest manifest {lin['manifest']}")
    missing = _missing(*fields)
    if str(lin.get("code_version", "")) in ("unknown",):
        missing.append("code version (unknown)")
    if not lin.get("manifest"):
        missing.append("the dataset version's ingest manifest")
    if missing:
        return ItemResult("lineage", False, f"missing: {', '.join(missing)}", proof)
    dirty = str(lin["code_version"]).endswith("-dirty")
    note = " (code version from a working tree with uncommitted changes)" if dirty else ""
    return ItemResult("lineage", True, f"data, code, FeatureService and training set recorded{note}", proof)


def check_reproducible(ev: Mapping[str, Any]) -> ItemResult:
    r = ev.get("reproducibility") or {}
    params, env = r.get("params") or {}, r.get("environment") or {}
    proof = [
        f"{len(params)} parameters recorded (seed {params.get('seed', 'missing')})",
        f"environment: {', '.join(f'{k} {v}' for k, v in sorted(env.items()))}",
    ]
    fingerprint, reuse = r.get("inputs_fingerprint"), r.get("reused_by")
    proof.append(f"inputs fingerprint {fingerprint or 'missing'}; a rerun finds version {reuse or 'none'}")
    missing = _missing(("parameters", params), ("environment", env), ("inputs fingerprint", fingerprint))
    if "seed" not in params:
        missing.append("seed")
    if missing:
        return ItemResult("reproducible", False, f"not recorded: {', '.join(missing)}", proof)
    if str(reuse) != str(ev.get("version")):
        return ItemResult("reproducible", False, f"a rerun with the same inputs would reuse version {reuse}, not this one", proof)
    return ItemResult(
        "reproducible", True, "parameters, seed and environment recorded; a rerun with the same inputs reuses this version", proof
    )


def _gate_kinds(gate: Mapping[str, Any], sensitive: Sequence[str]) -> dict[str, str]:
    """For each kind of check the gate should have made: "" when judged or not applicable, else what is missing."""
    names = [str(c.get("name", "")) for c in gate.get("checks", [])]
    policy = gate.get("policy") or {}
    notes = " ".join(str(n) for n in gate.get("notes", []))
    out: dict[str, str] = {}
    out["baseline"] = "" if any(n.startswith("baseline.") for n in names) else "no check against the baseline"
    champion = gate.get("champion")
    # A first version has no champion to beat; a champion scored on other features cannot be compared (gate.json
    # says so): neither is a gap in the gate.
    first = (champion is None and "no champion yet" in notes) or (isinstance(champion, dict) and champion.get("comparable") is False)
    out["champion"] = "" if first or any(n.startswith("champion.") for n in names) else "no check against the champion"
    out["calibration"] = "" if any(n in ("max_ece", "max_brier") for n in names) else "no calibration check (max_ece / max_brier)"
    out["latency"] = "" if "max_p99_latency_ms" in names else "no latency check"
    attributes = (policy.get("slices") or {}).get("attributes") or []
    judged = any(n.startswith("slice_gap.") for n in names) or (attributes and "slice" in notes)
    out["slices"] = "" if not attributes or judged else "no slice-gap check"
    bias = [n for n in names if n.split("[")[0].removeprefix("bias.") in BIAS_METRICS]  # evaluate names them bias.<metric>[attr]
    if not sensitive:
        out["bias"] = ""
    elif not gate.get("fairness"):
        out["bias"] = f"the spec's sensitive attribute(s) {list(sensitive)} were not audited"
    else:
        out["bias"] = "" if bias else "the bias audit is reported but the gate policy bounds none of its differences"
    return out


def check_gate(ev: Mapping[str, Any], require: Sequence[str] = GATE_KINDS) -> ItemResult:
    gate, tag = ev.get("gate"), ev.get("gate_tag")
    if not gate:
        return ItemResult("gate", False, "no evaluation/gate.json for this version: it was never evaluated", [f"gate tag: {tag or 'none'}"])
    checks = gate.get("checks", [])
    failed = [c for c in checks if not c.get("passed")]
    proof = [f"{len(checks) - len(failed)} of {len(checks)} checks passed", f"policy {ev.get('gate_policy_tag') or '?'}"]
    proof += [f"{c['name']}: {c.get('message', '')}" for c in checks if str(c.get("name", "")).split(".")[0] in ("baseline", "champion")]
    if ev.get("evaluation_report"):
        proof.append(f"evaluation report {ev['evaluation_report']}")
    if not gate.get("passed") or tag != "passed" or failed:
        reasons = "; ".join(gate.get("reasons") or [c.get("message", c.get("name")) for c in failed]) or f"gate tag {tag!r}"
        return ItemResult("gate", False, f"the gate did not pass: {reasons}", proof)
    gaps = {k: why for k, why in _gate_kinds(gate, ev.get("sensitive") or []).items() if k in require and why}
    if gaps:
        return ItemResult("gate", False, "the gate passed without judging: " + "; ".join(f"{k} ({why})" for k, why in gaps.items()), proof)
    return ItemResult("gate", True, f"passed every check, including {', '.join(require)}", proof)


def check_explanations(ev: Mapping[str, Any]) -> ItemResult:
    b = ev.get("bundle") or {}
    proof = [f"bundle {ev.get('bundle_uri', '?')}", f"files: {', '.join(b.get('files', [])) or 'unreadable'}"]
    if b.get("background_rows"):
        proof.append(f"background.json: {b['background_rows']} training rows (sealed in the manifest)")
    if b.get("explain_probe"):
        proof.append(f"served :explain answered {b['explain_probe']}")
    if not b.get("background_sealed"):
        return ItemResult("explanations", False, "the bundle has no sealed background sample: `:explain` answers 501; retrain", proof)
    probe = str(b.get("explain_probe", ""))
    if probe and not probe.startswith("200"):
        return ItemResult("explanations", False, f"the served model's :explain answered {probe}", proof)
    served = "; the model served here answers `:explain`" if probe else ""
    return ItemResult("explanations", True, f"the bundle seals the background sample `:explain` attributes against{served}", proof)


def check_privacy(ev: Mapping[str, Any]) -> ItemResult:
    p = ev.get("privacy") or {}
    pii, entity = list(p.get("pii") or []), p.get("entity")
    proof = [f"personal columns (spec privacy.pii): {pii or 'none'}"]
    if not p.get("checked"):
        return ItemResult("privacy", False, f"could not check: {p.get('error', 'no bundle or spec')}", proof)
    places = {
        "bundle features": p.get("features") or [],
        "input example": p.get("example_columns") or [],
        "request logs": p.get("log_columns") or [],
    }
    proof += [f"{where}: {len(cols)} column(s)" for where, cols in places.items()]
    proof.append(f"request-log rows read: {p.get('log_rows', 0)}")
    clear = [f"{c} in the {where}" for where, cols in places.items() for c in pii if c in cols and c != entity]
    if entity and entity in pii:
        proof.append(f"entity {entity} is personal: keyed hash (HMAC-SHA256) required; key configured: {bool(p.get('hash_key'))}")
        if not p.get("hash_key"):
            clear.append(f"{entity} (personal entity key) with no MLWF_PII_HASH_KEY to hash it")
        unhashed = int(p.get("log_entities_unhashed", 0))
        if unhashed:
            clear.append(f"{unhashed} request-log entity value(s) that are not keyed hashes")
    if clear:
        return ItemResult("privacy", False, "personal data in clear: " + "; ".join(clear), proof)
    return ItemResult("privacy", True, "no personal column in the bundle, its input example or the request logs", proof)


def check_model_card(ev: Mapping[str, Any]) -> ItemResult:
    c = ev.get("model_card") or {}
    proof = [f"{where}: {chars} characters" for where, chars in (c.get("found") or {}).items()]
    if not c.get("found"):
        return ItemResult("model_card", False, "no model card in the bundle or the run's artifacts", proof)
    if not c.get("has_evaluation"):
        return ItemResult("model_card", False, "the model card has no evaluation section (the evaluate step writes it)", proof)
    return ItemResult("model_card", True, "model card present, with the evaluation", proof)


def check_monitoring(ev: Mapping[str, Any], max_age_hours: float = 48.0) -> ItemResult:
    m = ev.get("monitoring") or {}
    rules = list(m.get("alert_rules") or [])
    proof = [f"alert rules ({m.get('rules_file', '?')}): {', '.join(rules) or 'none'}"]
    schedules = m.get("schedules")
    if schedules:
        proof.append(f"recurring runs on the cluster: {', '.join(schedules)}")
    last = m.get("last_run")
    age = None
    if last:
        age = (datetime.fromisoformat(str(ev["now"])) - datetime.fromisoformat(str(last))).total_seconds() / 3600
        proof.append(f"local monitor last ran {last} ({age:.1f} h ago; {m.get('gauges', '?')})")
    if m.get("schedule_error"):
        proof.append(f"schedules not listed: {m['schedule_error']}")
    watched = bool(schedules) or (age is not None and age <= max_age_hours)
    if not watched:
        why = "no drift schedule on the cluster and no local monitor run"
        why += f" within {max_age_hours:g} h" if age is not None else ""
        return ItemResult("monitoring", False, why, proof)
    if not rules:
        return ItemResult("monitoring", False, "drift is monitored but no alert rule pages anyone", proof)
    return ItemResult("monitoring", True, f"drift monitored, {len(rules)} alert rule(s)", proof)


def check_rollback(ev: Mapping[str, Any]) -> ItemResult:
    r = ev.get("rollback") or {}
    target = r.get("version")
    proof = [f"previous champion (the champion this version was evaluated against): {target or 'none'}"]
    if not target:
        return ItemResult("rollback", False, "no previous champion to roll back to (a first version)", proof)
    proof.append(f"v{target}: status {r.get('status', '?')}, gate {r.get('gate', '?')}, bundle {r.get('source', '?')}")
    if r.get("status") != "READY":
        return ItemResult("rollback", False, f"the previous champion v{target} is not servable (status {r.get('status')})", proof)
    return ItemResult("rollback", True, f"v{target} can be served again", proof)


def check_images(ev: Mapping[str, Any]) -> ItemResult:
    i = ev.get("images") or {}
    proof, problems = [], []
    for ref in i.get("pinned", {}).values():
        proof.append(f"image {ref}")
    for name, ref in (i.get("unpinned") or {}).items():
        problems.append(f"{name} not pinned by digest ({ref})")
    for path, user in (i.get("dockerfile_users") or {}).items():
        proof.append(f"{path}: USER {user or '(none: root)'}")
        if is_root(user):
            problems.append(f"{path} runs as root")
    if i.get("uid") is not None:
        proof.append(f"this step runs as uid {i['uid']}")
        if int(i["uid"]) == 0:
            problems.append("this step's container runs as root")
    if not i.get("pinned") and not i.get("unpinned"):
        problems.append(f"no built image recorded ({i.get('record', 'build/images.json')} absent; run `make images`)")
    if problems:
        return ItemResult("images", False, "; ".join(problems), proof)
    return ItemResult("images", True, f"{len(i['pinned'])} image(s) pinned by digest, none runs as root", proof)


def check_secrets(ev: Mapping[str, Any]) -> ItemResult:
    s = ev.get("secrets") or {}
    packages = list(s.get("packages") or [])
    proof = [f"scanned {p}" for p in packages] + [f"known secret variables compared: {', '.join(s.get('compared') or []) or 'none set'}"]
    if not packages:
        return ItemResult("secrets", False, "no compiled package found to scan", proof)
    findings = {p: f for p, f in (s.get("findings") or {}).items() if f}
    if findings:
        return ItemResult("secrets", False, "; ".join(f"{p}: {', '.join(f)}" for p, f in findings.items()), proof)
    return ItemResult("secrets", True, f"{len(packages)} package(s) name Secrets and keys only, no value", proof)


CHECKS: dict[str, Callable[[Mapping[str, Any], ReadinessPolicy], ItemResult]] = {
    "data_validated": lambda ev, _: check_data(ev),
    "lineage": lambda ev, _: check_lineage(ev),
    "reproducible": lambda ev, _: check_reproducible(ev),
    "gate": lambda ev, p: check_gate(ev, p.gate_require),
    "explanations": lambda ev, _: check_explanations(ev),
    "privacy": lambda ev, _: check_privacy(ev),
    "model_card": lambda ev, _: check_model_card(ev),
    "monitoring": lambda ev, p: check_monitoring(ev, p.monitor_max_age_hours),
    "rollback": lambda ev, _: check_rollback(ev),
    "images": lambda ev, _: check_images(ev),
    "secrets": lambda ev, _: check_secrets(ev),
}


def assess(ev: Mapping[str, Any], policy: ReadinessPolicy) -> Assessment:
    """Every item judged on the evidence; the policy says which failures block. A check that raises on
    malformed evidence fails its item with the error rather than hiding the others."""
    results = []
    for item in ITEMS:
        try:
            result = CHECKS[item](ev, policy)
        except (KeyError, TypeError, ValueError) as err:
            result = ItemResult(item, False, f"evidence unreadable: {type(err).__name__}: {err}")
        result.severity = policy.severity.get(item, "blocking")
        results.append(result)
    return Assessment(
        model=str(ev.get("model", "?")),
        version=str(ev.get("version", "?")),
        ref=str(ev.get("ref", "")),
        items=results,
        policy=policy,
        generated_at=str(ev.get("now", "")),
        links=dict(ev.get("links") or {}),
    )
