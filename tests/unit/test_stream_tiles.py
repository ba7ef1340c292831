"""The tile store's packed form and the micro-batch's shortcuts, without Spark or Valkey running."""

from __future__ import annotations

import random

import pytest

from jobs._events import EventSchema
from jobs._stream_plan import StreamFeature, StreamPlan
from jobs._tiles import _feature_tiles, merge, needs_finish, pack_tiles, partial_of, unpack_tiles, uses_clock

SCHEMA = EventSchema(
    fields=(("customer_id", "STRING"), ("amount", "FLOAT"), ("t", "TIMESTAMP")), entity="customer_id", time="t"
)


def feature(function: str, minutes: int = 60, **kw: object) -> StreamFeature:
    base: dict[str, object] = {"filters": (), "column": "amount", "post": (), "value_type": "FLOAT"}
    return StreamFeature(name=f"f_{function}", function=function, window_seconds=minutes * 60, **(base | kw))  # type: ignore[arg-type]


def plan(*features: StreamFeature) -> StreamPlan:
    return StreamPlan("customer", "purchases", SCHEMA, 300, features)


def reference(function: str, values: list[tuple[int, int, float | str]], first: int, last: int) -> object:
    """The window value straight from the events (tile, time, value) in tiles first..last."""
    mine = [(t, at, x) for t, at, x in values if first <= t <= last]
    xs = [x for _, _, x in mine]
    if function == "count":
        return len(xs)
    if function == "sum":
        return sum(xs, 0.0)
    if function == "avg":
        return sum(xs) / len(xs) if xs else None  # type: ignore[arg-type]
    if function in ("min", "max"):
        return (min if function == "min" else max)(xs) if xs else None
    if function == "last":
        return max(((at, x) for _, at, x in mine), default=(None, None))[1]
    return len(set(xs))


@pytest.mark.parametrize("function", ["count", "sum", "avg", "min", "max", "last", "count_distinct"])
def test_tiles_merged_over_batches_equal_the_reference(function: str) -> None:
    """Batches of events in random tiles (late ones too) merged into the stored form one after the
    other: after each, the window value equals the reference over every event still in the window."""
    rng = random.Random(function)
    f = feature(function, minutes=30)
    raw: bytes | None = None
    seen: list[tuple[int, int, float | str]] = []
    last = 1_000
    for _ in range(40):
        last += rng.choice((0, 1, 3))
        new: dict[int, list[object]] = {}
        for _ in range(rng.randint(0, 6)):
            tile = last - rng.randint(0, 40)  # some before the window: dropped
            at = tile * 60_000_000 + rng.randint(0, 59_999_999)
            x: float | str = (
                float(rng.randint(-5, 5)) if function not in ("last", "count_distinct") else rng.choice("abc")
            )
            one = partial_of(function, at, x)
            new[tile] = merge(new[tile], one) if tile in new else one
            seen.append((tile, at, x))
        raw, value = _feature_tiles(f, raw, new, last)
        want = reference(function, seen, last - f.window_tiles + 1, last)
        assert value == (pytest.approx(want) if isinstance(want, float) else want)


def test_stored_tiles_older_than_the_window_are_dropped() -> None:
    f = feature("sum", minutes=10)
    raw, _ = _feature_tiles(f, None, {100: partial_of("sum", 0, 1.0), 105: partial_of("sum", 0, 2.0)}, 105)
    raw, value = _feature_tiles(f, raw, {}, 112)  # tiles 103..112 are in the window now
    assert value == 2.0
    assert len(raw) == 5 * 8  # one tile of five doubles left


def test_a_plan_reads_the_clock_when_an_input_expression_does() -> None:
    assert not uses_clock(plan(feature("sum"), feature("count", filters=("amount > 1",))))
    assert uses_clock(plan(feature("sum"), feature("count", filters=("t > now() - INTERVAL 1 HOUR",))))
    assert not uses_clock(plan(feature("count", filters=("customer_id = 'now()'",))))  # quoted: data, not the clock
    assert not uses_clock(plan(feature("sum", post=("value * unix_seconds(current_timestamp())",))))  # post: after


def test_finish_is_needed_for_a_post_step_or_another_type() -> None:
    assert not needs_finish(
        plan(feature("sum"), feature("count", value_type="INT64"), feature("last", value_type="STRING"))
    )
    assert needs_finish(plan(feature("sum", post=("value * 10",))))
    assert needs_finish(plan(feature("count", value_type="FLOAT")))
    assert needs_finish(plan(feature("sum", value_type="INT64")))


def test_an_entity_record_packs_and_unpacks_its_batch_and_features() -> None:
    features = {b"f_sum": b"\x00" * 40, b"f_last": b'[[1,2,"a"]]', b"": b""}
    assert unpack_tiles(pack_tiles(-1 + 2**40, features)) == (-1 + 2**40, features)
    assert unpack_tiles(None) == (-1, {})
    with pytest.raises(ValueError, match="version"):
        unpack_tiles(b"{}")
