"""The compiled pipeline package, parsed back: every task, the gate, resources, retries, images and no secrets."""

from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from pipelines.compile import compile_package
from pipelines.training import SECRETS, SETTINGS_CONFIG_MAP

SECRET_VALUE = "do-not-leak-4f1c9a"
IMAGE = "registry.example.com/mlwf/components@sha256:" + "a" * 64


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    # Values in the compiling environment must never reach the package.
    for var in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLWF_FEAST_REGISTRY"):
        mp.setenv(var, SECRET_VALUE)
    out = tmp_path_factory.mktemp("pkg") / "training.yaml"
    compile_package(str(out), IMAGE)
    mp.undo()
    text = out.read_text()
    docs = list(yaml.safe_load_all(text))
    spec = json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    return text, spec, docs[1]


def test_every_step_is_a_task(compiled):
    _, spec, _ = compiled
    root = spec.root.dag.tasks
    assert set(root) == {"ingest-op", "validate-op", "features-op", "train-op", "evaluate-op", "condition-1"}
    branch = spec.components[root["condition-1"].component_ref.name].dag.tasks
    assert set(branch) == {"deploy-op", "readiness-op"}


def test_deploy_is_gated_on_the_evaluation_output(compiled):
    _, spec, _ = compiled
    condition = spec.root.dag.tasks["condition-1"].trigger_policy.condition
    assert condition == "inputs.parameter_values['pipelinechannel--evaluate-op-Output'] == true"


def test_training_requests_a_gpu_as_a_parameter(compiled):
    _, spec, _ = compiled
    resources = spec.deployment_spec["executors"]["exec-train-op"]["container"]["resources"]
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "{{$.inputs.parameters['pipelinechannel--gpu_count']}}"
    assert spec.root.input_definitions.parameters["gpu_count"].default_value.number_value == 1


def test_retries_on_the_steps_that_touch_the_network(compiled):
    _, spec, _ = compiled
    tasks = dict(spec.root.dag.tasks)
    for name in ("ingest-op", "features-op", "train-op"):
        assert tasks[name].retry_policy.max_retry_count >= 1, name
    assert spec.components["comp-condition-1"].dag.tasks["deploy-op"].retry_policy.max_retry_count == 1
    assert spec.components["comp-condition-1"].dag.tasks["deploy-op"].caching_options.enable_cache is False


def test_every_step_runs_in_the_configured_image_without_installs(compiled):
    text, spec, _ = compiled
    for name, executor in spec.deployment_spec["executors"].items():
        container = executor["container"]
        assert container["image"] == IMAGE, name
        assert "pip install" not in " ".join(container["command"]), name
    assert "placeholder" not in text


def test_secrets_by_reference_only(compiled):
    text, _, platform = compiled
    assert SECRET_VALUE not in text
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, config in executors.items():
        secrets = {s["secretName"] for s in config["secretAsEnv"]}
        assert secrets == set(SECRETS), name
        assert config["configMapAsEnv"][0]["configMapName"] == SETTINGS_CONFIG_MAP


def test_committed_package_is_up_to_date(tmp_path):
    committed = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "training.yaml"
    fresh = tmp_path / "training.yaml"
    compile_package(str(fresh), "ghcr.io/mlwf/components:0.1.0")
    assert committed.exists(), "run `make compile` and commit pipelines/compiled/training.yaml"
    assert committed.read_text() == fresh.read_text(), "pipelines/compiled/training.yaml is stale: run `make compile`"


def test_gpu_placement_is_resolved_per_run(compiled):
    """Tolerations and node selector are run parameters (empty by default), so gpu_count=0 fits a CPU-only node."""
    _, spec, platform = compiled
    train = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train-op"]
    assert train["tolerations"] == [{"tolerationJson": {"componentInputParameter": "gpu_tolerations"}}]
    assert train["nodeSelector"] == {"nodeSelectorJson": {"componentInputParameter": "gpu_node_selector"}}
    params = spec.root.input_definitions.parameters
    assert list(params["gpu_tolerations"].default_value.list_value.values) == []
    assert dict(params["gpu_node_selector"].default_value.struct_value.fields) == {}
    others = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert all("nodeSelector" not in config for name, config in others.items() if name != "exec-train-op")


