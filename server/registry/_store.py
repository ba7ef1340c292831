"""The registry's storage interface, in domain terms."""

from __future__ import annotations

from typing import Protocol

from server.registry._model import Feature, FeatureFilter, FeatureGroup, GroupFilter, Meta, Page


class RegistryStore(Protocol):
    """Durable storage of feature and group definitions.

    Methods raise `server.core.errors.ServiceError` (NOT_FOUND, ALREADY_EXISTS,
    ABORTED on a lost race, FAILED_PRECONDITION, UNAVAILABLE); driver errors
    never escape. `expected` (the Meta the caller read) makes a write conditional: it
    applies only while the stored definition is still that one, the same revision of the same
    creation (a definition deleted and created again starts over at revision 1). `actor` is who makes a change (the
    caller's authenticated subject, "" without authentication): each revision records it.
    """

    async def create_feature(self, feature: Feature, *, actor: str = "") -> Feature: ...

    async def get_feature(self, name: str) -> Feature: ...

    async def list_features(self, flt: FeatureFilter, page_size: int, after: str) -> Page[Feature]: ...

    async def replace_feature(self, feature: Feature, expected: Meta, *, actor: str = "") -> Feature: ...

    async def delete_feature(self, name: str, expected: Meta | None, *, actor: str = "") -> None: ...

    async def list_feature_revisions(self, name: str, page_size: int, after: str) -> Page[Feature]: ...

    async def create_group(self, group: FeatureGroup, *, actor: str = "") -> FeatureGroup: ...

    async def get_group(self, name: str) -> FeatureGroup: ...

    async def list_groups(self, flt: GroupFilter, page_size: int, after: str) -> Page[FeatureGroup]: ...

    async def replace_group(self, group: FeatureGroup, expected: Meta, *, actor: str = "") -> FeatureGroup: ...

    async def delete_group(self, name: str, expected: Meta | None, *, actor: str = "") -> None: ...

    async def ping(self) -> None: ...
