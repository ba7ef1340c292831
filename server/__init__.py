"""The feature store server: Feature Registry and Feature Store gRPC services.

`python -m server` runs it; `server._app` is the composition root. Packages:
`server.core` (what everything shares: definitions, codec, errors, records),
`server.registry`, `server.online`, `server.offline`. Importing `server` loads
nothing but the settings, so the pipelines' Spark executors can use
`server.core` without the server.
"""

from server._settings import ENV_PREFIX, LOCAL_ENV_FILE, Settings, add_arguments, local_environment

__all__ = ["ENV_PREFIX", "LOCAL_ENV_FILE", "Settings", "add_arguments", "local_environment"]
