"""The architecture, enforced: imports run one way and no module imports another's private names.

Reads every import of the project's packages, those inside functions included (the steps import lazily):
- components.core imports nothing else of the project;
- a stage (components.data, features, training, evaluation, deployment, monitoring, governance, scoring) imports core
  and itself;
- serving imports core and serving, and may read the feature store (components.features);
- components never imports pipelines or serving; pipelines may import everything below it;
- no import cycle between modules, and no `from X import _private` across modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("components", "pipelines", "serving")
STAGES = ("data", "features", "training", "evaluation", "deployment", "monitoring", "governance", "scoring")
MAX_LINES = 450


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name lives in (a.b.c -> the longest known module prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported project module, imported names, line) for every import in the file, nested ones included."""
    found = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = resolve(alias.name, modules)
                if target:
                    found.append((target, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                # `from pkg import module` imports the module; `from module import name` imports from it.
                target = resolve(f"{base}.{alias.name}", modules)
                if target and target != resolve(base, modules):
                    found.append((target, [], node.lineno))
                else:
                    target = resolve(base, modules)
                    if target:
                        found.append((target, [alias.name], node.lineno))
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "components" and len(parts) > 1 and parts[1] in ("core", *STAGES):
        return f"components.{parts[1]}"
    return parts[0] if parts[0] != "components" else "components.root"


def allowed(source: str, target: str) -> bool:
    src, dst = layer(source), layer(target)
    if src == dst or dst == "components.core":
        return True
    if src == "components.core":
        return False
    if src.startswith("components.") and src != "components.root":
        return False  # a stage imports core and itself only
    if src == "components.root":
        return dst.startswith("components.")  # components/__init__ and package data helpers
    if src == "serving":
        return dst == "components.features"
    if src == "pipelines":
        return True
    return False


def graph() -> tuple[dict[str, Path], dict[str, list[tuple[str, list[str], int]]]]:
    modules = project_modules()
    return modules, {m: imports_of(m, p, modules) for m, p in modules.items()}


def test_every_stage_package_exists() -> None:
    modules = project_modules()
    for stage in ("core", *STAGES):
        assert f"components.{stage}" in modules, f"components/{stage}/__init__.py is missing"


def test_imports_run_one_way() -> None:
    _, edges = graph()
    wrong = [
        f"{source} (line {line}) imports {target}"
        for source, targets in edges.items()
        for target, _, line in targets
        if target != source and not allowed(source, target)
    ]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    _, edges = graph()
    adjacency = {m: sorted({t for t, _, _ in ts if t != m}) for m, ts in edges.items()}
    # Iterative DFS with colours; report the first cycle found with its path.
    colour: dict[str, int] = {}
    for start in adjacency:
        if colour.get(start):
            continue
        stack = [(start, iter(adjacency[start]))]
        path = [start]
        colour[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                colour[node] = 2
                stack.pop()
                path.pop()
            elif colour.get(child) == 1:
                cycle = path[path.index(child) :] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            elif not colour.get(child):
                colour[child] = 1
                stack.append((child, iter(adjacency[child])))
                path.append(child)


def test_no_private_names_across_modules() -> None:
    _, edges = graph()
    wrong = [
        f"{source} (line {line}) imports {name} from {target}"
        for source, targets in edges.items()
        for target, names, line in targets
        for name in names
        if target != source and name.startswith("_") and not name.startswith("__")
    ]
    assert not wrong, "private names imported across modules:\n" + "\n".join(wrong)


def test_no_module_too_long() -> None:
    long = [
        f"{path.relative_to(ROOT)}: {n} lines"
        for path in project_modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams):\n" + "\n".join(long)


def test_the_checker_sees_nested_and_relative_imports(tmp_path: Path) -> None:
    """The reader must not miss what it is meant to catch: an import inside a function body."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from components.core.storage import sha\n    from pipelines import cli\n")
    modules = {"components.core.storage": module, "pipelines.cli": module, "components.core.m": module}
    found = imports_of("components.core.m", module, modules)
    assert ("components.core.storage", ["sha"], 2) in found
    assert ("pipelines.cli", [], 3) in found
    assert not allowed("components.core.m", "pipelines.cli")
    assert not allowed("components.data.validate", "components.training.train")
    assert allowed("pipelines.cli", "components.data.validate")
    assert allowed("serving.model", "components.features.online")
    assert not allowed("serving.model", "components.training.train")


def test_tests_share_factories_not_each_other() -> None:
    """Shared test data comes from tests/factories.py (or a conftest), never from another test module."""
    wrong = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in getattr(node, "names", [])]
                if isinstance(node, ast.Import)
                else []
            )
            wrong += [f"{path.relative_to(ROOT)} imports {n}" for n in names if n.split(".")[-1].startswith("test_")]
    assert not wrong, "test modules importing test modules:\n" + "\n".join(wrong)
