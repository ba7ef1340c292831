"""The serving catalog (server/online/_catalog.py): snapshots from a fake registry, request plans."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import grpc
import pytest

from server.core.errors import MAX_VIOLATIONS, ServiceError
from server.online import Catalog, CatalogRefresher
from server.registry import Feature, FeatureGroup
from tests.unit._fakes import FakeRegistry, run

MOST = 1_000


def make(*features: Feature, groups: tuple[FeatureGroup, ...] = ()) -> tuple[Catalog, CatalogRefresher, FakeRegistry]:
    """A catalog refreshed from a fake registry holding `features` and `groups`."""
    registry, catalog = FakeRegistry(), Catalog()
    refresher = CatalogRefresher(catalog, registry, interval=60)

    async def load() -> None:
        for f in features:
            await registry.create_feature(f)
        for g in groups:
            await registry.create_group(g)
        assert await refresher.refresh()

    run(load())
    return catalog, refresher, registry


def feature(name: str, entity_type: str = "customer", value_type: str = "INT64", **kw: object) -> Feature:
    return Feature(name=name, entity_type=entity_type, value_type=value_type, **kw)  # type: ignore[arg-type]


def violations(error: ServiceError) -> dict[str, str]:
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    return {v.field: v.description for v in error.violations}


def test_a_refresh_loads_the_snapshot_once_per_registry_version() -> None:
    catalog, refresher, registry = make(feature("a"), feature("b", "product"))
    assert sorted(catalog.features) == ["a", "b"]
    assert (catalog.version, catalog.feature_count("customer"), catalog.feature_count("vendor")) == (2, 1, 0)
    assert run(refresher.refresh()) is False  # unchanged: not reloaded
    run(registry.create_feature(feature("c")))
    assert run(refresher.refresh()) is True
    assert catalog.version == 3
    assert catalog.feature_count("customer") == 2


def test_a_plan_lists_names_then_each_groups_members_in_order_with_duplicates() -> None:
    catalog, *_ = make(feature("a"), feature("b"), feature("c"), groups=(FeatureGroup("g", "customer", ("c", "a")),))
    plan = catalog.plan("customer", ("b", "a"), ("g",), MOST)
    assert [f.name for f in plan.features] == ["b", "a", "c", "a"]
    assert len(plan.fields) == len(plan.not_found) == len(plan.json_fields) == 4
    assert plan.fields[1] == plan.fields[3]


def test_unknown_features_groups_and_other_entity_types_are_named_by_position() -> None:
    catalog, *_ = make(feature("a"), feature("p", "product"))
    with pytest.raises(ServiceError) as info:
        catalog.plan("customer", ("a", "nope", "p"), ("no_group",), MOST)
    assert violations(info.value) == {
        "feature_groups[0]": "feature group 'no_group' does not exist",
        "feature_names[1]": "feature 'nope' does not exist",
        "feature_names[2]": "feature 'p' has entity_type 'product', not 'customer'",
    }


def test_a_bad_entity_type_is_invalid() -> None:
    catalog, *_ = make(feature("a"))
    with pytest.raises(ServiceError) as info:
        catalog.plan("Customer!", ("a",), (), MOST)
    assert "entity_type" in violations(info.value)


def test_violations_stop_at_the_reporting_limit() -> None:
    catalog, *_ = make(feature("a"))
    names = tuple(f"missing{i}" for i in range(100))
    with pytest.raises(ServiceError) as info:
        catalog.plan("customer", names, (), MOST)
    assert len(info.value.violations) == MAX_VIOLATIONS


def test_requests_over_the_limit_are_refused_before_expanding_groups() -> None:
    members = tuple(f"m{i}" for i in range(10))
    catalog, *_ = make(*(feature(m) for m in members), groups=(FeatureGroup("g", "customer", members),))
    assert len(catalog.plan("customer", (), ("g",) * 3, 30).features) == 30
    with pytest.raises(ServiceError) as info:
        catalog.plan("customer", ("m0",), ("g",) * 3, 30)
    assert "names more than 30 features" in violations(info.value)["feature_names"]
    with pytest.raises(ServiceError):
        catalog.plan("customer", ("m0",) * 31, (), 30)


def test_plans_are_cached_per_snapshot() -> None:
    catalog, refresher, registry = make(feature("a"))
    first = catalog.plan("customer", ("a",), (), MOST)
    assert catalog.plan("customer", ("a",), (), MOST) is first
    run(registry.create_feature(feature("b")))
    run(refresher.refresh())
    assert catalog.plan("customer", ("a",), (), MOST) is not first


def test_a_feature_registered_again_with_another_type_reads_another_field() -> None:
    catalog, refresher, registry = make(feature("y"))
    before = catalog.plan("customer", ("y",), (), MOST).fields
    run(registry.delete_feature("y", None))
    run(registry.create_feature(feature("y", value_type="STRING")))
    run(refresher.refresh())
    after = catalog.plan("customer", ("y",), (), MOST).fields
    assert before != after
    assert catalog.features["y"].value_kind == "string_value"


def test_max_age_is_explicit_else_twice_the_frequency_else_none() -> None:
    catalog, *_ = make(
        feature("explicit", max_age=timedelta(minutes=5), frequency="DAILY"),
        feature("daily", frequency="DAILY"),
        feature("realtime", frequency="REALTIME"),
    )
    ages = {name: catalog.features[name].max_age_micros for name in ("explicit", "daily", "realtime")}
    assert ages == {"explicit": 300_000_000, "daily": 2 * 86_400_000_000, "realtime": None}


def test_expiry_cutoffs_follow_each_features_max_age() -> None:
    catalog, *_ = make(
        feature("a", max_age=timedelta(seconds=1)), feature("b"), feature("c", max_age=timedelta(seconds=1))
    )
    plan = catalog.plan("customer", ("a", "b", "c"), (), MOST)
    cutoffs = plan.cutoffs(10_000_000)
    assert len(cutoffs) == 3
    assert cutoffs[0] == cutoffs[2] != cutoffs[1]


def test_the_refresher_reloads_when_the_registry_notifies() -> None:
    async def go() -> None:
        registry, catalog = FakeRegistry(), Catalog()
        refresher = CatalogRefresher(catalog, registry, interval=60)  # polling alone would take a minute
        running = asyncio.create_task(refresher.run())
        try:
            async with asyncio.timeout(10):
                while not registry.watched:
                    await asyncio.sleep(0.01)
                await registry.create_feature(feature("late"))
                while "late" not in catalog.features:
                    await asyncio.sleep(0.01)
        finally:
            running.cancel()

    run(go())