def test_gpu_placement_arguments_follow_the_settings(monkeypatch):
    from components.core.settings import get_settings
    from pipelines.training import gpu_placement_arguments

    monkeypatch.setenv("MLWF_GPU_TOLERATIONS", '{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}')
    monkeypatch.setenv("MLWF_GPU_NODE_SELECTOR", '{"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}')
    settings = get_settings()
    with_gpu, without = gpu_placement_arguments(2, settings), gpu_placement_arguments(0, settings)
    assert with_gpu["gpu_node_selector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert without["gpu_node_selector"] == {} and without["gpu_count"] == 0  # a CPU run is never pinned to GPU nodes
    assert (
        with_gpu["gpu_tolerations"]
        == without["gpu_tolerations"]
        == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    )
    monkeypatch.setenv("MLWF_GPU_NODE_SELECTOR", '["not", "an", "object"]')
    with pytest.raises(ValueError, match="MLWF_GPU_NODE_SELECTOR must be a JSON object"):
        get_settings()


def test_train_nodes_and_gpus_per_node_reach_the_train_step(compiled):
    _, spec, _ = compiled
    inputs = spec.root.dag.tasks["train-op"].inputs.parameters
    assert inputs["nodes"].component_input_parameter == "train_nodes"
    assert inputs["gpus_per_node"].component_input_parameter == "gpus_per_node"
    assert spec.root.input_definitions.parameters["train_nodes"].default_value.number_value == 1


def test_the_engine_parameter_reaches_the_validate_step(compiled):
    _, spec, _ = compiled
    assert spec.root.dag.tasks["validate-op"].inputs.parameters["engine"].component_input_parameter == "engine"
    assert spec.root.input_definitions.parameters["engine"].default_value.string_value == ""  # MLWF_ENGINE decides


@pytest.fixture(scope="module")
def compiled_monitoring(tmp_path_factory):
    from pipelines.monitoring import monitoring_pipeline

    out = tmp_path_factory.mktemp("pkg") / "monitoring.yaml"
    compile_package(str(out), IMAGE, monitoring_pipeline)
    docs = list(yaml.safe_load_all(out.read_text()))
    return json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)


def test_every_pipeline_parameter_is_described_for_the_run_form(compiled, compiled_monitoring, compiled_scoring):
    """The docstrings' `Args:` reach the package: the KFP run form shows them beside each parameter."""
    import inspect

    from pipelines.monitoring import monitoring_pipeline
    from pipelines.scoring import scoring_pipeline
    from pipelines.training import training_pipeline

    packages = ((compiled[1], training_pipeline), (compiled_monitoring, monitoring_pipeline), (compiled_scoring[1], scoring_pipeline))
    for spec, pipeline in packages:
        params = spec.root.input_definitions.parameters
        assert set(params) == set(inspect.signature(pipeline.pipeline_func).parameters)
        undescribed = [name for name, p in params.items() if len(p.description.strip()) < 20]
        assert not undescribed, f"{spec.pipeline_info.name}: no description for {undescribed}"
        assert all("\n" not in p.description for p in params.values()), "a wrapped docstring line reached the run form"
    training = compiled[1].root.input_definitions.parameters
    for sentinel in ("min_roc_auc", "max_p99_latency_ms", "max_regression"):
        assert training[sentinel].default_value.number_value == -1.0
        assert "-1.0" in training[sentinel].description and "policy file" in training[sentinel].description
    assert "Empty" in training["gate_policy"].description


def test_evaluate_writes_the_verdict_as_markdown(compiled):
    _, spec, _ = compiled
    outputs = spec.components["comp-evaluate-op"].output_definitions
    assert outputs.artifacts["verdict"].artifact_type.schema_title == "system.Markdown"
    assert "FAIL" in outputs.artifacts["verdict"].description
    assert set(outputs.parameters) == {"Output"}  # the single bool dsl.If reads (kfp.local, see pipelines/ops.py)


