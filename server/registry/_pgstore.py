"""The registry's PostgreSQL store (asyncpg).

Each write is one transaction that also appends to `registry_revisions`, so
the history is exactly the sequence of committed definitions. Unique and
foreign keys settle races: of two concurrent creates one gets ALREADY_EXISTS,
and a feature cannot vanish under a group being created.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ParamSpec, TypeVar

import asyncpg
import grpc

from server.core.errors import (
    FieldViolation,
    ServiceError,
    already_exists,
    etag_mismatch,
    invalid_argument,
    not_found,
)
from server.core.postgres import translated_postgres
from server.registry._model import (
    EventField,
    Feature,
    FeatureFilter,
    FeatureGroup,
    GroupFilter,
    Meta,
    Page,
    SourceConfig,
    Transformation,
)

P = ParamSpec("P")
R = TypeVar("R")
Row = asyncpg.Record
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_COLUMNS = "name, definition, revision, create_time, update_time, revised_by"
# Statements per table; table names are constants, values always parameters.
_FEATURES = "registry_features"
_GROUPS = "registry_feature_groups"


def _statements(table: str) -> dict[str, str]:
    return {
        "insert": "INSERT INTO " + table + " (name, definition, revision, create_time, update_time, revised_by) "
        "VALUES ($1, $2, 1, now(), now(), $3) RETURNING " + _COLUMNS,
        "get": "SELECT " + _COLUMNS + " FROM " + table + " WHERE name = $1",
        "list": "SELECT " + _COLUMNS + " FROM " + table,
        "exists": "SELECT 1 FROM " + table + " WHERE name = $1",
        "replace": "UPDATE " + table + " SET definition = $2, revision = revision + 1, update_time = now(), "
        "revised_by = $4 WHERE name = $1 AND revision = $3 AND create_time = $5 RETURNING " + _COLUMNS,
        "delete": "DELETE FROM " + table + " WHERE name = $1 "
        "AND ($2::bigint IS NULL OR (revision = $2 AND create_time = $3)) RETURNING " + _COLUMNS,
    }


_SQL = {_FEATURES: _statements(_FEATURES), _GROUPS: _statements(_GROUPS)}


def _condition(expected: Meta | None) -> tuple[int | None, datetime | None]:
    """A delete's condition ($2, $3): the revision and creation the caller read, or none."""
    return (None, None) if expected is None else (expected.revision, expected.create_time)


_translated = translated_postgres  # driver errors become ServiceErrors at the store's edge


def _stream_definition(sc: SourceConfig) -> dict[str, Any]:
    """A stream's settings, only when set: batch definitions keep their stored form."""
    out: dict[str, Any] = {}
    if sc.stream or sc.format or sc.fields or sc.watermark is not None:
        out = {"stream": sc.stream, "format": sc.format, "fields": [[f.name, f.type] for f in sc.fields]}
        out["watermark_seconds"] = sc.watermark.total_seconds() if sc.watermark is not None else None
    return out


def _source_from_row(d: dict[str, Any]) -> SourceConfig:
    watermark = d.get("watermark_seconds")
    return SourceConfig(
        table=d["table"],
        filter=d["filter"],
        entity_column=d["entity_column"],
        timestamp_column=d["timestamp_column"],
        stream=d.get("stream", ""),
        format=d.get("format", ""),
        fields=tuple(EventField(name, kind) for name, kind in d.get("fields", ())),
        watermark=timedelta(seconds=watermark) if watermark is not None else None,
    )


def _step_from_row(d: dict[str, Any]) -> Transformation:
    window = d.get("window_seconds")
    return Transformation(
        d["type"], d["function"], d["column"], d["expression"], timedelta(seconds=window) if window else None
    )


