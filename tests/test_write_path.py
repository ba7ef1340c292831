"""The write path: the one value encoder, bounded script calls, group commit, large writes beside reads."""

from __future__ import annotations

import asyncio
import random
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import grpc
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import FeatureStoreClient, python_value
from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2 as vpb
from server.core import HistoryRow, KeyWrite, codec
from server.online import RedisOnlineStore, connect
from server.online._redis import value_field, write_chunks
from tests._helpers import run_sql

finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(lambda x: vpb.Value(float_value=x)),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: vpb.Value(int64_value=n)),
    st.text().map(lambda s: vpb.Value(string_value=s)),
    st.booleans().map(lambda b: vpb.Value(bool_value=b)),
    st.binary().map(lambda b: vpb.Value(bytes_value=b)),
    st.lists(st.floats(allow_nan=False), max_size=4).map(lambda xs: _listed("float_list_value", xs)),
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4).map(lambda ns: _listed("int64_list_value", ns)),
    st.lists(st.text(max_size=5), max_size=4).map(lambda ss: _listed("string_list_value", ss)),
    st.lists(st.booleans(), max_size=4).map(lambda bs: _listed("bool_list_value", bs)),
    st.lists(finite, max_size=4).map(lambda xs: _listed("embedding_value", xs)),
    st.integers(-62135596800, 253402300799).map(
        lambda s: vpb.Value(timestamp_value=timestamp_pb2.Timestamp(seconds=s))
    ),
)


def _listed(kind: str, items: Sequence[object]) -> vpb.Value:
    value = vpb.Value()
    getattr(value, kind).values.extend(items)
    return value


times = st.integers(-(10**16), 10**17).map(
    lambda us: timestamp_pb2.Timestamp(seconds=us // 10**6, nanos=us % 10**6 * 1000)
)


@given(value=values, when=times)
def test_the_encoder_writes_what_protobuf_and_json_format_write(
    value: vpb.Value, when: timestamp_pb2.Timestamp
) -> None:
    """The reference is the protobuf library itself, for every kind (the encoder builds the bytes by hand)."""
    kind = value.WhichOneof("kind")
    assert kind is not None
    fv = fs.FeatureValue(name="some_feature", value=value, event_time=when, status=fs.PRESENT)
    key = codec.time_key(codec.micros_of(when))
    want = (key + codec.frame(codec.FEATURES_TAG, fv.SerializeToString()), key + codec.to_json(fv))
    at = codec.EventTime(codec.micros_of(when))
    proto, as_json, serialized = codec.encoder("some_feature", kind).encode_value(value, at)
    assert (proto, as_json, serialized) == (*want, value.SerializeToString())
    assert codec.encode_stored("some_feature", value, when) == want
    if kind not in ("bytes_value",):  # the pipeline hands plain Python values
        plain = python_value(value)
        assert codec.ValueEncoder("some_feature", kind).encode(plain, at) == (*want, value.SerializeToString())


def _writes(draw_sizes: list[int]) -> list[KeyWrite]:
    return [
        KeyWrite(f"f:t:e{k}".encode(), [pair for i in range(n) for pair in _forms(f"x{i}", 100, i)])
        for k, n in enumerate(draw_sizes)
    ]


def _forms(name: str, micros: int, n: int) -> list[tuple[bytes, bytes]]:
    proto, as_json, _ = codec.ValueEncoder(name, "int64_value", micros).encode(n)
    return [(name.encode(), proto), (name.encode() + b":j", as_json)]


@given(sizes=st.lists(st.integers(0, 30), max_size=8), most=st.integers(1, 40))
def test_chunks_carry_every_value_once_and_at_most_their_share(sizes: list[int], most: int) -> None:
    writes = _writes(sizes)
    chunks = list(write_chunks(writes, 0, most))
    assert all(0 < c.values <= most for c in chunks if c.values)
    assert sum(c.values for c in chunks) == sum(sizes)
    got: dict[bytes, list[bytes | int]] = {}
    for chunk in chunks:
        pos = 1
        for key in chunk.keys:
            n = int(chunk.args[pos])
            got.setdefault(key, []).extend(chunk.args[pos + 1 : pos + 1 + 4 * n])
            pos += 1 + 4 * n
    for w in writes:
        want = [
            b
            for (f, p), (jf, j) in zip(w.values[::2], w.values[1::2], strict=True)
            for b in (f + b"#2", p, jf + b"#2", j)
        ]
        assert got.get(w.key, []) == want


updates = st.lists(  # (writer, entity, feature, event time): every time distinct, so "the newest" is one value
    st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 24)), min_size=1, max_size=120
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=updates, most=st.integers(1, 7), seed=st.integers(0, 2**32))
def test_interleaved_chunked_writers_leave_the_newest_value_of_every_feature(
    redis_url: str, plan: list[tuple[int, int, int]], most: int, seed: int
) -> None:
    """Four writers, each a few calls cut into script calls of `most` values, all at once in random order."""
    rng = random.Random(seed)
    micros = rng.sample(range(1, 10**9), len(plan))
    namespace = f"chunks{uuid.uuid4().hex}"  # every example on keys of its own
    by_writer: dict[int, list[KeyWrite]] = {}
    newest: dict[tuple[int, int], tuple[int, int]] = {}
    for (writer, entity, feature), when in zip(plan, micros, strict=True):
        key, n = f"f:{namespace}:e{entity}".encode(), rng.randrange(10**6)
        by_writer.setdefault(writer, []).append(KeyWrite(key, _forms(f"x{feature}", when, n)))
        if newest.get((entity, feature), (-1, 0))[0] < when:
            newest[entity, feature] = (when, n)

    async def go() -> list[bytes | None]:
        client = connect(redis_url, cluster=False, connections=2, timeout=5.0)
        store = RedisOnlineStore(client, write_chunk_values=most, chunks_in_flight=rng.randint(1, 4))

        async def writer(writes: list[KeyWrite]) -> None:
            rng.shuffle(writes)
            for i in range(0, len(writes), 3):
                await store.write(writes[i : i + 3])

        try:
            await asyncio.gather(*(writer(w) for w in by_writer.values()))
            keys = [f"f:{namespace}:e{entity}".encode() for entity, _ in newest]
            fields = [value_field(f"x{feature}".encode(), 2) for _, feature in newest]
            return [(await store.read([k], [f]))[0] for k, f in zip(keys, fields, strict=True)]
        finally:
            await store.close()

    stored = asyncio.run(go())
    want = [_forms(f"x{feature}", when, n)[0][1] for (_, feature), (when, n) in newest.items()]
    assert stored == want


