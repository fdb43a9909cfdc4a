"""Governance: the production-readiness report of a registered model version (readiness, evidence, report, step)."""
