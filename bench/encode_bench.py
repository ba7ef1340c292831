"""Micro-benchmark of the sink's encoding (jobs._sink._Encoded), in µs per value.

    .venv/bin/python bench/encode_bench.py [--rows 100000] [--kinds float] [--repeat 5]

Encodes one Arrow batch of `--rows` rows x 10 features into online writes and history
records, bulk-ingest style (an event time per row, newest value per entity online) and
batch-pipeline style (one event time, every row online), with the column-at-a-time
encoder the sink uses (WriteBatch.add_columns) and with the per-value path
(WriteBatch.add_plain per row) it replaced, so both are measured in the same run.
No servers: this is the executor's Python per value and nothing else.
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

import pyarrow as pa

from jobs._sink import ENTITY_COLUMN, EVENT_MICROS_COLUMN, SinkConfig, _Encoded
from server.core import WriteBatch, codec

_ARROW_TYPES = {
    "float_value": pa.float64(),
    "int64_value": pa.int64(),
    "bool_value": pa.bool_(),
    "string_value": pa.string(),
}


def _value(kind: str, rng: random.Random) -> object:
    if kind == "float_value":
        return rng.random() * 1000
    if kind == "int64_value":
        return rng.randrange(-(10**12), 10**12)
    if kind == "bool_value":
        return rng.random() < 0.5
    return f"label-{rng.randrange(10**6)}"


def _batch(rows: int, kinds: list[str], per_row_time: bool) -> tuple[pa.RecordBatch, SinkConfig]:
    rng = random.Random(7)
    features = tuple((f"f{i}", kinds[i % len(kinds)]) for i in range(10))
    columns: dict[str, pa.Array] = {ENTITY_COLUMN: pa.array([f"u{i}" for i in range(rows)])}
    start = 1_700_000_000_000_000
    if per_row_time:
        columns[EVENT_MICROS_COLUMN] = pa.array([start + rng.randrange(10**9) for _ in range(rows)], pa.int64())
    for name, kind in features:
        columns[name] = pa.array([_value(kind, rng) for _ in range(rows)], _ARROW_TYPES[kind])
    config = SinkConfig(
        redis_url="",
        redis_cluster=False,
        postgres_dsn="",
        entity_type="bench",
        features=features,
        event_micros=None if per_row_time else start,
        latest_online=per_row_time,
    )
    return pa.RecordBatch.from_pydict(columns), config


def _per_value(config: SinkConfig, batch: pa.RecordBatch) -> WriteBatch:
    """The sink's encoding before column-at-a-time: add_plain per row."""
    writes = WriteBatch(config.entity_type, latest_online=config.latest_online)
    ids = batch.column(ENTITY_COLUMN).to_pylist()
    encoders = [codec.encoder(name, kind) for name, kind in config.features]
    columns = [batch.column(name).to_pylist() for name, _ in config.features]
    if config.event_micros is not None:
        at = writes.event_time(config.event_micros)
        for entity_id, *xs in zip(ids, *columns, strict=True):
            writes.add_plain(entity_id, at, zip(encoders, xs, strict=True))
    else:
        times = batch.column(EVENT_MICROS_COLUMN).to_pylist()
        for entity_id, micros, *xs in zip(ids, times, *columns, strict=True):
            writes.add_plain(entity_id, writes.event_time(micros), zip(encoders, xs, strict=True))
    writes.online()
    return writes


def _columnar(config: SinkConfig, batch: pa.RecordBatch) -> object:
    encoded = _Encoded(config, batch)
    encoded.online()
    return encoded


def _best(run: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--kinds", default="float_value", help="comma-separated Value members, cycled over 10 features")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    kinds = args.kinds.split(",")
    for label, per_row_time in (("bulk ingest (time per row, newest online)", True), ("batch (one time)", False)):
        batch, config = _batch(args.rows, kinds, per_row_time)
        values = args.rows * len(config.features)
        before = _best(lambda: _per_value(config, batch), args.repeat) / values * 1e6  # noqa: B023 - run now
        after = _best(lambda: _columnar(config, batch), args.repeat) / values * 1e6  # noqa: B023 - run now
        print(
            f"{label}, {args.kinds}: per value {before:.2f} µs/value, "
            f"columnar {after:.2f} µs/value ({before / after:.1f}x)"
        )


if __name__ == "__main__":
    main()
