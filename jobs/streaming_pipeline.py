"""Streaming feature pipeline: compute registered STREAMING features from events, within seconds.

    python jobs/streaming_pipeline.py --feature-types=customer

A long-running Spark Structured Streaming application: one query per (entity
type, stream) reads the stream's JSON events (Valkey/Redis Streams), aggregates
them into per-minute tiles, combines the tiles into each feature's window and
writes the values online (only-newer) and to the offline history, exactly once
across crashes (checkpoints under --checkpoint-dir). New features are picked up
while it runs. It prints one line per micro-batch. Exit status: 0 when stopped
(SIGTERM, Ctrl-C), 1 when a query failed, 2 when it could not start. Flags
default to FEATURESTORE_<FLAG> variables, then to the stack `make up` runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")  # before gRPC initializes: see jobs/__init__.py

from jobs import QueryFailed, StreamConfig, Streams, select_streaming, watch_streams
from jobs._metrics import PipelineMetrics
from jobs._session import build_session
from jobs.batch_pipeline import (
    _conf,
    _csv,
    _own,
    _positive,
    _stop_on_sigterm,
    add_spark_arguments,
    load_features,
    session_config,
)
from server import local_environment


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}")
    return int(text)


def parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line; flags not given come from `env` (FEATURESTORE_<FLAG>), then defaults."""
    p = argparse.ArgumentParser(prog="streaming_pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--feature-types", type=_csv, required=True, help="entity types, comma-separated: customer,product")
    add_spark_arguments(p, env)  # registry, stores, metrics and Spark: the batch pipeline's flags
    _own(p, env, "--source", "valkey", choices=["valkey", "kafka"], help="where the event streams are")
    _own(p, env, "--source-url", "", help="Valkey/Redis URL of the event streams (default: --redis-url)")
    _own(p, env, "--kafka-bootstrap", "", help="Kafka bootstrap servers host:port,... (--source=kafka)")
    _own(
        p,
        env,
        "--kafka-reader",
        "python",
        choices=["python", "native"],
        help="python: confluent-kafka in a Spark Python data source; native: Spark's Kafka connector "
        "(format kafka), which must be on the classpath (production images)",
    )
    p.add_argument(
        "--kafka-option",
        type=_conf,
        action="append",
        default=[],
        help="a Kafka client setting key=value (security.protocol=SASL_SSL, sasl.mechanism=..., ...), repeatable",
    )
    _own(p, env, "--checkpoint-dir", "checkpoints/streaming", help="where the queries keep their checkpoints")
    _own(p, env, "--stream-partitions", "1", type=_positive, help="stream keys per stream (<stream>:0 ...)")
    _own(
        p,
        env,
        "--max-events-per-batch",
        "100000",
        type=_count,
        help="events per micro-batch at most, so a backlog after downtime is read in bounded batches (0: no limit)",
    )
    _own(p, env, "--trigger-seconds", "1", type=_seconds, help="seconds between micro-batches")
    _own(p, env, "--poll-seconds", "5", type=_seconds, help="seconds between reads of the registry")
    _own(
        p,
        env,
        "--heartbeat-file",
        "",
        help="touch this file after every registry poll in which every query runs (for a liveness probe)",
    )
    return p


def config(args: argparse.Namespace) -> StreamConfig:
    return StreamConfig(
        redis_url=args.redis_url,
        postgres_dsn=args.postgres_dsn,
        source_url=args.source_url or args.redis_url,
        checkpoint_dir=args.checkpoint_dir,
        partitions=args.stream_partitions,
        max_events_per_batch=args.max_events_per_batch,
        trigger_seconds=args.trigger_seconds,
        online_ttl=args.online_ttl,
        redis_cluster=args.redis_cluster,
        source=args.source,
        kafka_bootstrap=args.kafka_bootstrap,
        kafka_reader=args.kafka_reader,
        kafka_options=tuple(args.kafka_option),
    )


def _print(line: str) -> None:
    print(line, flush=True)


def run(args: argparse.Namespace, stop: threading.Event | None = None, spark: Any = None) -> int:
    """Run the queries until `stop` (or SIGTERM/Ctrl-C); the exit status."""
    own = spark is None
    spark = spark or build_session(session_config(args), "streaming-feature-pipeline")
    metrics = PipelineMetrics("streaming")
    if args.pipeline_metrics_port:
        metrics.serve(args.pipeline_metrics_port)
    streams = Streams(spark, config(args), _print, metrics)
    try:
        watch_streams(
            streams,
            lambda: select_streaming(
                load_features(args.registry, args.feature_types, args.registry_token, args.registry_ca_file),
                args.feature_types,
            ),
            poll=args.poll_seconds,
            stop=stop,
            heartbeat=Path(args.heartbeat_file) if args.heartbeat_file else None,
        )
    except KeyboardInterrupt:
        return 0
    except QueryFailed as err:
        print(f"streaming pipeline: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        streams.stop()
        if own:
            spark.stop()
    return 0


def _without_password(url: str) -> str:
    """`url` with any user and password left out (it is printed)."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{parts.port}" if parts.port else ""
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    environ = local_environment(os.environ) | os.environ if env is None else env
    args = parser(environ).parse_args(argv)
    _stop_on_sigterm()
    source = args.kafka_bootstrap if args.source == "kafka" else _without_password(args.source_url or args.redis_url)
    print(f"streaming pipeline: {', '.join(args.feature_types)} from {args.source} {source}", flush=True)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
