"""Build and push the project's images with whichever builder is installed, and record their digests.

  python -m pipelines.images build --registry REGISTRY [--tag TAG] [--code-version V] [--builder B] [--platform P]
                                   [--with-spark]
  python -m pipelines.images compile-args     # `--image REPO@sha256:...` for `mlwf compile` (make compile uses it)

`make images` runs `build` with MLWF_REGISTRY / MLWF_TAG / MLWF_CODE_VERSION / MLWF_BUILDER / MLWF_PLATFORM
(MLWF_WITH_SPARK=1 adds --with-spark). `build` builds components/Dockerfile, components/Dockerfile.cuda and
serving/Dockerfile (and components/Dockerfile.spark with --with-spark) from the repository root (the context .dockerignore allow-lists), passes MLWF_CODE_VERSION as a build argument,
pushes each image, and writes build/images.json (the pushed digests) plus one kustomize overlay per
manifests/overlays/<name> under build/overlays/<name> that pins the project's images by digest, in pod specs and in
the mlwf-settings keys that name an image. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECORD = REPO / "build" / "images.json"
OVERLAYS_OUT = REPO / "build" / "overlays"
MANIFEST_OVERLAYS = REPO / "manifests" / "overlays"
BUILDERS = ("docker", "podman", "buildah")  # tried in this order when --builder is not given
# What the manifests and settings name before a release is built; the overlays replace these.
RELEASE_REGISTRY = "ghcr.io/mlwf"
# The files that go into the build context (.dockerignore allow-lists them): a change there makes the tag dirty.
CONTEXT_PATHS = ("pyproject.toml", "constraints.txt", "README.md", "components", "pipelines", "serving")
DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
REGISTRY = re.compile(r"[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*")


class ImageBuildError(RuntimeError):
    """A build, push or record problem; the message names the image and the command."""


@dataclass(frozen=True)
class Image:
    name: str  # the repository's last path segment: REGISTRY/name
    dockerfile: str  # relative to the repository root, which is the build context


IMAGES = (
    Image("components", "components/Dockerfile"),
    Image("components-cuda", "components/Dockerfile.cuda"),
    Image("serving", "serving/Dockerfile"),
)
# The Spark driver/executors' image (MLWF_SPARK_IMAGE), built on request (`--with-spark`, MLWF_WITH_SPARK=1): it
# fetches the s3a jars from Maven Central and needs their sha256 recorded in its Dockerfile first, and only the
# spark engine on a cluster uses it, so the three images every install needs never wait on it.
SPARK_IMAGE = Image("components-spark", "components/Dockerfile.spark")
# The mlwf-settings keys (manifests/base/settings.yaml) that name an image the steps start pods with: kustomize's
# `images:` rewrites only containers[].image, so the generated overlays patch these values to the pushed digests.
SETTINGS_CONFIG_MAP = "mlwf-settings"
SETTINGS_IMAGES = {"MLWF_TRAINJOB_IMAGE": "components", "MLWF_SPARK_IMAGE": "components-spark"}


def _git(*args: str) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as err:
        raise ImageBuildError("git is not installed: pass --tag and --code-version (MLWF_TAG, MLWF_CODE_VERSION)") from err
    if proc.returncode != 0:
        raise ImageBuildError(
            f"git {' '.join(args)} failed ({proc.stderr.strip()}): pass --tag and --code-version (MLWF_TAG, MLWF_CODE_VERSION)"
        )
    return proc.stdout.strip()


def git_version() -> tuple[str, str]:
    """(short sha, full sha), each with `-dirty` when the files that enter the image differ from HEAD: an image
    tagged with a commit must be that commit."""
    dirty = "-dirty" if _git("status", "--porcelain", "--", *CONTEXT_PATHS) else ""
    return _git("rev-parse", "--short", "HEAD") + dirty, _git("rev-parse", "HEAD") + dirty


def find_builder(preferred: str | None = None) -> tuple[str, str]:
    """(builder name, executable path): the one asked for, else the first of BUILDERS on PATH."""
    names = (preferred,) if preferred else BUILDERS
    for name in names:
        if name not in BUILDERS:
            raise ImageBuildError(f"unknown builder {name!r}: use one of {', '.join(BUILDERS)}")
        path = shutil.which(name)
        if path:
            return name, path
    wanted = preferred or " or ".join(BUILDERS)
    raise ImageBuildError(
        f"no image builder found on PATH (looked for {wanted}): install Docker, Podman or Buildah, "
        "or build on a machine (or CI job) that has one"
    )


def build_command(exe: str, image: Image, ref: str, code_version: str, platform: str | None) -> list[str]:
    # docker build, podman build and buildah build (formerly `bud`) take the same flags used here.
    cmd = [exe, "build", "--file", str(REPO / image.dockerfile), "--tag", ref, "--build-arg", f"MLWF_CODE_VERSION={code_version}"]
    if platform:
        cmd += ["--platform", platform]
    return [*cmd, str(REPO)]


def push(builder: str, exe: str, ref: str, repository: str) -> str:
    """Push `ref` and return the digest the registry stored (sha256:...)."""
    if builder in ("podman", "buildah"):
        with tempfile.TemporaryDirectory() as tmp:
            digest_file = Path(tmp) / "digest"
            _run([exe, "push", "--digestfile", str(digest_file), ref], f"push {ref}", capture=False)
            text = digest_file.read_text().strip() if digest_file.exists() else ""
    else:
        # docker push has no --digestfile: it prints "<tag>: digest: sha256:... size: N"; the local image then
        # lists the pushed manifest in RepoDigests.
        text = _run([exe, "push", ref], f"push {ref}")
        if not DIGEST.search(text):
            text = _run([exe, "image", "inspect", "--format", "{{json .RepoDigests}}", ref], f"inspect {ref}")
            text = " ".join(d for d in json.loads(text or "[]") if d.startswith(f"{repository}@"))
    found = DIGEST.search(text)
    if not found:
        raise ImageBuildError(f"{builder} pushed {ref} but reported no sha256 digest (got {text[-300:]!r})")
    return found.group(0)


def _run(cmd: list[str], what: str, capture: bool = True) -> str:
    """Run a builder command; its stderr (and stdout unless captured for a digest) goes to the terminal."""
    print("+ " + shlex.join(cmd), flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True, check=False)
    if capture:
        sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        raise ImageBuildError(f"{what} failed (exit {proc.returncode}): {shlex.join(cmd)}")
    return proc.stdout or ""


def build_and_push(
    registry: str,
    tag: str,
    code_version: str,
    builder: str | None = None,
    platform: str | None = None,
    record: Path = RECORD,
    spark: bool = False,
) -> dict[str, Any]:
    """Build, push and record every image (and the Spark one with `spark`); the record is written only when all of
    them were pushed."""
    registry = registry.rstrip("/")
    if not REGISTRY.fullmatch(registry):
        raise ImageBuildError(f"registry {registry!r} is not a valid image repository prefix (e.g. ghcr.io/org)")
    if not TAG.fullmatch(tag):
        raise ImageBuildError(f"tag {tag!r} is not a valid image tag")
    name, exe = find_builder(builder)
    images: dict[str, dict[str, str]] = {}
    for image in (*IMAGES, SPARK_IMAGE) if spark else IMAGES:
        repository = f"{registry}/{image.name}"
        ref = f"{repository}:{tag}"
        _run(build_command(exe, image, ref, code_version, platform), f"build {ref} ({image.dockerfile})", capture=False)
        digest = push(name, exe, ref, repository)
        images[image.name] = {
            "repository": repository,
            "tag": tag,
            "digest": digest,
            "reference": f"{repository}@{digest}",
            "dockerfile": image.dockerfile,
        }
    out = {"registry": registry, "tag": tag, "code_version": code_version, "builder": name, "images": images}
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    tmp.replace(record)
    return out


def load_record(record: Path = RECORD) -> dict[str, Any]:
    try:
        data = json.loads(record.read_text())
        images = data["images"]
        for image in (*IMAGES, *([SPARK_IMAGE] if SPARK_IMAGE.name in images else [])):
            entry = images[image.name]
            if not DIGEST.fullmatch(entry["digest"]) or entry["reference"] != f"{entry['repository']}@{entry['digest']}":
                raise ValueError(f"bad digest or reference for {image.name}")
    except FileNotFoundError as err:
        raise ImageBuildError(f"{record} not found: run `make images` first") from err
    except (ValueError, KeyError, TypeError) as err:
        raise ImageBuildError(f"{record} is not a valid image record ({err}): run `make images` again") from err
    return data


def compile_args(record: Path = RECORD) -> list[str]:
    """`mlwf compile` arguments that pin the step image by digest (a full reference, so registries with a port
    work too)."""
    return ["--image", load_record(record)["images"]["components"]["reference"]]


def write_overlays(record: Path = RECORD, out_root: Path = OVERLAYS_OUT, overlays: Path = MANIFEST_OVERLAYS) -> list[Path]:
    """One kustomization per manifests/overlays/<name>: that overlay with the release images replaced by the
    pushed digests (kustomize's `images:` rewrites every containers[].image, the ClusterServingRuntime's too) and
    the settings keys that name an image (SETTINGS_IMAGES) set to the pushed references."""
    data = load_record(record)
    pins = [
        {"name": f"{RELEASE_REGISTRY}/{name}", "newName": entry["repository"], "digest": entry["digest"]}
        for name, entry in sorted(data["images"].items())
    ]
    settings = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": SETTINGS_CONFIG_MAP},
        "data": {key: data["images"][name]["reference"] for key, name in SETTINGS_IMAGES.items() if name in data["images"]},
    }
    written = []
    for source in sorted(p for p in overlays.iterdir() if (p / "kustomization.yaml").is_file()):
        target = out_root / source.name
        target.mkdir(parents=True, exist_ok=True)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [os.path.relpath(source, target)],
            "images": pins,
            "patches": [{"target": {"kind": "ConfigMap", "name": SETTINGS_CONFIG_MAP}, "patch": json.dumps(settings)}],
        }
        path = target / "kustomization.yaml"
        # JSON is YAML: no PyYAML needed here.
        path.write_text(
            f"# Generated by `make images` from {record.name} (tag {data['tag']}); do not edit.\n"
            + json.dumps(kustomization, indent=2)
            + "\n"
        )
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.images", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build, push and record the three images (four with --with-spark)")
    build.add_argument("--registry", required=True, help="e.g. ghcr.io/your-org (images: REGISTRY/components, ...)")
    build.add_argument("--tag", default="", help="default: the short git sha (+ -dirty)")
    build.add_argument("--code-version", default="", help="MLWF_CODE_VERSION build arg; default: the full git sha")
    build.add_argument("--builder", default="", choices=("", *BUILDERS), help="default: the first found on PATH")
    build.add_argument("--platform", default="", help="e.g. linux/amd64 when building on another architecture")
    build.add_argument("--record", type=Path, default=RECORD)
    build.add_argument("--with-spark", action="store_true", help="also the Spark image (components/Dockerfile.spark)")
    args_ = sub.add_parser("compile-args", help="print the `mlwf compile` arguments that pin the recorded digest")
    args_.add_argument("--record", type=Path, default=RECORD)
    args = parser.parse_args(argv)
    try:
        if args.command == "compile-args":
            print(shlex.join(compile_args(args.record)))
            return 0
        tag, code_version = args.tag, args.code_version
        if not tag or not code_version:
            short, full = git_version()
            tag, code_version = tag or short, code_version or full
        data = build_and_push(args.registry, tag, code_version, args.builder or None, args.platform or None, args.record, args.with_spark)
        overlays = write_overlays(args.record, args.record.parent / "overlays")
    except ImageBuildError as err:
        print(f"images: error: {err}", file=sys.stderr)
        return 2
    print(f"\npushed with {data['builder']}, recorded in {args.record}:")
    for name, entry in data["images"].items():
        print(f"  {name:<16} {entry['reference']}")
    print("digest-pinned overlays: " + ", ".join(str(p.parent) for p in overlays))
    print("next: `make compile` (writes build/training.yaml pinned to the components digest)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
