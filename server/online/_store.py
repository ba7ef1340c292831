"""The online store's interface."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from server.core import HistoryRows, KeyWrite

R = TypeVar("R")


class OnlineStore(Protocol):
    """Latest feature values per entity key. Raises ServiceError(UNAVAILABLE) when unreachable."""

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]:
        """The values of `fields` for each key, flat and key-major; None where nothing is stored."""
        ...

    async def read_each(
        self, keys: Sequence[bytes], fields: Sequence[bytes], each: Callable[[int, list[bytes | None]], R]
    ) -> list[R]:
        """`read` in pieces of whole keys, in key order: `each(first, values)` of every piece as it
        arrives (`values` are those of the keys from `keys[first]` on), the results in key order."""
        ...

    async def write(self, writes: Sequence[KeyWrite]) -> int: ...

    async def ping(self) -> None: ...


class HistorySink(Protocol):
    """Where written values are also appended, for history (the offline store)."""

    async def append(self, rows: HistoryRows, timeout: float | None = None) -> None:
        """Append `rows`; `timeout`: seconds the caller has left (None: the store's own limit)."""
        ...
