"""Serving a run directory over HTTP: a FastAPI app with dynamic batching, a web page and safe defaults."""

from dlforge.serve.config import ServeConfig
from dlforge.serve.server import serve

__all__ = ["ServeConfig", "create_app", "serve"]


def __getattr__(name):
    if name == "create_app":  # FastAPI is imported only when an app is built
        from dlforge.serve.app import create_app

        return create_app
    raise AttributeError(name)
