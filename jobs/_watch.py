"""Keep computing: the whole set every so often, and a feature as soon as its definition changes.

What a scheduler (the Kubernetes CronJob) does in production, in one long-lived
Spark session, for the local stack and for small deployments.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import grpc
from pyspark.sql import SparkSession

from featurestore.registry.v1 import feature_pb2 as pb
from jobs._metrics import PipelineMetrics
from jobs._run import RunConfig, run


def _due(features: Sequence[pb.Feature], computed: dict[str, int], everything: bool) -> list[pb.Feature]:
    if everything:
        return list(features)
    return [f for f in features if computed.get(f.name) != f.revision]


def watch(
    spark: SparkSession,
    list_features: Callable[[], Sequence[pb.Feature]],
    config_at: Callable[[datetime], RunConfig],
    *,
    every: float,
    poll: float = 2.0,
    progress: Callable[[str], None] = print,
    metrics: PipelineMetrics | None = None,
) -> None:
    """Run forever: all features every `every` seconds, new or changed ones within `poll` seconds.

    A failing round (registry unreachable, a Spark error) is reported and retried at the
    next poll: a long-running pipeline outlives its dependencies' outages.
    """
    computed: dict[str, int] = {}  # feature -> the revision last computed (or found broken)
    last_full = float("-inf")
    while True:
        try:
            features = list_features()
            everything = time.monotonic() - last_full >= every
            due = _due(features, computed, everything)
            if due:
                report = run(spark, due, config_at(datetime.now(UTC)), progress, metrics)
                progress(report.summary())
                computed.update({f.name: f.revision for f in due})
                last_full = time.monotonic() if everything else last_full
        except grpc.RpcError as err:
            progress(f"registry unavailable ({err.code().name}); retrying")
        except Exception as err:  # noqa: BLE001 - reported, and the next round retries
            progress(f"round failed ({type(err).__name__}: {err}); retrying")
        time.sleep(poll)
