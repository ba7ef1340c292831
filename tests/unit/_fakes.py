"""In-memory fakes of our store Protocols (never of Redis or PostgreSQL clients), and a servicer context.

- FakeRegistry: server.registry.RegistryStore and the catalog's RegistrySource.
- FakeOnlineStore: server.online.OnlineStore, keeping the key layout's contract (values filed
  under the kind they hold; a value replaces a stored one only if it is not older).
- FakeHistory: server.online HistorySink.
- FakeContext: what the servicers use of grpc.aio.ServicerContext; an abort raises Aborted.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2, status_pb2

from server.core import HistoryRow, HistoryRows, KeyWrite
from server.core.codec import TIME_BYTES
from server.core.errors import ServiceError, already_exists, not_found
from server.online._redis import stored_kind, value_field
from server.registry import Feature, FeatureFilter, FeatureGroup, GroupFilter, Meta, Page

T = TypeVar("T")


def _incarnation(meta: Meta) -> tuple[int, datetime]:
    """What a conditional write compares: the revision of one creation of the definition."""
    return meta.revision, meta.create_time


def _aborted(kind: str, name: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ABORTED, "CONCURRENT_CHANGE", f"{kind} {name!r} changed meanwhile")


def _page(items: Sequence[T], key: Callable[[T], str], page_size: int, after: str) -> Page[T]:
    rest = [item for item in items if key(item) > after] if after else list(items)
    page = tuple(rest[:page_size])
    return Page(page, key(page[-1]) if len(rest) > page_size else None)


class FakeRegistry:
    """Feature and group definitions in dicts; every write bumps the registry's version."""

    def __init__(self) -> None:
        self.features: dict[str, Feature] = {}
        self.groups: dict[str, FeatureGroup] = {}
        self.revisions: dict[str, list[Feature]] = {}
        self.version = 0
        self.writes = 0
        self._listeners: list[Callable[[], None]] = []

    def _meta(self, previous: Meta | None = None, actor: str = "") -> Meta:
        self.version += 1
        self.writes += 1
        for listener in self._listeners:
            listener()
        now = datetime.now(UTC)
        return Meta(self.version, previous.create_time if previous else now, now, actor)

    # -- RegistryStore: features

    async def create_feature(self, feature: Feature, *, actor: str = "") -> Feature:
        if feature.name in self.features:
            raise already_exists("feature", feature.name)
        stored = dataclasses.replace(feature, meta=self._meta(actor=actor))
        self.features[feature.name] = stored
        self.revisions.setdefault(feature.name, []).append(stored)
        return stored

    async def get_feature(self, name: str) -> Feature:
        if name not in self.features:
            raise not_found("feature", name)
        return self.features[name]

    async def list_features(self, flt: FeatureFilter, page_size: int, after: str) -> Page[Feature]:
        wanted = [
            f
            for _, f in sorted(self.features.items())
            if flt.entity_type in ("", f.entity_type)
            and flt.owner in ("", f.owner)
            and (not flt.tag or flt.tag in f.tags)
            and flt.category in ("", f.category)
        ]
        return _page(wanted, lambda f: f.name, page_size, after)

    async def replace_feature(self, feature: Feature, expected: Meta, *, actor: str = "") -> Feature:
        current = await self.get_feature(feature.name)
        if current.meta is None or _incarnation(current.meta) != _incarnation(expected):
            raise _aborted("feature", feature.name)
        stored = dataclasses.replace(feature, meta=self._meta(current.meta, actor))
        self.features[feature.name] = stored
        self.revisions[feature.name].append(stored)
        return stored

    async def delete_feature(self, name: str, expected: Meta | None, *, actor: str = "") -> None:
        current = await self.get_feature(name)
        if expected is not None and (current.meta is None or _incarnation(current.meta) != _incarnation(expected)):
            raise _aborted("feature", name)
        del self.features[name]
        self._meta(actor=actor)

    async def list_feature_revisions(self, name: str, page_size: int, after: str) -> Page[Feature]:
        if name not in self.revisions:
            raise not_found("feature", name)
        newest_first = sorted(self.revisions[name], key=lambda f: -f.meta.revision if f.meta else 0)
        before = int(after) if after else None
        rest = [f for f in newest_first if f.meta and (before is None or f.meta.revision < before)]
        page = tuple(rest[:page_size])
        last = page[-1].meta if page else None
        return Page(page, str(last.revision) if last and len(rest) > page_size else None)

    # -- RegistryStore: groups

    async def create_group(self, group: FeatureGroup, *, actor: str = "") -> FeatureGroup:
        if group.name in self.groups:
            raise already_exists("feature group", group.name)
        for name in group.feature_names:
            if name not in self.features:
                raise not_found("feature", name)
        stored = dataclasses.replace(group, meta=self._meta(actor=actor))
        self.groups[group.name] = stored
        return stored

    async def get_group(self, name: str) -> FeatureGroup:
        if name not in self.groups:
            raise not_found("feature group", name)
        return self.groups[name]

    async def list_groups(self, flt: GroupFilter, page_size: int, after: str) -> Page[FeatureGroup]:
        wanted = [
            g
            for _, g in sorted(self.groups.items())
            if flt.entity_type in ("", g.entity_type)
            and flt.owner in ("", g.owner)
            and (not flt.tag or flt.tag in g.tags)
        ]
        return _page(wanted, lambda g: g.name, page_size, after)

    async def replace_group(self, group: FeatureGroup, expected: Meta, *, actor: str = "") -> FeatureGroup:
        current = await self.get_group(group.name)
        if current.meta is None or _incarnation(current.meta) != _incarnation(expected):
            raise _aborted("feature group", group.name)
        stored = dataclasses.replace(group, meta=self._meta(current.meta, actor))
        self.groups[group.name] = stored
        return stored

    async def delete_group(self, name: str, expected: Meta | None, *, actor: str = "") -> None:
        current = await self.get_group(name)
        if expected is not None and (current.meta is None or _incarnation(current.meta) != _incarnation(expected)):
            raise _aborted("feature group", name)
        del self.groups[name]
        self._meta(actor=actor)

    async def ping(self) -> None:
        return None

    # -- RegistrySource (server.online._catalog)

    async def registry_version(self) -> int:
        return self.version

    async def registry_snapshot(self) -> tuple[int, list[Feature], list[FeatureGroup]]:
        return self.version, list(self.features.values()), list(self.groups.values())

    @property
    def watched(self) -> bool:
        """Whether a watch_changes call is waiting for changes."""
        return bool(self._listeners)

    async def watch_changes(self, on_change: Callable[[], None]) -> None:
        self._listeners.append(on_change)
        try:
            await asyncio.Event().wait()  # until cancelled, as a LISTEN connection that stays up
        finally:
            self._listeners.remove(on_change)


