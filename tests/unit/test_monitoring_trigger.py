"""The retraining trigger names the inner failure, not the last line a failed child happened to print."""

from pipelines.trigger import error_line

KFP_LOCAL_OUTPUT = """
23:27:50.112 - INFO - Executing task 'deploy-op'
    Traceback (most recent call last):
      File "/x/components/deployment/local.py", line 240, in run_rollout
    components.deployment.local.DeployError: canary v2 of m (stable v1) rolled back: [10%] prediction_psi fail: PSI 3.1
23:27:57.120 - ERROR - Task 'deploy-op' finished with status FAILURE
    RuntimeError: Pipeline 'mlwf-training' finished with status FAILURE. Inner task failed: 'deploy-op'
    pipelines.local.PipelineFailed: Pipeline 'mlwf-training' finished with status FAILURE.
--------------------------------------------------------------------------------
"""


def test_the_innermost_exception_is_the_message():
    assert error_line(KFP_LOCAL_OUTPUT) == (
        "components.deployment.local.DeployError: canary v2 of m (stable v1) rolled back: [10%] prediction_psi fail: PSI 3.1"
    )


def test_without_an_exception_the_last_meaningful_line_and_never_a_separator():
    assert error_line("starting\nout of memory\n-----------\n\n") == "out of memory"
    assert error_line("") == "no output"
