"""Authentication and authorization of every call, checked in each method's handler.

`Guard.wrap` wraps a method handler (at registration, in the composition root) so that the
call's bearer token is authenticated and the method's role checked before the servicer
runs. This costs the hot path less than a grpc.aio server interceptor, which gRPC runs as
extra coroutines and a handler lookup per call: an allowed call pays a metadata scan, one
dictionary lookup by the raw `authorization` value (a verified credential is cached until
it expires, or until its key file changes) and one comparison. Registry changes also run
as their principal (`acting_as`: the revision records who made it) and leave an audit
line; a denied call is audited and aborted with a google.rpc.Status (reason
UNAUTHENTICATED or PERMISSION_DENIED). Open methods (health, reflection) are not wrapped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc

from server.auth._audit import record, resource_of
from server.auth._credentials import CACHE_SIZE, ApiKeys, CredentialError, JwtVerifier, Principal
from server.auth._roles import AUDITED, Role
from server.core import acting_as
from server.core.errors import ServiceError

_log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # grpc-stubs' generics are not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
_NOBODY = Principal("", Role.NONE, "none")
_NEVER = float("inf")


class Authenticator:
    """Turns a bearer token into a Principal: JWTs (three dot-separated parts) or API keys."""

    def __init__(self, jwts: JwtVerifier | None, api_keys: ApiKeys | None) -> None:
        self._jwts, self._api_keys = jwts, api_keys
        self.generation = 0  # one more each time a key file changed: cached principals are stale

    def authenticate(self, token: str, now: float) -> tuple[Principal, float]:
        """The token's principal and until when it may be trusted without checking again."""
        if token.count(".") == 2:
            if self._jwts is None:
                raise CredentialError("JWTs are not accepted by this server (no JWKS configured)")
            return self._jwts.verify(token, now)
        if self._api_keys is None:
            raise CredentialError("API keys are not accepted by this server (no API key file configured)")
        return self._api_keys.verify(token), _NEVER

    def refresh(self) -> None:
        """Re-read the JWKS and API key files if they changed."""
        changed = False
        for source in (self._jwts, self._api_keys):
            if source is not None:
                changed = source.refresh() or changed
        if changed:
            self.generation += 1

    async def watch(self, interval: float) -> None:
        """`refresh` every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            self.refresh()


def _unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message)


class _Denied(Exception):
    def __init__(self, principal: Principal, error: ServiceError) -> None:
        self.principal, self.error = principal, error


class Guard:
    """Checks each call against the table `roles` (method -> least role; None: open to anyone)."""

    def __init__(
        self, authenticator: Authenticator, roles: Mapping[str, Role | None], *, required: bool, anonymous: Role
    ) -> None:
        self._authenticator, self._roles = authenticator, roles
        self._anonymous = None if required else Principal("anonymous", anonymous, "anonymous")
        # The raw `authorization` value -> (principal, trusted until, key files' generation).
        self._seen: dict[str, tuple[Principal, float, int]] = {}

    def wrap(self, method: str, handler: Handler) -> Handler:
        """`handler` of the full method name `method`, checked first (unchanged if the method is open)."""
        needed = self._roles.get(method, Role.ADMIN)
        if needed is None:
            return handler
        if handler.request_streaming or handler.response_streaming:
            return self._streaming(method, needed, handler)
        behavior: Any = handler.unary_unary  # an async behavior (grpc-stubs type it as sync)
        principal_of, audited = self.principal, method in AUDITED

        async def guarded(request: object, context: Context) -> object:
            try:
                principal = principal_of(context.invocation_metadata(), needed)
            except _Denied as denied:
                await _deny(denied, method, resource_of(request), context)
                raise AssertionError("abort_with_status returned") from None  # pragma: no cover
            if not audited:
                return await behavior(request, context)
            return await _audited(behavior, principal, method, request, context)

        return grpc.unary_unary_rpc_method_handler(
            guarded, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )

    def _streaming(self, method: str, needed: Role, handler: Handler) -> Handler:
        principal_of = self.principal
        deserialize, serialize = handler.request_deserializer, handler.response_serializer

        async def check(request: object, context: Context) -> None:
            try:
                principal_of(context.invocation_metadata(), needed)
            except _Denied as denied:
                await _deny(denied, method, "" if handler.request_streaming else resource_of(request), context)

        if handler.response_streaming:
            inner: Any = handler.unary_stream or handler.stream_stream

            async def streamed(request: object, context: Context) -> AsyncIterator[object]:
                await check(request, context)
                async for response in inner(request, context):
                    yield response

            make = (
                grpc.stream_stream_rpc_method_handler
                if handler.request_streaming
                else grpc.unary_stream_rpc_method_handler
            )
            return make(streamed, request_deserializer=deserialize, response_serializer=serialize)

        client_streaming: Any = handler.stream_unary

        async def pushed(requests: object, context: Context) -> object:
            await check(requests, context)
            return await client_streaming(requests, context)

        return grpc.stream_unary_rpc_method_handler(
            pushed, request_deserializer=deserialize, response_serializer=serialize
        )

    def principal(self, metadata: Iterable[tuple[str, Any]] | None, needed: Role) -> Principal:
        """The caller, if it may make a call that needs `needed`; else _Denied with the error to answer."""
        header = None
        for key, value in metadata or ():
            if key == "authorization":
                header = value
                break
        if header is None:
            if self._anonymous is None:
                raise _Denied(
                    _NOBODY, _unauthenticated("this call needs a bearer token (authorization: Bearer <token>)")
                )
            principal = self._anonymous
        else:
            seen = self._seen.get(header)
            now = time.time()
            if seen is not None and now < seen[1] and seen[2] == self._authenticator.generation:
                principal = seen[0]
            else:
                principal = self._authenticate(header, now)
        if principal.role < needed:
            raise _Denied(principal, _refusal(principal, needed))
        return principal

    def _authenticate(self, header: object, now: float) -> Principal:
        """Parse and verify an `authorization` value not seen (or no longer trusted); remember a good one."""
        generation = self._authenticator.generation
        try:
            scheme, _, token = str(header).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise CredentialError("the authorization header is not `Bearer <token>`")
            principal, until = self._authenticator.authenticate(token.strip(), now)
        except CredentialError as err:
            raise _Denied(_NOBODY, _unauthenticated(str(err))) from None
        except Exception as err:  # noqa: BLE001  # a bug or a library surprise: refused, never let through
            _log.error("verifying a token failed with %s (not logged: its message)", type(err).__name__)
            raise _Denied(_NOBODY, _unauthenticated("the token could not be verified")) from None
        if len(self._seen) >= CACHE_SIZE:
            del self._seen[next(iter(self._seen))]  # the oldest
        self._seen[str(header)] = (principal, until, generation)
        return principal


def _refusal(principal: Principal, needed: Role) -> ServiceError:
    wanted = needed.name.lower()
    if principal.via == "anonymous":
        return _unauthenticated(f"this call needs a bearer token with role {wanted} or above")
    message = f"{principal.subject!r} (role {principal.role.name.lower()}) may not make this call: it needs {wanted}"
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message)


def _audit(principal: Principal, method: str, resource: str, outcome: str, detail: str, context: Context) -> None:
    record(
        subject=principal.subject,
        via=principal.via,
        role=principal.role.name.lower(),
        method=method,
        resource=resource,
        outcome=outcome,
        detail=detail,
        peer=context.peer(),
    )


async def _deny(denied: _Denied, method: str, resource: str, context: Context) -> None:
    """Log the denial and abort the call with its status."""
    error = denied.error
    _audit(denied.principal, method, resource, error.reason, error.message, context)
    await context.abort_with_status(error.to_status())  # type: ignore[attr-defined]


async def _audited(behavior: Any, principal: Principal, method: str, request: object, context: Context) -> object:
    """A registry change, run as the principal (`acting_as`), with an audit line of its outcome."""
    outcome = "ERROR"
    try:
        with acting_as(principal.subject):  # the registry records who made the revision
            response = await behavior(request, context)
        outcome = "OK"
        return response
    except BaseException:
        with contextlib.suppress(Exception):
            code = context.code()
            outcome = code.name if isinstance(code, grpc.StatusCode) else outcome
        raise
    finally:
        _audit(principal, method, resource_of(request), outcome, "", context)
