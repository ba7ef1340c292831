"""The online store's interface."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from server.online._redis import KeyWrite


class OnlineStore(Protocol):
    """Latest feature values per entity key. Raises ServiceError(UNAVAILABLE) when unreachable."""

    async def read(self, keys: Sequence[bytes], fields: Sequence[bytes]) -> list[bytes | None]: ...

    async def write(self, writes: Sequence[KeyWrite]) -> int: ...

    async def ping(self) -> None: ...
