"""Offline store benchmark: ingestion, historical queries and the as-of join on 10M history rows.

    .venv/bin/python bench/offline_bench.py          # or: make bench-offline

Starts PostgreSQL (shared_buffers sized as on a server: the 10M rows' tables
and indexes fit), Valkey and one server process on loopback. Ceilings in the
same run: raw `copy_records_to_table` into an identical table (same
partitions, keys and indexes, no idempotence) and the bare asyncpg range query.
The as-of join runs AS_OF_RUNS times on different rows; the check takes the median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from _report import print_checks, write_json

from devstack import SERVER_SETTINGS, free_port, start_postgres, start_server, start_valkey
from featurestore import FeatureStoreClient
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from server.core import HistoryRow
from server.core.postgres import create_pool, quote_ident
from server.offline import PostgresHistoryStore

ROOT = Path(__file__).resolve().parent.parent

T0 = datetime(2025, 1, 1, tzinfo=UTC)
FEATURES = [f"hist_f{i}" for i in range(10)]
AS_OF_RUNS = 3
BARE_RANGE = (
    "SELECT feature_name, event_time, value FROM feature_history WHERE entity_type = $1 AND entity_id = $2 "
    "AND feature_name = ANY($3::text[]) AND event_time >= $4 AND event_time < $5 ORDER BY event_time, feature_name"
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def batches(entities: range, times: int, size: int) -> list[list[HistoryRow]]:
    from server.core.codec import encode_stored

    value_msg = vpb.Value(float_value=1.25)
    value = value_msg.SerializeToString()
    out: list[list[HistoryRow]] = []
    current: list[HistoryRow] = []
    for e in entities:
        for t in range(times):
            when = T0 + timedelta(hours=t * 24 + e % 24)
            stamp = fs.FeatureValue().event_time
            stamp.FromDatetime(when)
            for name in FEATURES:
                frame = encode_stored(name, value_msg, stamp)[0][8:]
                current.append(HistoryRow("user", f"u{e}", name, when, value, frame))
            if len(current) >= size:
                out.append(current)
                current = []
    if current:
        out.append(current)
    return out


async def ingest(dsn: str, entities: int, times: int) -> dict[str, float]:
    pool = await create_pool(dsn, min_size=2, max_size=4, command_timeout=600)
    store = PostgresHistoryStore(pool)
    sample = range(0, 1000)  # the same rows, loaded both ways, for the ratio
    await pool.execute(  # the same columns, keys and indexes
        "CREATE TABLE raw_history (LIKE feature_history INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        "INCLUDING INDEXES) PARTITION BY RANGE (event_time)"
    )
    for month in range(1, 13):
        lo, hi = datetime(2025, month, 1, tzinfo=UTC), datetime(2025 + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        bounds = f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        await pool.execute(
            "CREATE TABLE " + quote_ident(f"raw_history_{month}") + " PARTITION OF raw_history " + bounds
        )
    sample_batches = batches(sample, times, 50_000)
    started = time.perf_counter()
    for batch in sample_batches:
        records = [(r.entity_type, r.entity_id, r.feature_name, r.event_time, r.value, r.frame) for r in batch]
        columns = ["entity_type", "entity_id", "feature_name", "event_time", "value", "frame"]
        await pool.copy_records_to_table("raw_history", records=records, columns=columns)
    raw_rate = sum(map(len, sample_batches)) / (time.perf_counter() - started)
    started = time.perf_counter()
    for batch in sample_batches:
        await store.append(batch)
    ours_rate = sum(map(len, sample_batches)) / (time.perf_counter() - started)
    started, loaded = time.perf_counter(), sum(map(len, sample_batches))
    for start in range(1000, entities, 1000):
        for batch in batches(range(start, min(entities, start + 1000)), times, 50_000):
            await store.append(batch)
            loaded += len(batch)
    bulk_rate = (loaded - sum(map(len, sample_batches))) / (time.perf_counter() - started)
    await pool.execute("DROP TABLE raw_history")
    await pool.execute("VACUUM ANALYZE feature_history")
    await pool.close()
    return {
        "raw_copy_rows_per_s": raw_rate,
        "append_rows_per_s": ours_rate,
        "bulk_append_rows_per_s": bulk_rate,
        "rows": loaded,
    }


async def bare_query(dsn: str, entity_ids: list[str], times: int) -> list[float]:
    conn = await asyncpg.connect(dsn)
    latencies = []
    end = T0 + timedelta(days=times + 1)
    for entity in entity_ids:
        t0 = time.perf_counter()
        rows = await conn.fetch(BARE_RANGE, "user", entity, FEATURES, T0, end)
        latencies.append((time.perf_counter() - t0) * 1000)
        assert len(rows) == times * len(FEATURES)
    await conn.close()
    return latencies


def grpc_query(client: FeatureStoreClient, entity_ids: list[str], times: int) -> list[float]:
    latencies = []
    end = T0 + timedelta(days=times + 1)
    for entity in entity_ids:
        request = fs.GetHistoricalFeaturesRequest(
            entity_type="user", entity_id=entity, feature_names=FEATURES, limit=10_000
        )
        request.start_time.FromDatetime(T0)
        request.end_time.FromDatetime(end)
        t0 = time.perf_counter()
        reply = client.store.GetHistoricalFeatures(request)
        latencies.append((time.perf_counter() - t0) * 1000)
        assert len(reply.values) == times * len(FEATURES)
    return latencies


def as_of(client: FeatureStoreClient, entities: int, rows: int, times: int, seed: int) -> float:
    rng = random.Random(seed)
    request = fs.GetTrainingDatasetRequest(entity_type="user", feature_names=FEATURES)
    for _ in range(rows):
        row = request.rows.add(entity_id=f"u{rng.randrange(entities)}")
        row.timestamp.FromDatetime(T0 + timedelta(hours=rng.randrange(times * 24)))
    started = time.perf_counter()
    got = sum(len(chunk.examples) for chunk in client.store.GetTrainingDataset(request, timeout=600))
    assert got == rows
    return rows / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=10_000, help="entities; each has --times x 10 features rows")
    parser.add_argument("--times", type=int, default=100)
    parser.add_argument("--as-of-rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "offline.json")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="fs-offline-bench-"))
    pg = start_postgres(state / "postgres", free_port(), durable=False, settings=SERVER_SETTINGS)
    valkey = start_valkey(state / "valkey", free_port(), durable=False)
    dsn = str(pg.extra["dsn"])
    server = start_server(state, free_port(), dsn, str(valkey.extra["url"]), ["--log-level", "WARNING"])
    try:
        with FeatureStoreClient(f"127.0.0.1:{server.port}") as client:
            for name in FEATURES:
                feature = pb.Feature(name=name, entity_type="user", value_type=pb.FLOAT, frequency=pb.DAILY)
                client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
            time.sleep(1.0)  # the server's registry snapshot
            print(f"ingesting {args.entities * args.times * len(FEATURES):,} rows...", flush=True)
            ingestion = asyncio.run(ingest(dsn, args.entities, args.times))
            rng = random.Random(2)
            sample = [f"u{rng.randrange(args.entities)}" for _ in range(args.queries)]
            bare = asyncio.run(bare_query(dsn, sample, args.times))
            ours = grpc_query(client, sample, args.times)
            join_rates = [as_of(client, args.entities, args.as_of_rows, args.times, seed) for seed in range(AS_OF_RUNS)]
    finally:
        for proc in (server, valkey, pg):
            proc.stop()
        shutil.rmtree(state, ignore_errors=True)
    report = {
        "ingestion": ingestion,
        "historical_query_ms": {
            "rows": args.times * len(FEATURES),
            "grpc_p50": pct(ours, 0.5),
            "grpc_p99": pct(ours, 0.99),
            "bare_asyncpg_p50": pct(bare, 0.5),
            "bare_asyncpg_p99": pct(bare, 0.99),
        },
        "as_of_rows_per_s": join_rates,
    }
    join_rate = sorted(join_rates)[len(join_rates) // 2]
    checks = [
        ("ingestion: append / raw COPY", ingestion["append_rows_per_s"] / ingestion["raw_copy_rows_per_s"], ">= 0.80"),
        ("historical query p50: gRPC / bare asyncpg", pct(ours, 0.5) / pct(bare, 0.5), "<= 1.5"),
        ("historical query p99: gRPC / bare asyncpg", pct(ours, 0.99) / pct(bare, 0.99), "<= 1.5"),
        ("as-of join, entity rows/s (x10 features), median", join_rate, ">= 100,000"),
    ]
    print(json.dumps(report, indent=2))
    print_checks(checks)
    write_json(args.out, {"report": report, "checks": checks})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
