"""Python client of the feature store.

The generated protobuf and gRPC modules live in `featurestore.registry.v1` and
`featurestore.serving.v1`; this package adds a client and error decoding.
"""

from featurestore._client import FeatureStoreClient
from featurestore._errors import ErrorDetails, error_details
from featurestore._parquet import python_value, write_training_parquet

__all__ = ["ErrorDetails", "FeatureStoreClient", "error_details", "python_value", "write_training_parquet"]
