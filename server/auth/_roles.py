"""Roles and the one table of what role each RPC needs."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum


class Role(IntEnum):
    """Ordered: each role may do everything the roles below it may."""

    NONE = 0  # authenticated, but granted nothing
    READER = 1  # online, historical and training reads; registry reads
    WRITER = 2  # + WriteFeatures, PushFeatures
    EDITOR = 3  # + registry create, update, delete
    ADMIN = 4  # everything, including any method without an entry below


ROLES = {role.name.lower(): role for role in Role}

_REGISTRY = "/featurestore.registry.v1.RegistryService/"
_STORE = "/featurestore.serving.v1.FeatureStoreService/"

# Every RPC the server answers, by full method name, and the least role that may call it
# (server/_app.py wraps every handler of both services with Guard.wrap, which reads this);
# None: open to anyone, even without a token (health probes, the API's schema by reflection,
# which production turns off with `reflection=false`). A method missing here needs ADMIN;
# tests/test_auth.py fails when a method of the services has no entry.
METHOD_ROLES: dict[str, Role | None] = {
    _REGISTRY + "GetFeature": Role.READER,
    _REGISTRY + "ListFeatures": Role.READER,
    _REGISTRY + "ListFeatureRevisions": Role.READER,
    _REGISTRY + "GetFeatureGroup": Role.READER,
    _REGISTRY + "ListFeatureGroups": Role.READER,
    _REGISTRY + "CreateFeature": Role.EDITOR,
    _REGISTRY + "UpdateFeature": Role.EDITOR,
    _REGISTRY + "DeleteFeature": Role.EDITOR,
    _REGISTRY + "CreateFeatureGroup": Role.EDITOR,
    _REGISTRY + "UpdateFeatureGroup": Role.EDITOR,
    _REGISTRY + "DeleteFeatureGroup": Role.EDITOR,
    _STORE + "GetFeatures": Role.READER,
    _STORE + "BatchGetFeatures": Role.READER,
    _STORE + "GetFeaturesJson": Role.READER,
    _STORE + "BatchGetFeaturesJson": Role.READER,
    _STORE + "GetHistoricalFeatures": Role.READER,
    _STORE + "StreamHistoricalFeatures": Role.READER,
    _STORE + "GetTrainingDataset": Role.READER,
    _STORE + "WriteFeatures": Role.WRITER,
    _STORE + "PushFeatures": Role.WRITER,
    "/grpc.health.v1.Health/Check": None,
    "/grpc.health.v1.Health/Watch": None,
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo": None,
}

# Registry changes: each one, allowed or not, is an audit line.
AUDITED = frozenset(method for method, role in METHOD_ROLES.items() if role is Role.EDITOR)


def highest_role(names: Iterable[object]) -> Role:
    """The highest of the known role names among `names` (NONE if there is none)."""
    return max((ROLES[name] for name in names if isinstance(name, str) and name in ROLES), default=Role.NONE)
