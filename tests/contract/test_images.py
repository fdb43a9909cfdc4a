"""`make images` / pipelines/images.py offline: a fake docker, podman or buildah on PATH records every call (and
answers pushes with a digest), so the test sees exactly what would be built, tagged and pushed."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines import images
from tests.contract import manifest_tools as mt

REGISTRY = "registry.example.com:5000/team"  # a port: references must not be split at the first colon
CORE = {"components": "components/Dockerfile", "components-cuda": "components/Dockerfile.cuda", "serving": "serving/Dockerfile"}
DOCKERFILES = {**CORE, "components-spark": "components/Dockerfile.spark"}  # the Spark one with --with-spark

# Records argv as one JSON line in $FAKE_BUILDER_LOG. A push answers like the real tool: docker prints the
# digest, podman and buildah write it to --digestfile. The digest is derived from the reference.
FAKE_BUILDER = """#!{python}
import hashlib, json, os, sys
name = os.path.basename(sys.argv[0])
with open(os.environ["FAKE_BUILDER_LOG"], "a") as log:
    log.write(json.dumps([name, *sys.argv[1:]]) + "\\n")
if sys.argv[1] == "push":
    ref = sys.argv[-1]
    digest = "sha256:" + hashlib.sha256(ref.encode()).hexdigest()
    if "--digestfile" in sys.argv:
        open(sys.argv[sys.argv.index("--digestfile") + 1], "w").write(digest)
    elif os.environ.get("FAKE_DOCKER_QUIET_PUSH"):
        pass  # some docker setups print no digest line: the tool falls back to `image inspect`
    else:
        print("The push refers to repository [%s]" % ref.rsplit(":", 1)[0])
        print("%s: digest: %s size: 1234" % (ref.rsplit(":", 1)[1], digest))
if sys.argv[1:3] == ["image", "inspect"]:
    ref = sys.argv[-1]
    repo = ref.rsplit(":", 1)[0]
    print(json.dumps(["other.example.com/x@sha256:" + "0" * 64,
                      repo + "@sha256:" + hashlib.sha256(ref.encode()).hexdigest()]))
if os.environ.get("FAKE_BUILDER_FAIL") == sys.argv[1]:
    sys.exit(3)
