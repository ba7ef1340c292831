"""An in-memory snapshot of the registry for serving: no request touches PostgreSQL.

The snapshot is reloaded in the background whenever the registry's version
(the newest revision id) changes, checked every `interval` seconds. Requests
resolve their features through `plan()`, whose results are cached per
snapshot, so a repeated request shape costs one dict lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from featurestore.serving.v1 import value_pb2
from server._metrics import mark_registry_checked
from server.core import VALUE_KINDS, codec, entity_type_problem
from server.core.errors import MAX_VIOLATIONS, FieldViolation, invalid_argument
from server.online._redis import value_field
from server.registry import Feature, FeatureGroup

_log = logging.getLogger(__name__)

_PLAN_CACHE_MAX = 4096
# The plan cache holds at most this many features over all its plans (~150 bytes each),
# and no plan of more than a sixteenth of it: a few huge request shapes cannot fill memory.
_PLAN_CACHE_FEATURES = 200_000
_PLAN_CACHE_LARGEST = _PLAN_CACHE_FEATURES // 16
_KIND_NUMBERS = {kind: value_pb2.Value.DESCRIPTOR.fields_by_name[kind].number for kind in VALUE_KINDS.values()}


class RegistrySource(Protocol):
    """Where snapshots come from (the registry store)."""

    async def registry_version(self) -> int: ...

    async def registry_snapshot(self) -> tuple[int, list[Feature], list[FeatureGroup]]: ...

    async def watch_changes(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` at every registry change until the watch breaks (then return or raise)."""
        ...


@dataclass(frozen=True, slots=True)
class ServedFeature:
    """What serving and writing need to know of one feature.

    `field` and `json_field` are the hash fields reads ask for (the value kind in their
    names, see _redis); writers hand the store `name_field` and `name_json_field`.
    """

    name: str
    name_field: bytes
    name_json_field: bytes
    field: bytes
    entity_type: str
    value_type: str
    value_kind: str
    frequency: str
    max_age_micros: int | None
    not_found: bytes
    json_field: bytes
    not_found_json: bytes


@dataclass(frozen=True, slots=True)
class Plan:
    """A resolved request shape: the features, in response order."""

    features: tuple[ServedFeature, ...]
    fields: tuple[bytes, ...]
    not_found: list[bytes]
    json_fields: tuple[bytes, ...]
    not_found_json: list[bytes]
    not_found_examples: list[bytes]
    label: str  # the feature_group label of its served-values metric
    _ages: tuple[int | None, ...]
    _age_index: tuple[int, ...]

    def cutoffs(self, now_micros: int) -> list[bytes]:
        """The expiry cutoff of each feature at `now_micros`."""
        per_age = [codec.cutoff(now_micros, age) for age in self._ages]
        return [per_age[i] for i in self._age_index]


def _served(f: Feature) -> ServedFeature:
    max_age = f.effective_max_age()
    kind_number = _KIND_NUMBERS[VALUE_KINDS[f.value_type]]
    return ServedFeature(
        name=f.name,
        name_field=f.name.encode(),
        name_json_field=f.name.encode() + codec.JSON_FIELD_SUFFIX,
        field=value_field(f.name.encode(), kind_number),
        entity_type=f.entity_type,
        value_type=f.value_type,
        value_kind=VALUE_KINDS[f.value_type],
        frequency=f.frequency,
        max_age_micros=None if max_age is None else int(max_age.total_seconds() * 1_000_000),
        not_found=codec.not_found_frame(f.name),
        json_field=value_field(f.name.encode() + codec.JSON_FIELD_SUFFIX, kind_number),
        not_found_json=codec.not_found_json(f.name),
    )


def _make_plan(features: list[ServedFeature], label: str = "_features") -> Plan:
    ages = tuple(dict.fromkeys(f.max_age_micros for f in features))
    return Plan(
        features=tuple(features),
        fields=tuple(f.field for f in features),
        not_found=[f.not_found for f in features],
        json_fields=tuple(f.json_field for f in features),
        not_found_json=[f.not_found_json for f in features],
        not_found_examples=[codec.EXAMPLE_FEATURES_TAG + f.not_found[1:] for f in features],
        label=label,
        _ages=ages,
        _age_index=tuple(ages.index(f.max_age_micros) for f in features),
    )


def _label(names: tuple[str, ...], groups: tuple[str, ...]) -> str:
    """The feature group a request names, for metrics: bounded by the registry (see server._metrics)."""
    if len(groups) == 1 and not names:
        return groups[0]
    return "_features" if not groups else "_several"