def _feature_definition(f: Feature) -> dict[str, Any]:
    return {
        "entity_type": f.entity_type,
        "value_type": f.value_type,
        "description": f.description,
        "source": f.source,
        "category": f.category,
        "frequency": f.frequency,
        "owner": f.owner,
        "tags": list(f.tags),
        "source_config": {
            "table": f.source_config.table,
            "filter": f.source_config.filter,
            "entity_column": f.source_config.entity_column,
            "timestamp_column": f.source_config.timestamp_column,
            **_stream_definition(f.source_config),
        },
        "transformations": [
            {"type": t.type, "function": t.function, "column": t.column, "expression": t.expression}
            | ({"window_seconds": t.window.total_seconds()} if t.window is not None else {})
            for t in f.transformations
        ],
        "max_age_seconds": f.max_age.total_seconds() if f.max_age is not None else None,
    }


def _meta(row: Row) -> Meta:
    return Meta(
        revision=row["revision"],
        create_time=row["create_time"],
        update_time=row["update_time"],
        revised_by=row["revised_by"],
    )


def _feature_from_row(row: Row) -> Feature:
    d = row["definition"]
    max_age = d.get("max_age_seconds")
    return Feature(
        name=row["name"],
        entity_type=d["entity_type"],
        value_type=d["value_type"],
        description=d["description"],
        source=d["source"],
        category=d["category"],
        frequency=d["frequency"],
        owner=d["owner"],
        tags=tuple(d["tags"]),
        source_config=_source_from_row(d["source_config"]),
        transformations=tuple(_step_from_row(t) for t in d["transformations"]),
        max_age=timedelta(seconds=max_age) if max_age is not None else None,
        meta=_meta(row),
    )


def _group_definition(g: FeatureGroup) -> dict[str, Any]:
    return {
        "entity_type": g.entity_type,
        "feature_names": list(g.feature_names),
        "description": g.description,
        "owner": g.owner,
        "tags": list(g.tags),
    }


def _group_from_row(row: Row) -> FeatureGroup:
    d = row["definition"]
    return FeatureGroup(
        name=row["name"],
        entity_type=d["entity_type"],
        feature_names=tuple(d["feature_names"]),
        description=d["description"],
        owner=d["owner"],
        tags=tuple(d["tags"]),
        meta=_meta(row),
    )


async def _record(conn: Conn, kind: str, change: str, row: Row, actor: str) -> None:
    """Append the change to the history: the definition as committed, and who made the change."""
    await conn.execute(
        "INSERT INTO registry_revisions (kind, name, revision, change, definition, create_time, update_time, "
        "revised_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        kind,
        row["name"],
        row["revision"],
        change,
        row["definition"],
        row["create_time"],
        row["update_time"],
        actor,
    )
    await conn.execute("SELECT pg_notify('featurestore_registry', $1)", f"{kind}:{row['name']}")


def _filter_sql(clauses: list[tuple[str, str]], after: str, page_size: int) -> tuple[str, list[Any]]:
    """WHERE/ORDER/LIMIT for a keyset page; each clause applies only if its value is non-empty."""
    conditions, args = ["name > $1"], list[Any]([after])
    for sql, value in clauses:
        if value:
            args.append(value)
            conditions.append(sql.format(f"${len(args)}"))
    args.append(page_size + 1)
    return f" WHERE {' AND '.join(conditions)} ORDER BY name LIMIT ${len(args)}", args


def _page(items: list[R], page_size: int, cursor: Callable[[R], str]) -> Page[R]:
    if len(items) > page_size:
        return Page(tuple(items[:page_size]), cursor(items[page_size - 1]))
    return Page(tuple(items), None)


