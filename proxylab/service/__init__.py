"""The model-zoo query service: HTTP over the retrieval index (proxylab.service.app) and its Python client.

``Client`` needs only httpx; ``create_app`` needs fastapi (the ``service`` extra), imported on first use.
"""
from proxylab.service.client import Client, ServiceError

__all__ = ["Client", "ServiceError", "create_app"]


def __getattr__(name):
    if name == "create_app":
        from proxylab.service.app import create_app

        return create_app
    raise AttributeError(f"module 'proxylab.service' has no attribute '{name}'")
