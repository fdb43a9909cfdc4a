"""The batch scoring pipeline: a model version (e.g. NAME@champion) scores a file or prefix of rows to Parquet.

One step (score_op): the rows are validated by the dataset's suite (bad rows quarantined beside the output, as
training quarantines them; the label column optional), the valid ones scored by the model bundle, rows in =
scored + quarantined checked. Run it once with `mlwf score --local`, or on a schedule with
`mlwf schedule --pipeline scoring` (package pipelines/compiled/scoring.yaml). Not cached: the alias moves.

The data stage's part of the step (reading rows into its shape, validating them) is handed to the step by
pipelines/scoring_data.py.
"""

# No `from __future__ import annotations`: KFP reads the pipeline's parameter types from real annotations.
from typing import Any

from kfp import dsl

from pipelines.local import LocalRun
from pipelines.ops import score_op
from pipelines.training import cluster_wiring, one_line_args

PIPELINE_NAME = "mlwf-scoring"


@dsl.pipeline(name=PIPELINE_NAME, description="Validate rows with the dataset's suite and score them with a registered model version.")
@one_line_args
def scoring_pipeline(
    model: str = "transactions_classifier@champion",
    data_uri: str = "s3://mlwf/scoring/transactions.csv",
    out_uri: str = "",
    dataset_spec: str = "",
) -> None:
    """Validate rows with the dataset's suite and score them with a registered model version.

    Args:
        model: The registered model version that scores: NAME@ALIAS (e.g. transactions_classifier@champion),
            NAME/VERSION or models:/NAME/VERSION.
        data_uri: The rows to score: a CSV or Parquet file, or a directory or s3:// prefix of them. The label
            column is optional; every feature column is required.
        out_uri: The scores' Parquet file (local path or s3://); the quarantined rows go beside it as
            <name>.quarantine.parquet. Empty: only the step's output artifacts hold them.
        dataset_spec: The dataset spec whose validation suite checks the rows (bundled name, path or s3://).
            Empty: the dataset the model was trained on.
    """
    task = cluster_wiring(score_op(model=model, data_uri=data_uri, out_uri=out_uri, dataset_spec=dataset_spec), retries=1)
    task.set_display_name("score").set_caching_options(False).set_cpu_limit("2").set_memory_limit("8G")


def run_scoring_local(arguments: dict[str, Any]) -> LocalRun:
    """Run the scoring pipeline with kfp.local, as pipelines.local.run_local runs the training one."""
    from pipelines.local import run_pipeline_locally

    return run_pipeline_locally(scoring_pipeline, arguments, PIPELINE_NAME)
