"""The RegistryService gRPC servicer: validate, convert, store, convert."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import empty_pb2

from featurestore.registry.v1 import feature_pb2 as pb
from featurestore.registry.v1 import registry_service_pb2 as rs
from featurestore.registry.v1 import registry_service_pb2_grpc as rs_grpc
from server import _paging
from server._rpc import rpc
from server._update import apply_mask
from server.core import caller_subject, identifier_problem
from server.core.errors import FieldViolation, etag_mismatch, invalid_argument
from server.registry._convert import (
    feature_from_proto,
    feature_to_proto,
    group_from_proto,
    group_to_proto,
)
from server.registry._model import Feature, FeatureFilter, FeatureGroup, GroupFilter, Meta
from server.registry._store import RegistryStore
from server.registry._validate import feature_violations, group_violations

Context = grpc.aio.ServicerContext[Any, Any]

_FEATURE_UPDATABLE = frozenset(
    {"description", "source", "category", "frequency", "owner", "tags", "source_config", "transformations", "max_age"}
)
_FEATURE_IMMUTABLE = frozenset({"entity_type", "value_type"})
_GROUP_UPDATABLE = frozenset({"description", "feature_names", "owner", "tags"})
_GROUP_IMMUTABLE = frozenset({"entity_type"})


def _require_name(field: str, name: str) -> None:
    problem = identifier_problem(name)
    if problem:
        raise invalid_argument([FieldViolation(field, problem)])


def _ensure_valid(violations: list[FieldViolation]) -> None:
    if violations:
        raise invalid_argument(violations)


def _check_etag(kind: str, name: str, etag: str, meta: Meta | None) -> None:
    if etag and meta is not None and etag != meta.etag(name):
        raise etag_mismatch(kind, name)


def _read(meta: Meta | None) -> Meta:
    """The Meta a write is conditional on (what the caller's etag was checked against)."""
    assert meta is not None, "stored records always carry meta"
    return meta


def _same_definition(stored: Feature | FeatureGroup, candidate: Feature | FeatureGroup) -> bool:
    return stored == dataclasses.replace(candidate, meta=stored.meta)


async def _nothing() -> None:
    return None


class RegistryServicer(rs_grpc.RegistryServiceServicer):
    """Feature and feature group definitions, stored through a RegistryStore.

    `after_write` runs after every successful change, before the answer: the
    composition root refreshes this process's serving snapshot there, so a
    client that registers a feature can read it from the same process at once.
    """

    def __init__(self, store: RegistryStore, after_write: Callable[[], Awaitable[object]] = _nothing) -> None:
        self._store = store
        self._after_write = after_write

    # -- features -----------------------------------------------------------

    @rpc
    async def CreateFeature(self, request: rs.CreateFeatureRequest, context: Context) -> pb.Feature:
        feature = feature_from_proto(request.feature)
        _ensure_valid(feature_violations(feature))
        created = await self._store.create_feature(feature, actor=caller_subject())
        await self._after_write()
        return feature_to_proto(created)

    @rpc
    async def GetFeature(self, request: rs.GetFeatureRequest, context: Context) -> pb.Feature:
        _require_name("name", request.name)
        return feature_to_proto(await self._store.get_feature(request.name))

    @rpc
    async def ListFeatures(self, request: rs.ListFeaturesRequest, context: Context) -> rs.ListFeaturesResponse:
        category = pb.FeatureCategory.Name(request.category) if request.category else ""
        flt = FeatureFilter(request.entity_type, request.owner, request.tag, category)
        size = _paging.page_size(request.page_size)
        page = await self._store.list_features(flt, size, _paging.decode_token(request.page_token, [flt]))
        return rs.ListFeaturesResponse(
            features=[feature_to_proto(f) for f in page.items],
            next_page_token=_paging.encode_token(page.next_cursor, [flt]),
        )

    @rpc
    async def UpdateFeature(self, request: rs.UpdateFeatureRequest, context: Context) -> pb.Feature:
        name = request.feature.name
        _require_name("feature.name", name)
        current = await self._store.get_feature(name)
        _check_etag("feature", name, request.feature.etag, current.meta)
        merged = apply_mask(
            feature_to_proto(current),
            request.feature,
            request.update_mask,
            _FEATURE_UPDATABLE,
            _FEATURE_IMMUTABLE,
            "feature",
        )
        updated = feature_from_proto(merged)
        _ensure_valid(feature_violations(updated))
        if _same_definition(current, updated):
            return feature_to_proto(current)
        replaced = await self._store.replace_feature(updated, _read(current.meta), actor=caller_subject())
        await self._after_write()
        return feature_to_proto(replaced)

    @rpc
    async def DeleteFeature(self, request: rs.DeleteFeatureRequest, context: Context) -> empty_pb2.Empty:
        _require_name("name", request.name)
        expected = None
        if request.etag:
            current = await self._store.get_feature(request.name)
            _check_etag("feature", request.name, request.etag, current.meta)
            expected = _read(current.meta)
        await self._store.delete_feature(request.name, expected, actor=caller_subject())
        await self._after_write()
        return empty_pb2.Empty()

    @rpc
    async def ListFeatureRevisions(
        self, request: rs.ListFeatureRevisionsRequest, context: Context
    ) -> rs.ListFeatureRevisionsResponse:
        _require_name("name", request.name)
        size = _paging.page_size(request.page_size)
        cursor = _paging.decode_token(request.page_token, [request.name])
        if cursor and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):  # a revision id: a bigint
            raise invalid_argument([FieldViolation("page_token", "is not a token returned by this listing")])
        page = await self._store.list_feature_revisions(request.name, size, cursor)
        return rs.ListFeatureRevisionsResponse(
            features=[feature_to_proto(f) for f in page.items],
            next_page_token=_paging.encode_token(page.next_cursor, [request.name]),
        )

    # -- groups -------------------------------------------------------------

    @rpc
    async def CreateFeatureGroup(self, request: rs.CreateFeatureGroupRequest, context: Context) -> pb.FeatureGroup:
        group = group_from_proto(request.feature_group)
        _ensure_valid(group_violations(group))
        created = await self._store.create_group(group, actor=caller_subject())
        await self._after_write()
        return group_to_proto(created)

    @rpc
    async def GetFeatureGroup(self, request: rs.GetFeatureGroupRequest, context: Context) -> pb.FeatureGroup:
        _require_name("name", request.name)
        return group_to_proto(await self._store.get_group(request.name))

    @rpc
    async def ListFeatureGroups(
        self, request: rs.ListFeatureGroupsRequest, context: Context
    ) -> rs.ListFeatureGroupsResponse:
        flt = GroupFilter(request.entity_type, request.owner, request.tag)
        size = _paging.page_size(request.page_size)
        page = await self._store.list_groups(flt, size, _paging.decode_token(request.page_token, [flt]))
        return rs.ListFeatureGroupsResponse(
            feature_groups=[group_to_proto(g) for g in page.items],
            next_page_token=_paging.encode_token(page.next_cursor, [flt]),
        )

    @rpc
    async def UpdateFeatureGroup(self, request: rs.UpdateFeatureGroupRequest, context: Context) -> pb.FeatureGroup:
        name = request.feature_group.name
        _require_name("feature_group.name", name)
        current = await self._store.get_group(name)
        _check_etag("feature group", name, request.feature_group.etag, current.meta)
        merged = apply_mask(
            group_to_proto(current),
            request.feature_group,
            request.update_mask,
            _GROUP_UPDATABLE,
            _GROUP_IMMUTABLE,
            "feature_group",
        )
        updated = group_from_proto(merged)
        _ensure_valid(group_violations(updated))
        if _same_definition(current, updated):
            return group_to_proto(current)
        replaced = await self._store.replace_group(updated, _read(current.meta), actor=caller_subject())
        await self._after_write()
        return group_to_proto(replaced)

    @rpc
    async def DeleteFeatureGroup(self, request: rs.DeleteFeatureGroupRequest, context: Context) -> empty_pb2.Empty:
        _require_name("name", request.name)
        expected = None
        if request.etag:
            current = await self._store.get_group(request.name)
            _check_etag("feature group", request.name, request.etag, current.meta)
            expected = _read(current.meta)
        await self._store.delete_group(request.name, expected, actor=caller_subject())
        await self._after_write()
        return empty_pb2.Empty()
