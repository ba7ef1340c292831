"""Batch pipeline benchmark: the four RFM features from 10M purchases of 1M customers.

    .venv/bin/python bench/pipeline_bench.py          # or: make bench-pipeline

Starts PostgreSQL (shared_buffers sized as on a server, as in offline_bench.py)
and Valkey on loopback and a local[2] Spark. Generates the
purchases (Parquet, kept in --data between runs), then measures in the same run:
- the bare Spark ceiling: the same groupBy over the same rows, results discarded;
- the raw write ceilings: pipelined HSETs of the same number of values from as
  many Python processes as Spark has cores (redis-py + hiredis), and raw
  `copy_records_to_table` of the same number of rows from as many connections;
- the pipeline itself (jobs.run), end to end: read, compute, encode, write
  history then online, excluding the Spark session start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import redis
from _report import print_checks, write_json
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from devstack import SERVER_SETTINGS, free_port, start_postgres, start_valkey
from featurestore.registry.v1 import feature_pb2 as pb
from jobs import RunConfig, SessionConfig, build_session, register_warehouse, run
from jobs.demo_data import DemoSize, write_demo_tables
from server.core.postgres import create_pool, migrate

ROOT = Path(__file__).resolve().parent.parent

AS_OF = datetime(2025, 1, 1, tzinfo=UTC)
CORES = 2
FILTER_30D = "purchase_date >= NOW() - INTERVAL '30 days'"


def rfm_features() -> list[pb.Feature]:
    def feature(name: str, value_type: int, function: str, column: str, filter_: str = "") -> pb.Feature:
        return pb.Feature(
            name=name,
            entity_type="customer",
            value_type=value_type,  # type: ignore[arg-type]
            source=pb.BATCH,
            source_config=pb.SourceConfig(table="customer_purchases", filter=filter_),
            transformations=[pb.Transformation(type="aggregation", function=function, column=column)],
        )

    return [
        feature("customer_total_purchases_30d", pb.FLOAT, "sum", "purchase_amount", FILTER_30D),
        feature("customer_purchase_frequency_30d", pb.INT64, "count", "purchase_id", FILTER_30D),
        feature("customer_days_since_last_purchase", pb.INT64, "days_since_last", "purchase_date"),
        feature("customer_average_purchase_amount", pb.FLOAT, "avg", "purchase_amount"),
    ]


def bare_groupby(spark: SparkSession, lookback: timedelta) -> float:
    """Seconds for the same aggregation with plain Spark, written nowhere."""
    df = spark.table("customer_purchases")
    window = (F.col("purchase_date") >= F.lit(AS_OF - lookback)) & (F.col("purchase_date") < F.lit(AS_OF))
    recent = F.col("purchase_date") >= F.lit(AS_OF - timedelta(days=30))
    started = time.perf_counter()
    df.where(window).groupBy("customer_id").agg(
        F.sum(F.when(recent, F.col("purchase_amount"))),
        F.count(F.when(recent, F.col("purchase_id"))),
        F.max("purchase_date"),
        F.avg("purchase_amount"),
    ).write.format("noop").mode("overwrite").save()
    return time.perf_counter() - started


def _redis_worker(url: str, part: int, entities: int, fields: list[bytes], value: bytes) -> None:
    client = redis.Redis.from_url(url)
    pipe = client.pipeline(transaction=False)
    mapping = dict.fromkeys(fields, value)
    for i in range(part, entities, CORES):
        pipe.hset(f"raw:customer:customer{i}", mapping=mapping)  # type: ignore[arg-type]
        if i % 1000 < CORES:
            pipe.execute()
    pipe.execute()


def raw_redis(url: str, entities: int, features: int) -> float:
    """Values per second of pipelined HSETs (2 fields per value, as stored) from CORES processes."""
    fields = [f"feature_{n}{suffix}".encode() for n in range(features) for suffix in ("", ":j")]
    value = b"x" * 60
    started = time.perf_counter()
    procs = [
        multiprocessing.Process(target=_redis_worker, args=(url, part, entities, fields, value))
        for part in range(CORES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    seconds = time.perf_counter() - started
    redis.Redis.from_url(url).flushall()
    return entities * features / seconds


async def raw_copy(dsn: str, rows: int) -> float:
    """Rows per second of raw binary COPY into feature_history from CORES connections."""
    when = AS_OF
    value, frame = b"\x09" + b"\x00" * 8, b"y" * 60

    async def one(part: int) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            records = [
                ("raw", f"customer{i}", f"feature_{i % 4}", when, value, frame) for i in range(part, rows, CORES)
            ]
            columns = ["entity_type", "entity_id", "feature_name", "event_time", "value", "frame"]
            await conn.copy_records_to_table("feature_history", records=records, columns=columns)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(part) for part in range(CORES)))
    seconds = time.perf_counter() - started
    conn = await asyncpg.connect(dsn)
    await conn.execute("DELETE FROM feature_history WHERE entity_type = 'raw'")
    await conn.close()
    return rows / seconds


async def prepare_db(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=2, command_timeout=60)
    await migrate(pool)
    async with pool.acquire() as conn:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS feature_history_p202412 PARTITION OF feature_history "
            "FOR VALUES FROM ('2024-12-01 00:00:00+00') TO ('2025-01-01 00:00:00+00')"
        )
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS feature_history_p202501 PARTITION OF feature_history "
            "FOR VALUES FROM ('2025-01-01 00:00:00+00') TO ('2025-02-01 00:00:00+00')"
        )
    await pool.close()


def data(spark: SparkSession, folder: Path, size: DemoSize) -> int:
    marker = folder / f"customer_purchases.{size.purchases}x{size.customers}"
    if not marker.exists():
        print(f"generating {size.purchases:,} purchases of {size.customers:,} customers...", flush=True)
        write_demo_tables(spark, folder, size, AS_OF)
        marker.touch()
    register_warehouse(spark, folder)
    return int(spark.table("customer_purchases").count())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--purchases", type=int, default=10_000_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, default=ROOT / "bench" / "data" / "pipeline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline.json")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="fs-bench-pipeline-"))
    pg = start_postgres(state / "postgres", free_port(), durable=False, settings=SERVER_SETTINGS)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    dsn, url = str(pg.extra["dsn"]), str(valkey.extra["url"])
    size = DemoSize(customers=args.customers, purchases=args.purchases, products=1000, days=30, partitions=8)
    lookback = timedelta(days=31)  # every generated purchase is in the window
    args.data.mkdir(parents=True, exist_ok=True)
    spark = build_session(
        SessionConfig(master=f"local[{CORES}]", warehouse=str(args.data), conf={"spark.ui.enabled": "false"}),
        "pipeline-bench",
    )
    report: dict[str, Any] = {}
    try:
        asyncio.run(prepare_db(dsn))
        rows = data(spark, args.data, size)
        bare_groupby(spark, lookback)  # warm the JVM and the file cache
        bare = bare_groupby(spark, lookback)
        features = rfm_features()
        config = RunConfig(AS_OF, lookback, url, False, dsn)
        started = time.perf_counter()
        result = run(spark, features, config, progress=lambda line: print(line, flush=True))
        seconds = time.perf_counter() - started
        assert not result.failed, result.failed
        values = result.values
        redis_ceiling = raw_redis(url, result.entities, len(features))
        copy_ceiling = asyncio.run(raw_copy(dsn, values))
        both = 1 / (1 / redis_ceiling + 1 / copy_ceiling)  # each value goes to both stores
        report = {
            "source_rows": rows,
            "rows_read": result.rows,
            "values_written": values,
            "pipeline_seconds": seconds,
            "bare_groupby_seconds": bare,
            "source_rows_per_s": result.rows / seconds,
            "bare_groupby_rows_per_s": rows / bare,
            "values_per_s": values / seconds,
            "raw_redis_values_per_s": redis_ceiling,
            "raw_copy_rows_per_s": copy_ceiling,
            "raw_both_values_per_s": both,
            "materialization_seconds_estimate": seconds - bare,
        }
    finally:
        spark.stop()
        for proc in (valkey, pg):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)
    materialize = values / max(report["materialization_seconds_estimate"], 1e-9)
    checks = [
        ("end to end, source rows/s", report["source_rows_per_s"], ">= 200,000"),
        ("bare Spark groupBy, rows/s (ceiling)", report["bare_groupby_rows_per_s"], "-"),
        ("materialization values/s (run - bare groupBy)", materialize, "-"),
        ("  / raw Redis + raw COPY (each value goes to both)", materialize / both, ">= 0.50"),
        ("  / raw pipelined Redis writes", materialize / redis_ceiling, "-"),
        ("  / raw COPY", materialize / copy_ceiling, "-"),
    ]
    print(json.dumps(report, indent=2))
    print_checks(checks)
    write_json(args.out, {"report": report, "checks": checks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
