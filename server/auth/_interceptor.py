"""The server interceptor: authenticate the bearer token, check the method's role, audit.

The hot path of an allowed call is a metadata scan, a dictionary lookup of the (cached)
token and of the method's role, and one comparison; only registry changes are wrapped
(for their audit line). A denied call gets a handler of the same kind that logs the
denial and aborts with a google.rpc.Status (reason UNAUTHENTICATED or PERMISSION_DENIED).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from server.auth._audit import record, resource_of
from server.auth._credentials import ApiKeys, CredentialError, JwtVerifier, Principal
from server.auth._roles import AUDITED, Role
from server.core import acting_as
from server.core.errors import ServiceError

_log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:  # grpc-stubs' generics are not subscriptable at run time
    Handler = grpc.RpcMethodHandler[Any, Any]
    Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler, Interceptor = grpc.RpcMethodHandler, grpc.aio.ServerInterceptor
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable["Handler | None"]]
_NOBODY = Principal("", Role.NONE, "none")


class Authenticator:
    """Turns a bearer token into a Principal: JWTs (three dot-separated parts) or API keys."""

    def __init__(self, jwts: JwtVerifier | None, api_keys: ApiKeys | None) -> None:
        self._jwts, self._api_keys = jwts, api_keys

    def authenticate(self, token: str) -> Principal:
        if token.count(".") == 2:
            if self._jwts is None:
                raise CredentialError("JWTs are not accepted by this server (no JWKS configured)")
            return self._jwts.verify(token, time.time())
        if self._api_keys is None:
            raise CredentialError("API keys are not accepted by this server (no API key file configured)")
        return self._api_keys.verify(token)

    async def watch(self, interval: float) -> None:
        """Re-read the JWKS and API key files when they change, every `interval` seconds."""
        while True:
            await asyncio.sleep(interval)
            for source in (self._jwts, self._api_keys):
                if source is not None:
                    source.refresh()


def _unauthenticated(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED", message)


def _bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of the `authorization: Bearer <token>` metadata, None without one."""
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise CredentialError("the authorization header is not `Bearer <token>`")
            return token.strip()
    return None


class AuthInterceptor(Interceptor):
    """Authentication and authorization of every call, by the table `roles`."""

    def __init__(
        self, authenticator: Authenticator, roles: Mapping[str, Role | None], *, required: bool, anonymous: Role
    ) -> None:
        self._authenticator, self._roles = authenticator, roles
        self._anonymous = None if required else Principal("anonymous", anonymous, "anonymous")

    async def intercept_service(  # type: ignore[override]  # grpc-stubs: None (no such method) is allowed
        self, continuation: Continuation, details: grpc.HandlerCallDetails
    ) -> Handler | None:
        method = details.method
        needed = self._roles.get(method, Role.ADMIN)
        if needed is None:
            return await continuation(details)
        try:
            principal = self._principal(details.invocation_metadata)
        except CredentialError as err:
            return _denied(await continuation(details), _NOBODY, method, _unauthenticated(str(err)))
        if principal.role < needed:
            return _denied(await continuation(details), principal, method, _refusal(principal, needed))
        handler = await continuation(details)
        if method in AUDITED and handler is not None:
            return _audited(handler, principal, method)
        return handler

    def _principal(self, metadata: Sequence[tuple[str, Any]] | None) -> Principal:
        token = _bearer(metadata)
        if token is not None:
            try:
                return self._authenticator.authenticate(token)
            except CredentialError:
                raise
            except Exception as err:  # noqa: BLE001  # a bug or a library surprise: refused, never let through
                _log.error("verifying a token failed with %s (not logged: its message)", type(err).__name__)
                raise CredentialError("the token could not be verified") from None
        if self._anonymous is None:
            raise CredentialError("this call needs a bearer token (authorization: Bearer <token>)")
        return self._anonymous


def _refusal(principal: Principal, needed: Role) -> ServiceError:
    wanted = needed.name.lower()
    if principal.via == "anonymous":
        return _unauthenticated(f"this call needs a bearer token with role {wanted} or above")
    message = f"{principal.subject!r} (role {principal.role.name.lower()}) may not make this call: it needs {wanted}"
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", message)


def _audit(principal: Principal, method: str, resource: str, outcome: str, detail: str, context: Context) -> None:
    role = principal.role.name.lower()
    peer = context.peer()
    record(
        subject=principal.subject,
        via=principal.via,
        role=role,
        method=method,
        resource=resource,
        outcome=outcome,
        detail=detail,
        peer=peer,
    )


def _denied(handler: Handler | None, principal: Principal, method: str, error: ServiceError) -> Handler | None:
    """A handler of `handler`'s kind that logs the denial and aborts with `error`'s status."""
    if handler is None:
        return None  # no such method: gRPC answers UNIMPLEMENTED
    status, outcome = error.to_status(), error.reason

    async def unary(request: object, context: Context) -> None:
        _audit(principal, method, resource_of(request), outcome, error.message, context)
        await context.abort_with_status(status)  # type: ignore[attr-defined]

    async def streaming(requests: AsyncIterator[object], context: Context) -> None:
        _audit(principal, method, "", outcome, error.message, context)
        await context.abort_with_status(status)  # type: ignore[attr-defined]

    if handler.request_streaming:
        make = (
            grpc.stream_stream_rpc_method_handler
            if handler.response_streaming
            else grpc.stream_unary_rpc_method_handler
        )
        return make(streaming)
    make = grpc.unary_stream_rpc_method_handler if handler.response_streaming else grpc.unary_unary_rpc_method_handler
    return make(unary, request_deserializer=handler.request_deserializer)


def _audited(handler: Handler, principal: Principal, method: str) -> Handler:
    """`handler` (unary) run as the principal (`acting_as`), with an audit line of the change's outcome."""
    behavior: Any = handler.unary_unary  # an async behavior (grpc-stubs type it as sync)
    if behavior is None:
        return handler

    async def audited(request: object, context: Context) -> object:
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

    return grpc.unary_unary_rpc_method_handler(
        audited, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )
