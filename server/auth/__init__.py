"""Authentication (JWTs against a JWKS file, static API keys), role-based authorization and audit lines.

`AuthInterceptor` is the one grpc.aio interceptor; `METHOD_ROLES` the one table of the role
each RPC needs. The composition root builds them from Settings (nothing here reads the
environment); docs/security.md describes modes, tokens, key files and audit lines.
"""

from server.auth._audit import AUDIT_LOGGER, audit_to_stderr
from server.auth._credentials import ALGORITHMS, CACHE_SIZE, ApiKeys, CredentialError, JwtVerifier, Principal, hash_key
from server.auth._interceptor import Authenticator, AuthInterceptor
from server.auth._roles import AUDITED, METHOD_ROLES, ROLES, Role

__all__ = [
    "ALGORITHMS",
    "AUDITED",
    "AUDIT_LOGGER",
    "CACHE_SIZE",
    "METHOD_ROLES",
    "ROLES",
    "ApiKeys",
    "AuthInterceptor",
    "Authenticator",
    "CredentialError",
    "JwtVerifier",
    "Principal",
    "Role",
    "audit_to_stderr",
    "hash_key",
]
