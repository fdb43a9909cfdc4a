"""The Kubernetes API client the steps use: in-cluster credentials first, then a kubeconfig."""

from __future__ import annotations

from typing import Any


def custom_objects_api(api_client: Any = None, error: type[Exception] = RuntimeError, purpose: str = "") -> Any:
    """A CustomObjectsApi on `api_client`, or on credentials found here; raises `error` naming both failures."""
    from kubernetes import client, config

    if api_client is None:
        try:
            config.load_incluster_config()
        except config.ConfigException as in_cluster:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as kubeconfig:
                raise error(
                    f"no Kubernetes credentials{purpose}: in-cluster config failed ({in_cluster}) and kubeconfig failed ({kubeconfig})"
                ) from kubeconfig
        api_client = client.ApiClient()
    return client.CustomObjectsApi(api_client)
