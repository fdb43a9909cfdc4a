# checkov loads external checks only from directories that hold an __init__.py: without this file
# `--external-checks-dir manifests/policies` loads nothing, logs one INFO line and reports no result at all.