stored_then_written = st.lists(  # per entity: (feature, stored time or None, written time or None)
    st.lists(
        st.tuples(st.integers(0, 5), st.one_of(st.none(), st.integers(1, 6)), st.one_of(st.none(), st.integers(1, 6))),
        max_size=6,
        unique_by=lambda t: t[0],
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(entities=stored_then_written, most=st.integers(1, 12), twice=st.booleans())
def test_a_write_keeps_exactly_the_values_not_older_than_the_stored_ones(
    redis_url: str, entities: list[list[tuple[int, int | None, int | None]]], most: int, twice: bool
) -> None:
    """Entities stored or not, each value of a write newer, as old (it wins) or older than the stored one, or
    new: the script's paths (a new entity, every value newer, a mix) leave the same thing, both forms alike.
    With `twice`, each entity's write is split in two KeyWrites in one call (a key met again in one script)."""
    namespace = f"mixed{uuid.uuid4().hex}"
    stored, written, want = [], [], {}
    for e, features in enumerate(entities):
        key = f"f:{namespace}:e{e}".encode()
        old = [pair for f, t, _ in features if t is not None for pair in _forms(f"x{f}", t, 10 * f)]
        new = [pair for f, _, t in features if t is not None for pair in _forms(f"x{f}", t, 10 * f + 1)]
        if old:
            stored.append(KeyWrite(key, old))
        half = len(new) // 4 * 2 if twice else len(new)
        written += [KeyWrite(key, part) for part in (new[:half], new[half:]) if part]
        for f, t_old, t_new in features:
            kept = (t_new, 10 * f + 1) if t_new is not None and (t_old is None or t_new >= t_old) else (t_old, 10 * f)
            if kept[0] is not None:
                want[key, f] = _forms(f"x{f}", kept[0], kept[1])

    async def go() -> dict[tuple[bytes, int], list[tuple[bytes, bytes]]]:
        client = connect(redis_url, cluster=False, connections=2, timeout=5.0)
        store = RedisOnlineStore(client, write_chunk_values=most)
        try:
            await store.write(stored)
            await store.write(written)
            got = {}
            for key, f in want:
                fields = [value_field(f"x{f}".encode(), 2), value_field(f"x{f}:j".encode(), 2)]
                proto, as_json = await store.read([key], fields)
                assert proto is not None
                assert as_json is not None
                got[key, f] = [(f"x{f}".encode(), proto), (f"x{f}:j".encode(), as_json)]
            return got
        finally:
            await store.close()

    assert asyncio.run(go()) == want


def _register(client: FeatureStoreClient, prefix: str, count: int) -> list[str]:
    names = [f"{prefix}{i}" for i in range(count)]
    for name in names:
        feature = pb.Feature(name=name, entity_type="wide", value_type=pb.FLOAT, frequency=pb.DAILY)
        client.registry.CreateFeature(rs.CreateFeatureRequest(feature=feature))
    return names


def test_large_writes_succeed_within_the_default_timeouts_while_reads_are_served_throughout(
    client: FeatureStoreClient, grpc_target: str, postgres_dsn: str
) -> None:
    """250 features x 400 rows (100,000 values, the request limit) in one WriteFeatures, then 250 x 1,000
    newer (250,000 values) pushed in four messages, while another thread reads 1 x 10 in a loop: every
    call succeeds, and reads keep being served while the writes run (many finish inside each write and
    none waits for a large part of it: writes encode a slice at a time, one write at a time, and COPY
    and Valkey take them in bounded pieces)."""
    names = _register(client, "wide_f", 250)
    read = fs.GetFeaturesRequest(entity_type="wide", entity_id="w1", feature_names=names[:10])
    deadline = time.monotonic() + 10
    while True:
        try:
            client.store.GetFeatures(read)
            break
        except grpc.RpcError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    reads: list[tuple[float, float]] = []  # (started, finished), monotonic
    failures: list[grpc.RpcError] = []
    stop = threading.Event()

    def reader() -> None:
        with grpc.insecure_channel(grpc_target) as channel:
            call = channel.unary_unary(
                "/featurestore.serving.v1.FeatureStoreService/GetFeatures",
                request_serializer=fs.GetFeaturesRequest.SerializeToString,
                response_deserializer=fs.GetFeaturesResponse.FromString,
            )
            while not stop.is_set():
                started = time.monotonic()
                try:
                    call(read, timeout=10)
                    reads.append((started, time.monotonic()))
                except grpc.RpcError as err:
                    failures.append(err)

    def rows(count: int, when: datetime, plus: float) -> list[fs.EntityRow]:
        out = [
            fs.EntityRow(entity_id=f"w{e}", values={n: vpb.Value(float_value=e + plus) for n in names})
            for e in range(count)
        ]
        for row in out:
            row.event_time.FromDatetime(when)
        return out

    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    first = fs.WriteFeaturesRequest(entity_type="wide", rows=rows(400, base, 0))
    second = rows(1000, base + timedelta(minutes=1), 1)
    pushed = [fs.PushFeaturesRequest(entity_type="wide", rows=second[i : i + 250]) for i in range(0, 1000, 250)]
    thread = threading.Thread(target=reader)
    thread.start()
    spans = []
    try:
        started = time.monotonic()
        response = client.store.WriteFeatures(first, timeout=60)
        spans.append((started, time.monotonic()))
        assert (response.written_values, response.skipped_values) == (100_000, 0)
        started = time.monotonic()
        push = client.store.PushFeatures(iter(pushed), timeout=120)
        spans.append((started, time.monotonic()))
        assert (push.written_values, push.skipped_values, push.batches) == (250_000, 0, 4)
    finally:
        stop.set()
        thread.join()
    assert not failures, failures[:3]
    for begin, end in spans:
        inside = [b - a for a, b in reads if a >= begin and b <= end]
        assert len(inside) >= 10, (len(inside), end - begin)  # served throughout, not only between writes
        assert max(inside) < (end - begin) / 4, (max(inside), end - begin)  # none waited for much of a write
    got = client.store.GetFeatures(read)
    assert [f.value.float_value for f in got.features] == [2.0] * 10  # entity w1, second write: 1 + 1
    [counted] = run_sql(postgres_dsn, "SELECT count(*) AS n FROM feature_history WHERE entity_type = 'wide'")
    assert counted["n"] == 350_000


def test_concurrent_appends_are_committed_together_and_each_returns_after_its_commit(postgres_dsn: str) -> None:
    """Group commit: many concurrent callers, one of them repeating rows (a retry), another a duplicate
    within itself; every caller's rows are there when it returns, once each, the last duplicate winning."""
    from server.core.postgres import create_pool
    from server.offline import PostgresHistoryStore

    when = datetime.now(UTC).replace(microsecond=0)

    def rows(caller: int, n: int, value: bytes = b"v") -> list[HistoryRow]:
        return [HistoryRow("grouped", f"c{caller}", f"f{i}", when, value, b"frame") for i in range(n)]

    async def go() -> list[tuple[str, int]]:
        pool = await create_pool(postgres_dsn, min_size=1, max_size=4, command_timeout=30)
        store = PostgresHistoryStore(pool, group_rows=500, copies=1)
        seen: list[tuple[str, int]] = []

        async def caller(i: int) -> None:
            batch = rows(i, 100 + i) if i != 7 else [*rows(i, 50), *rows(i, 1, b"last")]
            await store.append(batch)
            found = await pool.fetchval(
                "SELECT count(*) FROM feature_history WHERE entity_type = 'grouped' AND entity_id = $1", f"c{i}"
            )
            seen.append((f"c{i}", found))

        try:
            await asyncio.gather(*(caller(i) for i in range(20)))
            await asyncio.gather(caller(3), caller(4))  # retries: the same rows again
        finally:
            await pool.close()
        return seen

    seen = asyncio.run(go())
    want = {f"c{i}": (50 if i == 7 else 100 + i) for i in range(20)}
    assert all(found == want[entity] for entity, found in seen), seen
    [row] = run_sql(
        postgres_dsn,
        "SELECT value FROM feature_history WHERE entity_type = 'grouped' AND entity_id = 'c7' AND feature_name = 'f0'",
    )
    assert bytes(row["value"]) == b"last"


def test_history_rows_copied_as_built_are_the_rows_asyncpg_copies_from_records(
    postgres_dsn: str, server: object
) -> None:
    """WriteBatch's binary COPY tuples store, byte for byte, what asyncpg's COPY of the same records stores."""
    import asyncpg

    from server.core import HISTORY_COLUMNS, WriteBatch
    from server.core.postgres import create_pool
    from server.offline import PostgresHistoryStore

    rng = random.Random(5)
    batch = WriteBatch("copied")
    encoders = [codec.encoder(f"k_{kind}", kind) for kind in ("float_value", "int64_value", "string_value")]
    records = []  # the same rows as asyncpg takes them, built apart
    for i in range(300):
        micros = rng.choice([0, -1, 946_684_800_000_000, 1_700_000_000_123_456]) + rng.randrange(10**12)
        plain = [rng.uniform(-1e9, 1e9), rng.randrange(-(2**63), 2**63), "é" * rng.randrange(3000)]
        batch.add_plain(f"e{i % 40}-ü", batch.event_time(micros), zip(encoders, plain, strict=True))
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)
        for encoder, x in zip(encoders, plain, strict=True):
            proto, _, value = encoder.encode(x, codec.EventTime(micros))
            records.append(("copied", f"e{i % 40}-ü", encoder.name, when, value, proto[codec.TIME_BYTES :]))
    query = (
        "SELECT entity_type, entity_id, feature_name, event_time, value, frame FROM {} WHERE entity_type = 'copied' "
    )
    order = "ORDER BY entity_id, feature_name, event_time"

    async def go() -> tuple[list[asyncpg.Record], list[asyncpg.Record]]:
        pool = await create_pool(postgres_dsn, min_size=1, max_size=2, command_timeout=30)
        try:
            await PostgresHistoryStore(pool).append(batch.history)
            async with pool.acquire() as conn:
                await conn.execute("CREATE TEMP TABLE by_asyncpg (LIKE feature_history INCLUDING DEFAULTS)")
                await conn.copy_records_to_table("by_asyncpg", records=records, columns=list(HISTORY_COLUMNS))
                return await conn.fetch(query.format("feature_history") + order), await conn.fetch(
                    query.format("by_asyncpg") + order
                )
        finally:
            await pool.close()

    stored, by_asyncpg = asyncio.run(go())
    assert len(stored) == len(records) == 900
    assert stored == by_asyncpg