class PostgresRegistryStore:
    """RegistryStore on PostgreSQL through an asyncpg pool."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    @_translated
    async def ping(self) -> None:
        await self._pool.fetchval("SELECT 1")

    # -- snapshots for serving ----------------------------------------------

    @_translated
    async def registry_version(self) -> int:
        """The newest revision id: it changes with every committed definition change."""
        return int(await self._pool.fetchval("SELECT coalesce(max(id), 0) FROM registry_revisions"))

    async def watch_changes(self, on_change: Callable[[], None]) -> None:
        """LISTEN for the notification every registry write sends; returns when the connection is lost."""
        async with self._pool.acquire() as conn:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _: lost.set())

            def notified(*_: object) -> None:
                on_change()

            await conn.add_listener("featurestore_registry", notified)
            try:
                await lost.wait()
            finally:
                if not conn.is_closed():
                    await conn.remove_listener("featurestore_registry", notified)

    @_translated
    async def registry_snapshot(self) -> tuple[int, list[Feature], list[FeatureGroup]]:
        """Every definition and the version they are at, read consistently."""
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            version = int(await conn.fetchval("SELECT coalesce(max(id), 0) FROM registry_revisions"))
            features = [_feature_from_row(r) for r in await conn.fetch(_SQL[_FEATURES]["list"])]
            groups = [_group_from_row(r) for r in await conn.fetch(_SQL[_GROUPS]["list"])]
        return version, features, groups

    # -- features -----------------------------------------------------------

    @_translated
    async def create_feature(self, feature: Feature, *, actor: str = "") -> Feature:
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    _SQL[_FEATURES]["insert"],
                    feature.name,
                    _feature_definition(feature),
                    actor,
                )
            except asyncpg.UniqueViolationError:
                raise already_exists("feature", feature.name) from None
            assert row is not None
            await _record(conn, "feature", "CREATE", row, actor)
        return _feature_from_row(row)

    @_translated
    async def get_feature(self, name: str) -> Feature:
        row = await self._pool.fetchrow(_SQL[_FEATURES]["get"], name)
        if row is None:
            raise not_found("feature", name)
        return _feature_from_row(row)

    @_translated
    async def list_features(self, flt: FeatureFilter, page_size: int, after: str) -> Page[Feature]:
        clauses = [
            ("entity_type = {}", flt.entity_type),
            ("owner = {}", flt.owner),
            ("definition -> 'tags' ? {}", flt.tag),
            ("category = {}", flt.category),
        ]
        where, args = _filter_sql(clauses, after, page_size)
        rows = await self._pool.fetch(_SQL[_FEATURES]["list"] + where, *args)
        return _page([_feature_from_row(r) for r in rows], page_size, lambda f: f.name)

    @_translated
    async def replace_feature(self, feature: Feature, expected: Meta, *, actor: str = "") -> Feature:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _SQL[_FEATURES]["replace"],
                feature.name,
                _feature_definition(feature),
                expected.revision,
                actor,
                expected.create_time,
            )
            if row is None:
                raise await self._lost_race(conn, _FEATURES, "feature", feature.name)
            await _record(conn, "feature", "UPDATE", row, actor)
        return _feature_from_row(row)

    @_translated
    async def delete_feature(self, name: str, expected: Meta | None, *, actor: str = "") -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    _SQL[_FEATURES]["delete"],
                    name,
                    *_condition(expected),
                )
            except (asyncpg.ForeignKeyViolationError, asyncpg.RestrictViolationError):
                raise await self._feature_in_use(name) from None
            if row is None:
                raise await self._lost_race(conn, _FEATURES, "feature", name)
            await _record(conn, "feature", "DELETE", row, actor)

    @_translated
    async def list_feature_revisions(self, name: str, page_size: int, after: str) -> Page[Feature]:
        rows = await self._pool.fetch(
            "SELECT id, name, definition, revision, create_time, update_time, revised_by FROM registry_revisions "
            "WHERE kind = 'feature' AND name = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
            name,
            int(after) if after else 2**63 - 1,
            page_size + 1,
        )
        if not rows and not after:
            raise not_found("feature", name)
        features = [(r["id"], _feature_from_row(r)) for r in rows]
        page = _page(features, page_size, lambda pair: str(pair[0]))
        return Page(tuple(f for _, f in page.items), page.next_cursor)

    async def _feature_in_use(self, name: str) -> ServiceError:
        groups = await self._pool.fetch(
            "SELECT DISTINCT group_name FROM registry_group_members WHERE feature_name = $1 ORDER BY 1", name
        )
        used_by = ", ".join(r["group_name"] for r in groups)
        return ServiceError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "FEATURE_IN_USE",
            f"feature {name!r} is used by feature groups: {used_by}; remove it from them first",
            metadata={"name": name, "feature_groups": used_by},
        )

    @staticmethod
    async def _lost_race(conn: Conn, table: str, kind: str, name: str) -> ServiceError:
        """The error for a conditional write that matched no row."""
        exists = await conn.fetchval(_SQL[table]["exists"], name)
        return etag_mismatch(kind, name) if exists else not_found(kind, name)

    # -- groups -------------------------------------------------------------

    @_translated
    async def create_group(self, group: FeatureGroup, *, actor: str = "") -> FeatureGroup:
        async with self._pool.acquire() as conn, conn.transaction():
            try:
                row = await conn.fetchrow(
                    _SQL[_GROUPS]["insert"],
                    group.name,
                    _group_definition(group),
                    actor,
                )
            except asyncpg.UniqueViolationError:
                raise already_exists("feature group", group.name) from None
            assert row is not None
            await self._set_members(conn, group)
            await _record(conn, "feature_group", "CREATE", row, actor)
        return _group_from_row(row)

    @_translated
    async def get_group(self, name: str) -> FeatureGroup:
        row = await self._pool.fetchrow(_SQL[_GROUPS]["get"], name)
        if row is None:
            raise not_found("feature group", name)
        return _group_from_row(row)

    @_translated
    async def list_groups(self, flt: GroupFilter, page_size: int, after: str) -> Page[FeatureGroup]:
        clauses = [
            ("entity_type = {}", flt.entity_type),
            ("owner = {}", flt.owner),
            ("definition -> 'tags' ? {}", flt.tag),
        ]
        where, args = _filter_sql(clauses, after, page_size)
        rows = await self._pool.fetch(_SQL[_GROUPS]["list"] + where, *args)
        return _page([_group_from_row(r) for r in rows], page_size, lambda g: g.name)

    @_translated
    async def replace_group(self, group: FeatureGroup, expected: Meta, *, actor: str = "") -> FeatureGroup:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _SQL[_GROUPS]["replace"],
                group.name,
                _group_definition(group),
                expected.revision,
                actor,
                expected.create_time,
            )
            if row is None:
                raise await self._lost_race(conn, _GROUPS, "feature group", group.name)
            await conn.execute("DELETE FROM registry_group_members WHERE group_name = $1", group.name)
            await self._set_members(conn, group)
            await _record(conn, "feature_group", "UPDATE", row, actor)
        return _group_from_row(row)

    @_translated
    async def delete_group(self, name: str, expected: Meta | None, *, actor: str = "") -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                _SQL[_GROUPS]["delete"],
                name,
                *_condition(expected),
            )
            if row is None:
                raise await self._lost_race(conn, _GROUPS, "feature group", name)
            await _record(conn, "feature_group", "DELETE", row, actor)

    @staticmethod
    async def _set_members(conn: Conn, group: FeatureGroup) -> None:
        """Insert the members after checking they exist with the group's entity type.

        FOR KEY SHARE keeps the features from being deleted until commit.
        """
        rows = await conn.fetch(
            "SELECT name, entity_type FROM registry_features WHERE name = ANY($1::text[]) FOR KEY SHARE",
            list(group.feature_names),
        )
        entity_types = {r["name"]: r["entity_type"] for r in rows}
        violations = []
        for i, feature_name in enumerate(group.feature_names):
            found = entity_types.get(feature_name)
            if found is None:
                violations.append(
                    FieldViolation(f"feature_group.feature_names[{i}]", f"feature {feature_name!r} does not exist")
                )
            elif found != group.entity_type:
                violations.append(
                    FieldViolation(
                        f"feature_group.feature_names[{i}]",
                        f"feature {feature_name!r} has entity_type {found!r}, the group has {group.entity_type!r}",
                    )
                )
        if violations:
            raise invalid_argument(violations)
        await conn.executemany(
            "INSERT INTO registry_group_members (group_name, position, feature_name) VALUES ($1, $2, $3)",
            [(group.name, i, f) for i, f in enumerate(group.feature_names)],
        )
