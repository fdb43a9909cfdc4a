"""What `mlwf run` checks before any step starts: a run that cannot succeed is refused in one line, at no cost."""

from __future__ import annotations


def check_inputs(dataset: str, source: str, gate_policy: str = "", engine: str = "") -> None:
    """Fail in one line before any step starts: a missing spec or input, the spark engine without pyspark or Java,
    or a gate policy that names an unknown model family or metric or a negative cost, is not worth a pipeline run.

    Bring your own data: a local spec without a validation suite beside it gets one written (and the
    user is told, to review and commit it); a suite that is stale against its spec is an error that
    names the command to refresh it, because someone may have reviewed the old one.
    """
    from components.core import storage
    from components.core.settings import get_settings
    from components.core.spec import load_spec
    from components.data.ingest import check_source
    from components.data.suite import load_suite, suite_path, write_suite
    from components.evaluation.policy import policy_for_run

    if (engine or get_settings().engine) == "spark":  # pyspark or Java missing: say what to install, run nothing
        from components.core.spark import require_spark

        require_spark()
    spec = load_spec(dataset)
    policy_for_run(gate_policy, dataset, spec.name)  # the train step reads its candidates and costs from it
    check_source(spec, source, get_settings().state_dir)  # reads the state store, writes nothing
    path = suite_path(dataset)
    if not storage.is_s3(path) and not storage.exists(path):
        path, suite, _ = write_suite(dataset)
        print(
            f"mlwf: wrote the validation suite {path} ({len(suite.expectations)} expectations, version {suite.version}) "
            "beside the spec; review it and keep it with the spec"
        )
    load_suite(spec, dataset)
