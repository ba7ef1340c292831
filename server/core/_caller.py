"""Who is making the current call: the authenticated subject, for the records a call leaves.

The auth guard sets it around a registry change (`acting_as`), in the call's own task;
the registry reads it (`caller_subject`) to record who made each revision. Without
authentication (auth_mode off) it is empty.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_SUBJECT: ContextVar[str] = ContextVar("featurestore_caller_subject", default="")


def caller_subject() -> str:
    """The subject of the call in progress ("" when nobody authenticated it)."""
    return _SUBJECT.get()


@contextmanager
def acting_as(subject: str) -> Iterator[None]:
    """Within the block, `caller_subject()` is `subject`."""
    token = _SUBJECT.set(subject)
    try:
        yield
    finally:
        _SUBJECT.reset(token)