"""


def _fake(tmp_path: Path, name: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    exe = bin_dir / name
    exe.write_text(FAKE_BUILDER.format(python=sys.executable))
    exe.chmod(0o755)
    return bin_dir


def _calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def _digest(ref: str) -> str:
    return "sha256:" + hashlib.sha256(ref.encode()).hexdigest()


def _flag(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


@pytest.mark.parametrize("builder", images.BUILDERS)
def test_builds_pushes_and_records_every_image(builder: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_fake(tmp_path, builder)))  # the only builder there, found by itself
    monkeypatch.setenv("FAKE_BUILDER_LOG", str(tmp_path / "calls.jsonl"))
    record = tmp_path / "images.json"
    command = ["build", "--registry", REGISTRY + "/", "--tag", "abc1234", "--code-version", "f" * 40, "--record", str(record)]
    assert images.main([*command, "--with-spark"]) == 0
    calls = _calls(tmp_path)
    assert [c[:2] for c in calls] == [[builder, "build"], [builder, "push"]] * len(DOCKERFILES)
    for (name, dockerfile), build, push in zip(DOCKERFILES.items(), calls[0::2], calls[1::2]):
        ref = f"{REGISTRY}/{name}:abc1234"
        assert _flag(build, "--file") == str(mt.REPO / dockerfile)
        assert build[-1] == str(mt.REPO), "the context is the repository root (.dockerignore allow-lists it)"
        assert _flag(build, "--tag") == ref
        assert _flag(build, "--build-arg") == "MLWF_CODE_VERSION=" + "f" * 40
        assert "--platform" not in build
        assert push[-1] == ref
    data = json.loads(record.read_text())
    assert data["builder"] == builder and data["tag"] == "abc1234" and data["registry"] == REGISTRY
    for name in DOCKERFILES:
        entry = data["images"][name]
        digest = _digest(f"{REGISTRY}/{name}:abc1234")
        assert entry["digest"] == digest
        assert entry["reference"] == f"{REGISTRY}/{name}@{digest}"
    # without --with-spark: the three images every install needs, and a record that still compiles and pins
    (tmp_path / "calls.jsonl").unlink()
    assert images.main(command) == 0
    assert [_flag(c, "--tag").split("/")[-1] for c in _calls(tmp_path)[0::2]] == [f"{n}:abc1234" for n in CORE]
    assert set(json.loads(record.read_text())["images"]) == set(CORE)
    assert images.compile_args(record)[1].startswith(f"{REGISTRY}/components@sha256:")


def test_docker_digest_from_image_inspect_when_push_prints_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(_fake(tmp_path, "docker")))
    monkeypatch.setenv("FAKE_BUILDER_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_DOCKER_QUIET_PUSH", "1")
    record = tmp_path / "images.json"
    assert images.main(["build", "--registry", REGISTRY, "--tag", "t", "--code-version", "v", "--record", str(record)]) == 0
    assert [c[1] for c in _calls(tmp_path)] == ["build", "push", "image"] * len(CORE)
    serving = json.loads(record.read_text())["images"]["serving"]
    assert serving["digest"] == _digest(f"{REGISTRY}/serving:t")


def test_no_builder_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    record = tmp_path / "images.json"
    assert images.main(["build", "--registry", REGISTRY, "--tag", "t", "--code-version", "v", "--record", str(record)]) == 2
    err = capsys.readouterr().err
    assert "no image builder found on PATH (looked for docker or podman or buildah)" in err
    assert not record.exists()


def test_a_failed_push_writes_no_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PATH", str(_fake(tmp_path, "podman")))
    monkeypatch.setenv("FAKE_BUILDER_LOG", str(tmp_path / "calls.jsonl"))
    monkeypatch.setenv("FAKE_BUILDER_FAIL", "push")
    record = tmp_path / "images.json"
    assert images.main(["build", "--registry", REGISTRY, "--tag", "t", "--code-version", "v", "--record", str(record)]) == 2
    assert "push registry.example.com:5000/team/components:t failed (exit 3)" in capsys.readouterr().err
    assert len(_calls(tmp_path)) == 2 and not record.exists()


def test_make_images_passes_registry_tag_platform_and_defaults_the_tag_to_git(tmp_path: Path) -> None:
    """Through the Makefile, as a user runs it: MLWF_* variables in, the short git sha as the tag."""
    make, git = shutil.which("make"), shutil.which("git")
    if make is None or git is None:
        raise AssertionError("make and git are needed to test `make images`")
    bin_dir = _fake(tmp_path, "docker")
    record = tmp_path / "out" / "images.json"
    env = {"PATH": f"{bin_dir}:{Path(git).parent}", "FAKE_BUILDER_LOG": str(tmp_path / "calls.jsonl"), "HOME": str(tmp_path)}
    proc = subprocess.run(
        [
            make,
            "--no-print-directory",
            "images",
            f"PYTHON={sys.executable}",
            f"MLWF_REGISTRY={REGISTRY}",
            "MLWF_PLATFORM=linux/amd64",
            "MLWF_WITH_SPARK=1",
            f"IMAGES_RECORD={record}",
        ],
        cwd=mt.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    short, full = images.git_version()
    builds = [c for c in _calls(tmp_path) if c[1] == "build"]
    assert [_flag(c, "--tag") for c in builds] == [f"{REGISTRY}/{n}:{short}" for n in DOCKERFILES]
    assert {_flag(c, "--build-arg") for c in builds} == {f"MLWF_CODE_VERSION={full}"}
    assert {_flag(c, "--platform") for c in builds} == {"linux/amd64"}
    assert json.loads(record.read_text())["tag"] == short
    assert (tmp_path / "out" / "overlays" / "dev" / "kustomization.yaml").is_file()


def _record(tmp_path: Path) -> Path:
    record = tmp_path / "images.json"
    entries = {}
    for name, dockerfile in DOCKERFILES.items():
        digest = _digest(name)
        entries[name] = {
            "repository": f"{REGISTRY}/{name}",
            "tag": "t",
            "digest": digest,
            "reference": f"{REGISTRY}/{name}@{digest}",
            "dockerfile": dockerfile,
        }
    record.write_text(json.dumps({"registry": REGISTRY, "tag": "t", "code_version": "v", "builder": "docker", "images": entries}))
    return record


def test_compile_pins_the_recorded_components_digest(tmp_path: Path) -> None:
    """What `make compile` runs once build/images.json exists: every step's image is the pushed digest."""
    from pipelines import cli

    args = images.compile_args(_record(tmp_path))
    reference = f"{REGISTRY}/components@{_digest('components')}"
    assert args == ["--image", reference]
    out = tmp_path / "training.yaml"
    assert cli.main(["compile", "--out", str(out), *args]) == 0
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    assert {e["container"]["image"] for e in executors.values()} == {reference}