class Catalog:
    """The current registry snapshot and the request plans resolved against it."""

    def __init__(self) -> None:
        self.version = -1
        self.features: dict[str, ServedFeature] = {}
        self.groups: dict[str, tuple[str, ...]] = {}
        self._per_entity_type: Counter[str] = Counter()
        self._groups_per_entity_type: Counter[str] = Counter()
        self._plans: dict[tuple[str, tuple[str, ...], tuple[str, ...]], Plan] = {}
        self._cached_features = 0
        self._encoders: dict[str, dict[str, codec.ValueEncoder]] = {}

    def encoders(self, entity_type: str) -> dict[str, codec.ValueEncoder]:
        """The value encoder of each feature of `entity_type`, by name (kept per snapshot)."""
        found = self._encoders.get(entity_type)
        if found is None:
            features = self.features.values()
            found = {f.name: codec.encoder(f.name, f.value_kind) for f in features if f.entity_type == entity_type}
            if len(self._encoders) < _PLAN_CACHE_MAX:  # bounded: entity types come from requests
                self._encoders[entity_type] = found
        return found

    def replace(self, version: int, features: list[Feature], groups: list[FeatureGroup]) -> None:
        """Swap in a new snapshot (one assignment each: readers never see a mix)."""
        self.features = {f.name: _served(f) for f in features}
        self.groups = {g.name: g.feature_names for g in groups}
        self._per_entity_type = Counter(f.entity_type for f in features)
        self._groups_per_entity_type = Counter(g.entity_type for g in groups)
        self._plans = {}
        self._cached_features = 0
        self._encoders = {}
        self.version = version

    def definitions(self) -> list[tuple[str, str, int]]:
        """(entity type, "feature" or "feature_group", how many are registered), for metrics."""
        features, groups = self._per_entity_type, self._groups_per_entity_type
        return [(t, "feature", n) for t, n in features.items()] + [(t, "feature_group", n) for t, n in groups.items()]

    def plan_cache_size(self) -> tuple[int, int]:
        """(plans cached, features over all cached plans)."""
        return len(self._plans), self._cached_features

    def feature_count(self, entity_type: str) -> int:
        """How many features of `entity_type` are registered."""
        return self._per_entity_type[entity_type]

    def plan(self, entity_type: str, names: tuple[str, ...], groups: tuple[str, ...], most: int) -> Plan:
        """The features a read asks for; INVALID_ARGUMENT names each unknown or mismatched one.

        A request shape not seen before is counted (names plus the groups' members, with
        duplicates) against `most` before anything is expanded or cached.
        """
        key = (entity_type, names, groups)
        found = self._plans.get(key)
        if found is None:
            self.check_size(names, groups, most)
            found = self._resolve(entity_type, names, groups)
            self._remember(key, found)
        return found

    def check_size(self, names: tuple[str, ...], groups: tuple[str, ...], most: int) -> None:
        """INVALID_ARGUMENT if the request names more than `most` features, groups expanded."""
        count = len(names) + len(groups)
        if count <= most:
            count = len(names)
            for group in groups:
                count += len(self.groups.get(group, ()))
                if count > most:
                    break
        if count > most:
            problem = f"names more than {most} features (groups count as their members); the limit here is {most}"
            raise invalid_argument([FieldViolation("feature_names", problem)])

    def _remember(self, key: tuple[str, tuple[str, ...], tuple[str, ...]], plan: Plan) -> None:
        size = len(plan.features)
        if size > _PLAN_CACHE_LARGEST:
            return
        if len(self._plans) >= _PLAN_CACHE_MAX or self._cached_features + size > _PLAN_CACHE_FEATURES:
            self._plans, self._cached_features = {}, 0
        self._plans[key] = plan
        self._cached_features += size

    def _resolve(self, entity_type: str, names: tuple[str, ...], groups: tuple[str, ...]) -> Plan:
        violations = entity_type_problem(entity_type)
        wanted = [(f"feature_names[{i}]", n) for i, n in enumerate(names)]
        for i, group in enumerate(groups):
            members = self.groups.get(group)
            if members is None:
                violations.append(FieldViolation(f"feature_groups[{i}]", f"feature group {group!r} does not exist"))
            else:
                wanted += [(f"feature_groups[{i}]", n) for n in members]
        features = []
        for path, name in wanted:
            features.append(self.resolve(path, name, entity_type, violations))
            if len(violations) >= MAX_VIOLATIONS:
                break
        if violations:
            raise invalid_argument(violations)
        return _make_plan([f for f in features if f is not None], _label(names, groups))

    def resolve(self, path: str, name: str, entity_type: str, violations: list[FieldViolation]) -> ServedFeature | None:
        """One feature by name, or None with a violation at `path`."""
        feature = self.features.get(name)
        if feature is None:
            violations.append(FieldViolation(path, f"feature {name!r} does not exist"))
        elif feature.entity_type != entity_type:
            problem = f"feature {name!r} has entity_type {feature.entity_type!r}, not {entity_type!r}"
            violations.append(FieldViolation(path, problem))
            return None
        return feature


class CatalogRefresher:
    """Keeps a Catalog equal to the registry.

    A change notification (PostgreSQL NOTIFY, sent by every registry write)
    triggers a refresh at once; polling the version every `interval` seconds
    covers notifications lost while the watch was down.
    """

    def __init__(self, catalog: Catalog, source: RegistrySource, interval: float) -> None:
        self._catalog = catalog
        self._source = source
        self._interval = interval
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()

    async def refresh(self) -> bool:
        """Reload if the registry changed; True if a new snapshot was loaded."""
        async with self._lock:
            if await self._source.registry_version() == self._catalog.version:
                mark_registry_checked(self._catalog.version, len(self._catalog.features), loaded=False)
                return False
            version, features, groups = await self._source.registry_snapshot()
            self._catalog.replace(version, features, groups)
            mark_registry_checked(version, len(features), loaded=True)
        _log.info("registry snapshot %d: %d features, %d groups", version, len(features), len(groups))
        return True

    async def refresh_quietly(self) -> None:
        """refresh(), logging instead of raising: for callers whose own work already succeeded."""
        try:
            await self.refresh()
        except Exception as exc:  # noqa: BLE001 - the periodic refresh will retry
            _log.warning("registry refresh failed, serving snapshot %d: %s", self._catalog.version, exc)

    async def run(self) -> None:
        """Refresh on every notification and every `interval` seconds, forever."""
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self._interval)
                self._changed.clear()
                await self.refresh_quietly()
        finally:
            watcher.cancel()

    async def _watch(self) -> None:
        while True:
            try:
                await self._source.watch_changes(self._changed.set)
            except Exception as exc:  # noqa: BLE001 - polling covers the gap; watch again later
                _log.info("registry change notifications unavailable (%s); polling", exc)
            await asyncio.sleep(max(self._interval, 1.0))
