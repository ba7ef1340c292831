"""The online store's interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.core import HistoryRows, KeyWrite


class OnlineStore(Protocol):
    """Latest feature values per entity key. Raises ServiceError(UNAVAILABLE) when unreachable."""

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]: ...

    async def write(self, writes: Sequence[KeyWrite]) -> int: ...

    async def ping(self) -> None: ...


class HistorySink(Protocol):
    """Where written values are also appended, for history (the offline store)."""

    async def append(self, rows: HistoryRows, timeout: float | None = None) -> None:
        """Append `rows`; `timeout`: seconds the caller has left (None: the store's own limit)."""
        ...
