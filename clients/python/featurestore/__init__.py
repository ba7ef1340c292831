"""Python client of the feature store.

`Client` (blocking) and `AsyncClient` (asyncio) wrap one long-lived gRPC channel with
deadlines, retries of idempotent calls, auth and typed results; their errors are
`FeatureStoreError` subclasses. The generated protobuf and gRPC modules live in
`featurestore.registry.v1` and `featurestore.serving.v1`; `FeatureStoreClient` holds the
bare stubs. DataFrames need the `pandas` extra, Parquet and Arrow tables the `parquet`
extra, definitions files and the `featurestore` CLI the `cli` extra.
"""

from featurestore._aio import AsyncClient, AsyncPusher
from featurestore._client import FeatureStoreClient
from featurestore._common import FeatureVector, RetryPolicy, WriteResult
from featurestore._definitions import (
    Change,
    DefinitionError,
    Definitions,
    FieldChange,
    Plan,
    apply_plan,
    async_apply_plan,
    load_definitions,
    plan_definitions,
)
from featurestore._errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    ErrorDetails,
    EtagMismatch,
    FailedPrecondition,
    FeatureStoreError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    error_details,
)
from featurestore._parquet import write_training_parquet
from featurestore._sync import Client, Pusher
from featurestore._values import FeatureResult, python_value

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncClient",
    "AsyncPusher",
    "Change",
    "Client",
    "DeadlineExceeded",
    "DefinitionError",
    "Definitions",
    "ErrorDetails",
    "EtagMismatch",
    "FailedPrecondition",
    "FeatureResult",
    "FeatureStoreClient",
    "FeatureStoreError",
    "FeatureVector",
    "FieldChange",
    "InvalidArgument",
    "NotFound",
    "PermissionDenied",
    "Plan",
    "Pusher",
    "ResourceExhausted",
    "RetryPolicy",
    "Unauthenticated",
    "Unavailable",
    "WriteResult",
    "apply_plan",
    "async_apply_plan",
    "error_details",
    "load_definitions",
    "plan_definitions",
    "python_value",
    "write_training_parquet",
]
