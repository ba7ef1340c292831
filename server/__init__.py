"""The feature store server: Feature Registry and Feature Store gRPC services."""

from server._app import App, start
from server._settings import Settings

__all__ = ["App", "Settings", "start"]
