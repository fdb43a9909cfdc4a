"""`make bench` / `make bench-quick`: run every benchmark module, write results.json and results.md.

Usage: python -m benchmarks.run [--quick] [--only NAME ...] [--out DIR]
Each module `benchmarks/bench_*.py` defines `run(quick: bool) -> list[Figure]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cores": str(os.cpu_count()), "gpu": gpu or "none", "python": platform.python_version()}


def discover() -> list[str]:
    return sorted(p.stem for p in HERE.glob("bench_*.py"))


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"Mode: {results['mode']}; machine: {m['cpu']}, {m['cores']} cores, GPU: {m['gpu']}; date: {results['date']}",
        "",
        "| benchmark | figure | this project | anchor | ratio | goal | met | notes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in results["figures"]:
        ratio = f"{f['ratio']:.2f}x" if f["ratio"] else "-"
        anchor = f"{fmt(f['anchor'])} ({f['anchor_name']})" if f["anchor"] is not None else f["anchor_name"] or "-"
        met = {True: "yes", False: "NO", None: "-"}[f["met"]]
        lines.append(
            f"| {f['benchmark']} | {f['figure']} | {fmt(f['project'])} | {anchor} | {ratio} | {f['goal']} | {met} | {f['notes']} |"
        )
    for name, err in results["errors"].items():
        lines.append(f"\n**{name} failed:** `{err}`")
    return "\n".join(lines) + "\n"


def merged(path: Path, results: dict, ran: set[str]) -> dict:
    """`--only` replaces the figures of the benchmarks it ran and keeps the others' from the last results file."""
    if not path.exists():
        return results
    old = json.loads(path.read_text())
    kept = [f for f in old.get("figures", []) if f["benchmark"] not in ran]
    errors = {k: v for k, v in old.get("errors", {}).items() if k.removeprefix("bench_") not in ran}
    seconds = {k: v for k, v in old.get("seconds", {}).items() if k.removeprefix("bench_") not in ran}
    order = [f["benchmark"] for f in old.get("figures", [])]
    figures = sorted(kept + results["figures"], key=lambda f: order.index(f["benchmark"]) if f["benchmark"] in order else len(order))
    return {**results, "figures": figures, "errors": {**errors, **results["errors"]}, "seconds": {**seconds, **results["seconds"]}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes: proves every benchmark still runs (< 1 min each)")
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args(argv)
    # As every pipeline step does before torch loads (components/core/threads.py): OpenMP waits passively.
    from components.core.threads import passive_openmp

    passive_openmp()
    names = [n for n in discover() if not args.only or n in args.only or n.removeprefix("bench_") in args.only]
    results: dict = {
        "mode": "quick" if args.quick else "full",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "figures": [],
        "errors": {},
        "seconds": {},
    }
    for name in names:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            for figure in module.run(quick=args.quick):
                results["figures"].append(figure.as_dict())
                print(f"   {figure.figure}: {fmt(figure.project)} vs {fmt(figure.anchor)} ({figure.anchor_name})", flush=True)
        except Exception as err:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            results["errors"][name] = f"{type(err).__name__}: {err}"
        results["seconds"][name] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    gpu = "-gpu" if results["machine"]["gpu"] != "none" else ""
    if args.only:
        results = merged(out / f"results{suffix}{gpu}.json", results, {n.removeprefix("bench_") for n in names})
    (out / f"results{suffix}{gpu}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"results{suffix}{gpu}.md").write_text(markdown(results))
    print(markdown(results))
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