def test_a_bad_record_is_refused(tmp_path: Path) -> None:
    record = _record(tmp_path)
    data = json.loads(record.read_text())
    data["images"]["serving"]["digest"] = "sha256:short"
    record.write_text(json.dumps(data))
    with pytest.raises(images.ImageBuildError, match="not a valid image record"):
        images.compile_args(record)
    with pytest.raises(images.ImageBuildError, match="run `make images` first"):
        images.compile_args(tmp_path / "missing.json")


def test_overlays_pin_the_pushed_images_by_digest(tmp_path: Path) -> None:
    written = images.write_overlays(_record(tmp_path), tmp_path / "overlays")
    assert sorted(p.parent.name for p in written) == ["dev", "prod"]
    proc = subprocess.run([str(mt.kubectl()), "kustomize", str(tmp_path / "overlays" / "dev")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    objs = [o for o in yaml.safe_load_all(proc.stdout) if o]
    found = dict(mt.images(objs))
    runtime = found["ClusterServingRuntime mlwf-bundle-runtime kserve-container"]
    assert runtime == f"{REGISTRY}/serving@{_digest('serving')}"
    ours = [image for image in found.values() if "/mlwf/" in image or REGISTRY in image]
    assert ours and all(image.startswith(REGISTRY) and "@sha256:" in image for image in ours), ours
    assert len(objs) == len(mt.render("overlays/dev")), "the generated overlay must render the same objects"


def test_overlays_pin_the_image_settings_by_digest(tmp_path: Path) -> None:
    """kustomize's `images:` leaves ConfigMap values alone: the generated overlay sets the settings keys that name
    an image (the TrainJob nodes', the Spark driver's and executors') to the pushed references."""
    images.write_overlays(_record(tmp_path), tmp_path / "overlays")
    proc = subprocess.run([str(mt.kubectl()), "kustomize", str(tmp_path / "overlays" / "prod")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    settings = next(
        o for o in yaml.safe_load_all(proc.stdout) if o and o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mlwf-settings"
    )
    assert settings["data"]["MLWF_SPARK_IMAGE"] == f"{REGISTRY}/components-spark@{_digest('components-spark')}"
    assert settings["data"]["MLWF_TRAINJOB_IMAGE"] == f"{REGISTRY}/components@{_digest('components')}"
    assert settings["data"]["MLWF_STATE_DIR"] == "s3://mlwf-prod/state", "the overlay's own settings are kept"


def test_image_settings_name_the_release_images() -> None:
    """Each settings key the overlays pin names, before a release, the image it is pinned to."""
    data = yaml.safe_load((mt.REPO / "manifests" / "base" / "settings.yaml").read_text())["data"]
    assert set(images.SETTINGS_IMAGES.values()) <= {i.name for i in (*images.IMAGES, images.SPARK_IMAGE)}
    for key, name in images.SETTINGS_IMAGES.items():
        assert data[key].startswith(f"{images.RELEASE_REGISTRY}/{name}:"), (key, data[key])


def _instructions(dockerfile: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (mt.REPO / dockerfile).read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += stripped.rstrip("\\") + " "
        if not stripped.endswith("\\"):
            lines.append(current.strip())
            current = ""
    return lines


def test_spark_image_matches_the_components_image_and_spark() -> None:
    """Same pinned base and the same venv build as the step image; SPARK_HOME is pyspark's install in that venv,
    where the default main file lives; Spark's entry point; the hadoop-aws version is the Hadoop pyspark ships,
    and the jars are checked by sha256 before use."""
    spark, components = _instructions("components/Dockerfile.spark"), _instructions("components/Dockerfile")
    base = next(line for line in components if line.startswith("ARG PYTHON_IMAGE="))
    assert base in spark and "@" not in base.split("=", 1)[1] and base.split(":", 1)[1] != "latest"
    build = components[components.index("FROM ${PYTHON_IMAGE} AS build") : components.index("FROM ${PYTHON_IMAGE}")]
    assert spark[spark.index("FROM ${PYTHON_IMAGE} AS build") :][: len(build)] == build, "the venv is built as for the step image"
    env = [line for line in spark if line.startswith("ENV PATH=")][-1]  # the final stage's
    home = re.search(r"SPARK_HOME=(\S+)", env)
    assert home and "JAVA_HOME=/opt/java" in env
    from dataclasses import fields

    from components.core.settings import Settings

    main_file = next(f.default for f in fields(Settings) if f.name == "spark_main_file")
    assert isinstance(main_file, str) and main_file.startswith(f"local://{home.group(1).rsplit('/pyspark', 1)[0]}/components/")
    assert 'ENTRYPOINT ["/opt/entrypoint.sh"]' in spark
    assert "USER 1000:1000" in spark
    hadoop = next(line for line in spark if line.startswith("ARG HADOOP_VERSION=")).split("=", 1)[1]
    import pyspark

    assert (Path(pyspark.__file__).parent / "jars" / f"hadoop-client-api-{hadoop}.jar").is_file(), "hadoop-aws must match pyspark's Hadoop"
    assert any("sha256sum --check --strict" in line for line in spark)


ENTRYPOINT = mt.REPO / "components" / "spark-entrypoint.sh"
SPARK_ENV = {"SPARK_HOME": "/opt/spark-home", "JAVA_HOME": "/opt/java", "PATH": "/usr/bin:/bin", "MLWF_SPARK_ENTRYPOINT_DRY_RUN": "1"}


def _entrypoint(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(ENTRYPOINT), *args], env={**SPARK_ENV, **env}, capture_output=True, text=True, timeout=30)


def test_spark_entrypoint_runs_the_driver_in_client_mode_bound_to_the_pod() -> None:
    """What the Spark Operator's driver pod runs: `driver --properties-file ... --class ... <main file> <args>`."""
    args = [
        "--properties-file",
        "/opt/spark/conf/spark.properties",
        "--class",
        "org.apache.spark.deploy.PythonRunner",
        "local:///m.py",
        "--x",
        "a b",
    ]
    done = _entrypoint(["driver", *args], {"SPARK_DRIVER_BIND_ADDRESS": "10.0.0.7"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\0")[:-1] == [
        "/opt/spark-home/bin/spark-submit",
        "--conf",
        "spark.driver.bindAddress=10.0.0.7",
        "--conf",
        "spark.executorEnv.SPARK_DRIVER_POD_IP=10.0.0.7",
        "--deploy-mode",
        "client",
        *args,
    ]


def test_spark_entrypoint_starts_an_executor_from_its_pod_environment() -> None:
    env = {
        "SPARK_DRIVER_URL": "spark://CoarseGrainedScheduler@driver-svc:7078",
        "SPARK_EXECUTOR_ID": "3",
        "SPARK_EXECUTOR_CORES": "2",
        "SPARK_APPLICATION_ID": "spark-abc",
        "SPARK_EXECUTOR_POD_IP": "10.0.0.9",
        "SPARK_EXECUTOR_MEMORY": "2g",
        "SPARK_EXECUTOR_POD_NAME": "app-exec-3",
        "SPARK_RESOURCE_PROFILE_ID": "0",
        # Spark numbers the JVM options; their order matters (a later -D wins) and 10 sorts after 2.
        **{f"SPARK_JAVA_OPT_{i}": f"-Dopt{i}=with space" for i in (0, 2, 10)},
    }
    done = _entrypoint(["executor"], env)
    assert done.returncode == 0, done.stderr
    cmd = done.stdout.split("\0")[:-1]
    assert cmd[:4] == ["/opt/java/bin/java", "-Dopt0=with space", "-Dopt2=with space", "-Dopt10=with space"]
    assert cmd[4:8] == ["-Xms2g", "-Xmx2g", "-cp", "/opt/spark-home/jars/*"]
    assert cmd[8] == "org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend"
    flags = dict(zip(cmd[9::2], cmd[10::2]))
    assert flags == {
        "--driver-url": env["SPARK_DRIVER_URL"],
        "--executor-id": "3",
        "--cores": "2",
        "--app-id": "spark-abc",
        "--hostname": "10.0.0.9",
        "--resourceProfileId": "0",
        "--podName": "app-exec-3",
    }


def test_spark_entrypoint_passes_other_commands_through_and_names_what_an_executor_lacks() -> None:
    done = _entrypoint(["python3", "-m", "x"], {})
    assert done.returncode == 0 and done.stdout.split("\0")[:-1] == ["python3", "-m", "x"]
    done = _entrypoint(["executor"], {"SPARK_DRIVER_URL": "spark://d:7078"})
    assert done.returncode == 64 and "executor pod lacks SPARK_EXECUTOR_ID" in done.stderr
    done = _entrypoint(["driver"], {})
    assert done.returncode != 0 and "driver pod lacks SPARK_DRIVER_BIND_ADDRESS" in done.stderr