class FakeOnlineStore:
    """Entity hashes in dicts. Writers pass feature names; each value is filed under the kind it holds
    (as server/online/_redis.py describes), both forms replaced only by a value that is not older."""

    def __init__(self) -> None:
        self.hashes: dict[bytes, dict[bytes, bytes]] = {}
        self.reads: list[tuple[list[bytes], list[bytes]]] = []
        self.calls: list[str] = []

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        self.reads.append((list(keys), list(fields)))
        self.calls.append("read")
        return [self.hashes.get(key, {}).get(field) for key in keys for field in fields]

    async def read_each(
        self, keys: Sequence[bytes], fields: Sequence[bytes], each: Callable[[int, list[bytes | None]], T]
    ) -> list[T]:
        return [each(0, await self.read(keys, fields))]

    async def write(self, writes: Sequence[KeyWrite]) -> int:
        self.calls.append("write")
        written = 0
        for write in writes:
            stored = self.hashes.setdefault(write.key, {})
            pairs = list(write.values)
            for (name, proto), (json_name, json) in zip(pairs[0::2], pairs[1::2], strict=True):
                kind = stored_kind(proto)
                field, json_field = value_field(name, kind), value_field(json_name, kind)
                old = stored.get(field)
                if old is None or proto[:TIME_BYTES] >= old[:TIME_BYTES]:
                    stored[field], stored[json_field] = proto, json
                    written += 1
        return written

    async def ping(self) -> None:
        return None


class FakeHistory:
    """History rows appended in a list; `calls` shares its log with a FakeOnlineStore to see the order."""

    def __init__(self, calls: list[str] | None = None) -> None:
        self.rows: list[HistoryRow] = []
        self.calls = calls if calls is not None else []

    async def append(self, rows: HistoryRows, timeout: float | None = None) -> None:
        self.calls.append("append")
        self.rows += map(HistoryRow._make, rows.records())


class Aborted(Exception):
    """A servicer ended its call with a status (what grpc.aio's abort_with_status does)."""

    def __init__(self, status: grpc.Status) -> None:
        self.status = status
        self.code: grpc.StatusCode = status.code
        self.rich = status_pb2.Status()
        for key, value in status.trailing_metadata:
            if key == "grpc-status-details-bin":
                self.rich.ParseFromString(value)
        super().__init__(f"{self.code.name}: {status.details}")

    @property
    def reason(self) -> str:
        for detail in self.rich.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return str(info.reason)
        return ""

    @property
    def field_violations(self) -> dict[str, str]:
        for detail in self.rich.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                return {v.field: v.description for v in bad.field_violations}
        return {}


class FakeContext:
    """The parts of grpc.aio.ServicerContext the servicers use."""

    def __init__(self, time_remaining: float | None = None) -> None:
        self._time_remaining = time_remaining

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise Aborted(status)

    def time_remaining(self) -> float | None:
        return self._time_remaining


def run(call: Awaitable[T]) -> T:
    """Run one servicer call (a coroutine) to its end on a fresh event loop."""

    async def go() -> T:
        return await call

    return asyncio.run(go())


async def stream(items: Iterable[T]) -> AsyncIterator[T]:
    """`items` as a client stream."""
    for item in items:
        yield item


def unary(method: Callable[[Any, Any], Awaitable[T]], request: Any, context: FakeContext | None = None) -> T:
    """Call a servicer's unary method with a FakeContext."""
    return run(method(request, context or FakeContext()))
