"""The history's group commit (server.offline._pgstore._GroupCommit) without PostgreSQL: who copies what, when."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date

import pytest

from server.offline._pgstore import _GroupCommit


class _GatedCopy:
    """A COPY that waits for its gate (one per call, in call order) and records what it copied."""

    def __init__(self) -> None:
        self.gates: list[asyncio.Future[None]] = []
        self.copied: list[list[bytes]] = []

    async def __call__(self, records: Sequence[bytes], months: set[date]) -> None:
        gate = asyncio.get_running_loop().create_future()
        self.gates.append(gate)
        await gate
        self.copied.append(list(records))

    def open_all(self) -> None:
        for gate in self.gates:
            if not gate.done():
                gate.set_result(None)


@pytest.mark.parametrize("copies", [1, 2])
def test_an_append_as_the_drains_finish_is_committed_at_once(copies: int) -> None:
    """An append that runs in the loop turn in which every drain finds nothing left must start a drain
    of its own (a drain that ended but was still counted as running left it waiting for its timeout)."""

    async def scenario() -> list[list[bytes]]:
        copy = _GatedCopy()
        group = _GroupCommit(copy, group_rows=1, copies=copies)
        loop = asyncio.get_running_loop()
        first = [asyncio.ensure_future(group.append([f"r{i}".encode()], set(), 5)) for i in range(copies)]
        late_start: asyncio.Future[None] = loop.create_future()

        async def late() -> None:
            await late_start  # woken in the same turn as the drains' last steps, after them
            await group.append([b"late"], set(), 2)

        late_task = asyncio.ensure_future(late())
        await asyncio.sleep(0.01)
        assert len(copy.gates) == copies
        copy.open_all()
        late_start.set_result(None)
        while not late_task.done():  # the late append's own COPY, once it starts
            copy.open_all()
            await asyncio.sleep(0.001)
        await asyncio.gather(*first, late_task)
        return copy.copied

    copied = asyncio.run(asyncio.wait_for(scenario(), 1.5))  # well before the late append's 2 s timeout
    assert sorted(copied) == sorted([[f"r{i}".encode()] for i in range(copies)] + [[b"late"]])


def test_appends_while_a_copy_runs_share_the_next_group() -> None:
    async def scenario() -> list[list[bytes]]:
        copy = _GatedCopy()
        group = _GroupCommit(copy, group_rows=100, copies=1)
        calls = [asyncio.ensure_future(group.append([b"a"], set(), 5))]
        await asyncio.sleep(0.01)
        calls += [asyncio.ensure_future(group.append([r], set(), 5)) for r in (b"b", b"c")]
        await asyncio.sleep(0.01)
        while not all(c.done() for c in calls):
            copy.open_all()
            await asyncio.sleep(0.001)
        await asyncio.gather(*calls)
        return copy.copied

    assert asyncio.run(scenario()) == [[b"a"], [b"b", b"c"]]
