"""The readiness report: Markdown (the pipeline's Markdown output, a pull request, a terminal), HTML (the Kubeflow
UI's HTML output, the same look as the validation and evaluation reports) and the JSON record; the policy loader;
`run_readiness`, which the CLI and the pipeline step share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from components.core import storage
from components.core.report_style import Cell, banner, code, join, page, table, tag
from components.governance.readiness import Assessment, ReadinessError, ReadinessPolicy, assess, parse_policy

POLICY_NAME = "readiness.policy.yaml"
FILES = {"markdown": "readiness.md", "html": "readiness.html", "json": "readiness.json"}


def bundled_policy_path() -> Path:
    return Path(str(resources.files("components") / "datasets" / POLICY_NAME))


def load_policy(ref: str = "", profile: str = "local") -> ReadinessPolicy:
    """The readiness policy: a path or s3:// URI, or (empty) the bundled one. One-line ReadinessError otherwise."""
    import yaml

    uri = ref or str(bundled_policy_path())
    if not storage.is_s3(uri) and not Path(uri).exists():
        raise ReadinessError(f"readiness policy not found: {uri}")
    raw = storage.read_bytes(uri)
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ReadinessError(f"readiness policy {uri} is not valid YAML: {str(err).splitlines()[0]}") from err
    return parse_policy(data, uri, profile, raw)


def _verdict(a: Assessment) -> tuple[str, str, str]:
    warned = [r for r in a.items if not r.passed]
    if not a.ready:
        return "fail", "NOT READY", f"{len(a.blocking_failures)} blocking item(s) failed: " + ", ".join(r.item for r in a.blocking_failures)
    if warned:
        return "warn", "READY (with advisories)", "advisory item(s) failed: " + ", ".join(r.item for r in warned)
    return "pass", "READY", f"all {len(a.items)} items passed"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(a: Assessment) -> str:
    _, word, summary = _verdict(a)
    lines = [f"# Readiness {word}: {a.model} v{a.version}", "", f"{summary}. Reference `{a.ref}`, {a.generated_at}.", ""]
    lines.append(f"Policy: `{a.policy.source}` v{a.policy.version}" + (f" (sha256 {a.policy.sha256[:16]})." if a.policy.sha256 else "."))
    for name, link in a.links.items():
        lines.append(f"- {name.replace('_', ' ')}: {link}")
    lines += ["", "| Result | Item | Severity | Why |", "|---|---|---|---|"]
    lines += [f"| {r.status} | {_cell(r.title)} | {r.severity} | {_cell(r.detail)} |" for r in a.items]
    lines += ["", "## Evidence", ""]
    for r in a.items:
        lines.append(f"### {r.status} {r.title} (`{r.item}`)")
        lines += [f"- {_cell(e)}" for e in r.evidence] or ["- (none)"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _link(value: str) -> Any:
    if value.startswith(("http://", "https://", "file://")):
        return tag("a", value, href=value)
    return code(value)


def html(a: Assessment) -> str:
    status, word, summary = _verdict(a)
    policy = f"Policy {a.policy.source} v{a.policy.version}" + (f", sha256 {a.policy.sha256[:16]}" if a.policy.sha256 else "")
    head = banner(status, f"Readiness {word}: {a.model} v{a.version}", [summary, policy, f"{a.ref} at {a.generated_at}"])
    links = tag("ul", join(tag("li", join([name.replace("_", " ") + ": ", _link(v)])) for name, v in a.links.items())) if a.links else ""
    rows = [[Cell(r.status, "bad" if r.status == "FAIL" else ""), r.title, r.severity, r.detail] for r in a.items]
    classes = ["fail" if r.status == "FAIL" else "" for r in a.items]
    evidence = [join([tag("h3", f"{r.status} {r.title}"), tag("ul", join(tag("li", e) for e in r.evidence))]) for r in a.items]
    return page(
        f"Readiness {a.model} v{a.version}",
        head,
        tag("h2", "Links"),
        links,
        tag("h2", "Checklist"),
        table(["Result", "Item", "Severity", "Why"], rows, classes),
        tag("h2", "Evidence"),
        *evidence,
    )


@dataclass(frozen=True)
class Written:
    assessment: Assessment
    files: dict[str, str]  # markdown / html / json -> path


def write(a: Assessment, out_dir: str) -> dict[str, str]:
    """readiness.md, readiness.html and readiness.json under `out_dir` (local or s3://)."""
    files = {kind: storage.join(out_dir, name) for kind, name in FILES.items()}
    storage.write_bytes(files["markdown"], markdown(a).encode())
    storage.write_bytes(files["html"], html(a).encode())
    storage.write_bytes(files["json"], (json.dumps(a.record(), indent=2, default=str) + "\n").encode())
    return files


def run_readiness(
    ref: str, out_dir: str, policy_ref: str = "", dataset_spec: str = "", schedules: Any = None, settings: Any = None
) -> Written:
    """Gather, judge and write the report of model version `ref`; the caller decides what a failure means."""
    from components.core.settings import get_settings
    from components.governance.evidence import gather

    settings = settings or get_settings()
    policy = load_policy(policy_ref, settings.profile)  # before any MLflow call: a bad policy is bad input
    evidence = gather(ref, settings, dataset_spec, schedules)
    assessment = assess(evidence, policy)
    return Written(assessment, write(assessment, out_dir))
