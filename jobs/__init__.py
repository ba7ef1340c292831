"""Spark pipelines that compute registered features and materialize them.

`jobs.batch_pipeline` is the batch pipeline's command line; `jobs.run` computes
and writes a set of features in an existing Spark session (used by the local
stack and the tests); the `transform_*` functions are its pure computations.
`jobs.ingest` is bulk ingest's command line (`featurestore-ingest`); `jobs.bulk_ingest`
writes a DataFrame of precomputed features through the same sink.
"""

import os

# grpcio's fork handlers can break a subprocess started while channels are open (the child
# dies before exec: grpc/grpc#43055), and Spark starts its JVM that way. Nothing here forks
# without exec, so they are off; this must happen before gRPC initializes.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

from jobs._events import EventSchema, to_batch
from jobs._ingest import IngestConfig, IngestError, IngestReport, bulk_ingest, read_source, transform_ingest
from jobs._metrics import PipelineMetrics
from jobs._plan import FeatureSpec, PlanError, SourcePlan, plan, spec_of
from jobs._run import RunConfig, RunReport, run
from jobs._session import SessionConfig, build_session, register_warehouse
from jobs._stream_plan import select_streaming
from jobs._stream_run import StreamConfig, dead_letter_key
from jobs._stream_watch import QueryFailed, Streams, watch_streams
from jobs._transform import transform_features, transform_window
from jobs._valkey_source import EVENT_FIELD, stream_key

__all__ = [
    "EVENT_FIELD",
    "EventSchema",
    "FeatureSpec",
    "IngestConfig",
    "IngestError",
    "IngestReport",
    "PipelineMetrics",
    "PlanError",
    "QueryFailed",
    "RunConfig",
    "RunReport",
    "SessionConfig",
    "SourcePlan",
    "StreamConfig",
    "Streams",
    "build_session",
    "bulk_ingest",
    "dead_letter_key",
    "plan",
    "read_source",
    "register_warehouse",
    "run",
    "select_streaming",
    "spec_of",
    "stream_key",
    "to_batch",
    "transform_features",
    "transform_ingest",
    "transform_window",
    "watch_streams",
]