def test_train_and_evaluate_learn_their_pipeline_run(compiled):
    _, spec, _ = compiled
    tasks = spec.root.dag.tasks
    train, evaluate = tasks["train-op"].inputs.parameters, tasks["evaluate-op"].inputs.parameters
    assert train["pipeline_run"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
    assert train["pipeline_run_name"].runtime_value.constant.string_value == "{{$.pipeline_job_name}}"
    assert evaluate["pipeline_run"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"
    # the same id ingest records on quarantined rows and lineage, so an MLflow run joins with them
    assert tasks["ingest-op"].inputs.parameters["run_id"].runtime_value.constant.string_value == "{{$.pipeline_job_uuid}}"


def test_every_step_is_told_the_image_it_runs_in(compiled):
    """The step records this image in MLflow: it must be the container's own image, nothing else."""
    _, spec, _ = compiled
    for name, executor in spec.deployment_spec["executors"].items():
        container = executor["container"]
        assert {"name": "MLWF_STEP_IMAGE", "value": container["image"]} in list(container["env"]), name


def test_the_kfp_ui_engine_and_spark_settings_are_optional_in_the_config_map(compiled):
    """A ConfigMap from before these settings still starts every pod; each step still reads them when set."""
    from pipelines.training import OPTIONAL_SETTINGS_KEYS

    _, _, platform = compiled
    assert {"MLWF_KFP_UI_URL", "MLWF_ENGINE", "MLWF_SPARK_IMAGE", "MLWF_SPARK_EXECUTOR_INSTANCES"} <= set(OPTIONAL_SETTINGS_KEYS)
    for name, config in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        optional = [c for c in config["configMapAsEnv"] if c.get("optional")]
        assert [k["configMapKey"] for c in optional for k in c["keyToEnv"]] == list(OPTIONAL_SETTINGS_KEYS), name


def test_committed_monitoring_package_is_up_to_date(tmp_path):
    from pipelines.monitoring import monitoring_pipeline

    committed = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "monitoring.yaml"
    fresh = tmp_path / "monitoring.yaml"
    compile_package(str(fresh), "ghcr.io/mlwf/components:0.1.0", monitoring_pipeline)
    assert committed.read_text() == fresh.read_text(), "pipelines/compiled/monitoring.yaml is stale: run `make compile`"


@pytest.fixture(scope="module")
def compiled_scoring(tmp_path_factory):
    from pipelines.scoring import scoring_pipeline

    mp = pytest.MonkeyPatch()
    for var in ("AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_PASSWORD", "MLWF_FEAST_REGISTRY"):
        mp.setenv(var, SECRET_VALUE)
    out = tmp_path_factory.mktemp("pkg") / "scoring.yaml"
    compile_package(str(out), IMAGE, scoring_pipeline)
    mp.undo()
    text = out.read_text()
    docs = list(yaml.safe_load_all(text))
    return text, json_format.ParseDict(docs[0], pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False), docs[1]


def test_the_scoring_package_is_one_uncached_step_wired_like_the_others(compiled_scoring):
    text, spec, platform = compiled_scoring
    assert spec.pipeline_info.name == "mlwf-scoring"
    assert set(spec.root.dag.tasks) == {"score-op"}
    task = spec.root.dag.tasks["score-op"]
    assert task.caching_options.enable_cache is False, "the alias a scoring run names moves: never reuse a cached result"
    assert task.retry_policy.max_retry_count == 1
    assert set(spec.components["comp-score-op"].output_definitions.artifacts) == {"scores", "quarantine", "summary"}
    container = spec.deployment_spec["executors"]["exec-score-op"]["container"]
    assert container["image"] == IMAGE and "pip install" not in " ".join(container["command"])
    assert {"name": "MLWF_STEP_IMAGE", "value": IMAGE} in list(container["env"])
    assert SECRET_VALUE not in text
    config = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-score-op"]
    assert {s["secretName"] for s in config["secretAsEnv"]} == set(SECRETS)
    assert config["configMapAsEnv"][0]["configMapName"] == SETTINGS_CONFIG_MAP


def test_committed_scoring_package_is_up_to_date(tmp_path):
    from pipelines.compile import SCORING_PACKAGE
    from pipelines.scoring import scoring_pipeline

    committed = Path(__file__).resolve().parents[2] / SCORING_PACKAGE
    fresh = tmp_path / "scoring.yaml"
    compile_package(str(fresh), "ghcr.io/mlwf/components:0.1.0", scoring_pipeline)
    assert committed.exists(), "run `make compile` and commit pipelines/compiled/scoring.yaml"
    assert committed.read_text() == fresh.read_text(), "pipelines/compiled/scoring.yaml is stale: run `make compile`"
