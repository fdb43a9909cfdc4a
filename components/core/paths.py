"""Where things live: the state store's layout and the names derived from a model's name.

Every stage reads and writes the state store (a local directory or an s3:// prefix) through these, so the
layout is written down once.
"""

from __future__ import annotations

from typing import Any

from components.core import storage


def service_name(model_name: str) -> str:
    """A DNS-1035 name for the InferenceService and the local model server."""
    name = "".join(ch if ch.isalnum() else "-" for ch in model_name.lower()).strip("-")
    return (name if name[:1].isalpha() else f"m-{name}")[:45]


def log_root(settings: Any) -> str:
    return storage.join(settings.state_dir, "request_logs")


def monitor_home(settings: Any, service: str) -> str:
    return storage.join(settings.state_dir, "monitoring", service)
