"""`python -m server.reconcile` (`featurestore-reconcile`): the online store checked or rebuilt from history.

A write appends to the history (PostgreSQL) first and then writes online (Redis /
Valkey); if the second step fails, or Redis loses data (FLUSHALL, a restore from an
old snapshot), the stores disagree until the value is written again. This command
reads, for each (entity, feature) of the chosen features, the latest history row
and compares it with, or writes it to, the online store:

* ``--verify``: report only. Exit 1 if any value is missing, older or different
  online, else 0.
* default (rebuild): write the values that are missing, older or different online,
  with the write path's only-newer semantics (a value newer online is never
  replaced) and the very stored forms WriteFeatures makes.

Features come from the registry: ``--features a,b`` or every feature of
``--entity-type``. A history row whose value kind is not the feature's current one
(the feature was recreated with another value type) is skipped and counted.
History is read in keyset-paginated pages of ``--batch-size`` (entity, feature)
pairs, so memory stays bounded. Connection settings are the server's (flags or
``FEATURESTORE_*`` variables; see server/_settings.py).

Exit codes: 0 done / consistent, 1 verify found differences, 2 usage error,
3 a store could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Protocol

import asyncpg
from google.protobuf.timestamp_pb2 import Timestamp

from featurestore.serving.v1 import feature_store_service_pb2 as fs
from featurestore.serving.v1 import value_pb2
from server._settings import Settings, local_environment
from server.core import KeyWrite, entity_key
from server.core.codec import TIME_BYTES, encode_stored
from server.core.errors import ServiceError
from server.core.postgres import create_pool, translated_postgres
from server.online import Catalog, RedisOnlineStore, connect
from server.registry import PostgresRegistryStore

# The latest row of each (entity, feature) pair, pairs in descending key order: one
# backward scan of the primary key (entity_type, entity_id, feature_name, event_time).
_FIRST_PAGE = (
    "SELECT DISTINCT ON (entity_id, feature_name) entity_id, feature_name, value, frame FROM feature_history "
    "WHERE entity_type = $1 AND feature_name = ANY($2::text[]) "
    "ORDER BY entity_id DESC, feature_name DESC, event_time DESC LIMIT $3"
)
_NEXT_PAGE = (
    "SELECT DISTINCT ON (entity_id, feature_name) entity_id, feature_name, value, frame FROM feature_history "
    "WHERE entity_type = $1 AND feature_name = ANY($2::text[]) AND (entity_id, feature_name) < ($4, $5) "
    "ORDER BY entity_id DESC, feature_name DESC, event_time DESC LIMIT $3"
)

EXIT_OK, EXIT_DIFFERS, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


class Served(Protocol):
    """What this command needs of a served feature (the online catalog's entries)."""

    @property
    def name(self) -> str: ...
    @property
    def entity_type(self) -> str: ...
    @property
    def value_kind(self) -> str: ...
    @property
    def name_field(self) -> bytes: ...
    @property
    def name_json_field(self) -> bytes: ...
    @property
    def field(self) -> bytes: ...
    @property
    def json_field(self) -> bytes: ...


@dataclass
class Counts:
    """What one run found (and, rebuilding, did)."""

    entities: int = 0
    values: int = 0
    current: int = 0
    missing: int = 0
    older: int = 0
    differ: int = 0
    newer_online: int = 0
    type_changed: int = 0
    written: int = 0

    def add(self, other: Counts) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def disagreeing(self) -> int:
        return self.missing + self.older + self.differ


@dataclass(frozen=True, slots=True)
class Latest:
    """The latest history value of one (entity, feature), in its online stored forms."""

    entity_id: str
    feature: Served
    proto: bytes
    as_json: bytes


# -- history -------------------------------------------------------------------


class History:
    """Latest history values, read page by page."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @translated_postgres
    async def page(
        self, entity_type: str, names: Sequence[str], limit: int, before: tuple[str, str] | None
    ) -> list[asyncpg.Record]:
        """Up to `limit` latest rows of pairs ordered before `before` (all pairs if None), descending."""
        if before is None:
            return list(await self._pool.fetch(_FIRST_PAGE, entity_type, list(names), limit))
        return list(await self._pool.fetch(_NEXT_PAGE, entity_type, list(names), limit, *before))


def _event_time(frame: bytes) -> Timestamp:
    """The event time inside a history frame (field 3 of GetFeaturesResponse), nanoseconds included."""
    return fs.GetFeaturesResponse.FromString(frame).features[0].event_time


def _latest(record: asyncpg.Record, feature: Served) -> Latest | None:
    """The stored forms of a history row, as WriteFeatures makes them; None if the value's kind is not current."""
    value = value_pb2.Value.FromString(record["value"])
    if value.WhichOneof("kind") != feature.value_kind:
        return None
    proto, as_json = encode_stored(feature.name, value, _event_time(record["frame"]))
    return Latest(record["entity_id"], feature, proto, as_json)


# -- comparison and writing ------------------------------------------------------


def _classify(latest: Latest, proto: bytes | None, as_json: bytes | None, counts: Counts) -> bool:
    """Count how the online value compares with history's; True if it should be written."""
    if proto is None or as_json is None:
        counts.missing += 1
        return True
    online_time, history_time = proto[:TIME_BYTES], latest.proto[:TIME_BYTES]
    if online_time < history_time:
        counts.older += 1
        return True
    if online_time > history_time:
        counts.newer_online += 1
        return False
    if proto != latest.proto or as_json != latest.as_json:
        counts.differ += 1
        return True
    counts.current += 1
    return False


async def _stale(online: RedisOnlineStore, values: Sequence[Latest], counts: Counts) -> list[Latest]:
    """The values that are missing, older or different online (one read per feature, concurrently)."""
    by_feature: dict[str, list[Latest]] = {}
    for v in values:
        by_feature.setdefault(v.feature.name, []).append(v)
    groups = list(by_feature.values())
    replies = await asyncio.gather(
        *(
            online.read(
                [entity_key(v.feature.entity_type, v.entity_id) for v in g],
                [g[0].feature.field, g[0].feature.json_field],
            )
            for g in groups
        )
    )
    stale = []
    for group, reply in zip(groups, replies, strict=True):
        for i, v in enumerate(group):
            if _classify(v, reply[2 * i], reply[2 * i + 1], counts):
                stale.append(v)
    return stale


def _key_writes(values: Sequence[Latest]) -> list[KeyWrite]:
    """One KeyWrite per entity, each value as (name field, protobuf form), (JSON name field, JSON form)."""
    per_key: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for v in values:
        fields_ = per_key.setdefault(entity_key(v.feature.entity_type, v.entity_id), [])
        fields_ += ((v.feature.name_field, v.proto), (v.feature.name_json_field, v.as_json))
    return [KeyWrite(key, pairs) for key, pairs in per_key.items()]


# -- one run -------------------------------------------------------------------


@dataclass
class Run:
    """One reconciliation of a set of features of one entity type."""

    history: History
    online: RedisOnlineStore
    batch_size: int
    verify: bool

    async def entity_type(self, entity_type: str, features: Mapping[str, Served]) -> Counts:
        counts, before, last_entity = Counts(), None, None
        while True:
            records = await self.history.page(entity_type, sorted(features), self.batch_size, before)
            if not records:
                return counts
            for r in records:
                if r["entity_id"] != last_entity:
                    counts.entities, last_entity = counts.entities + 1, r["entity_id"]
            await self._page(records, features, counts)
            if len(records) < self.batch_size:
                return counts
            before = (records[-1]["entity_id"], records[-1]["feature_name"])

    async def _page(self, records: Sequence[asyncpg.Record], features: Mapping[str, Served], counts: Counts) -> None:
        counts.values += len(records)
        values = []
        for r in records:
            latest = _latest(r, features[r["feature_name"]])
            if latest is None:
                counts.type_changed += 1
            else:
                values.append(latest)
        stale = await _stale(self.online, values, counts)
        if stale and not self.verify:
            counts.written += await self.online.write(_key_writes(stale))


# -- command line ----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """This command's own flags (the connection flags are the server's Settings)."""

    features: tuple[str, ...]
    entity_type: str
    verify: bool
    batch_size: int


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featurestore-reconcile",
        description="Verify or rebuild the online store (Redis) from the offline history (PostgreSQL).",
        epilog=(
            "Connection flags are the server's, with the same FEATURESTORE_* variables: --postgres-dsn, "
            "--postgres-timeout, --redis-url, --redis-cluster, --redis-timeout, --online-ttl (see "
            "featurestore-server --help). Exit codes: 0 done or consistent, 1 --verify found differences, "
            "2 usage error, 3 a store could not be reached."
        ),
        allow_abbrev=False,
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--features", default="", help="comma-separated feature names (any entity types)")
    which.add_argument("--entity-type", default="", help="every registered feature of this entity type")
    parser.add_argument("--verify", action="store_true", help="report differences only; exit 1 if there are any")
    parser.add_argument("--batch-size", type=int, default=1000, help="(entity, feature) pairs per page (default 1000)")
    return parser


def parse(argv: Sequence[str], environ: Mapping[str, str]) -> tuple[Options, Settings]:
    """This command's options, and the Settings from the remaining flags over FEATURESTORE_* over defaults."""
    parser = _parser()
    args, rest = parser.parse_known_args(list(argv))
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    names = tuple(dict.fromkeys(n.strip() for n in args.features.split(",") if n.strip()))
    if args.features and not names:
        parser.error("--features names no feature")
    options = Options(names, args.entity_type, args.verify, args.batch_size)
    return options, Settings.load(rest, environ)


def select(catalog: Catalog, options: Options) -> dict[str, dict[str, Served]]:
    """The chosen features by entity type; SystemExit(2) names unknown ones."""
    if options.entity_type:
        chosen: list[Served] = [f for f in catalog.features.values() if f.entity_type == options.entity_type]
        if not chosen:
            raise _usage(f"no feature of entity type {options.entity_type!r} is registered")
    else:
        unknown = [n for n in options.features if n not in catalog.features]
        if unknown:
            raise _usage(f"not registered: {', '.join(unknown)}")
        chosen = [catalog.features[n] for n in options.features]
    by_type: dict[str, dict[str, Served]] = {}
    for f in chosen:
        by_type.setdefault(f.entity_type, {})[f.name] = f
    return by_type


def _usage(message: str) -> SystemExit:
    print(f"featurestore-reconcile: {message}", file=sys.stderr)
    return SystemExit(EXIT_USAGE)


def summary(options: Options, by_type: Mapping[str, Mapping[str, Served]], c: Counts) -> str:
    """The one-line report of a run."""
    mode = "verify" if options.verify else "rebuild"
    what = ", ".join(f"{t} ({len(fs_)} features)" for t, fs_ in sorted(by_type.items()))
    outcome = f"written {c.written}" if not options.verify else f"disagreeing {c.disagreeing()}"
    return (
        f"reconcile {mode} {what}: entities {c.entities}, values {c.values}: {outcome}; "
        f"current {c.current}, missing {c.missing}, older {c.older}, differ {c.differ}, "
        f"newer online {c.newer_online} (kept), value type changed {c.type_changed} (skipped)"
    )


async def _catalog(pool: asyncpg.Pool) -> Catalog:
    catalog = Catalog()
    catalog.replace(*await PostgresRegistryStore(pool).registry_snapshot())
    return catalog


@translated_postgres
async def _postgres(settings: Settings) -> asyncpg.Pool:
    return await create_pool(settings.postgres_dsn, min_size=1, max_size=2, command_timeout=settings.postgres_timeout)


async def reconcile(options: Options, settings: Settings) -> int:
    """One run against the configured stores; returns the exit code."""
    pool = await _postgres(settings)
    client = connect(settings.redis_url, cluster=settings.redis_cluster, connections=1, timeout=settings.redis_timeout)
    online = RedisOnlineStore(client, ttl_seconds=settings.online_ttl)
    try:
        by_type = select(await _catalog(pool), options)
        run, total = Run(History(pool), online, options.batch_size, options.verify), Counts()
        for entity_type, features in sorted(by_type.items()):
            total.add(await run.entity_type(entity_type, features))
    finally:
        await online.close()
        await pool.close()
    print(summary(options, by_type, total), flush=True)
    return EXIT_DIFFERS if options.verify and total.disagreeing() else EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    options, settings = parse(sys.argv[1:] if argv is None else argv, local_environment(os.environ) | os.environ)
    try:
        code = asyncio.run(reconcile(options, settings))
    except ServiceError as err:
        print(f"featurestore-reconcile: {err.message}", file=sys.stderr)
        code = EXIT_UNAVAILABLE
    sys.exit(code)


if __name__ == "__main__":
    main()
