"""Authentication (JWTs against a JWKS file, static API keys), role-based authorization and audit lines.

`Guard.wrap` checks each method handler's calls (the composition root wraps every handler
with it); `METHOD_ROLES` is the one table of the role each RPC needs. The composition root
builds them from Settings (nothing here reads the environment); docs/security.md describes
modes, tokens, key files and audit lines.
"""

from server.auth._audit import AUDIT_LOGGER, audit_to_stderr
from server.auth._credentials import ALGORITHMS, CACHE_SIZE, ApiKeys, CredentialError, JwtVerifier, Principal, hash_key
from server.auth._guard import Authenticator, Guard
from server.auth._roles import AUDITED, METHOD_ROLES, ROLES, Role

__all__ = [
    "ALGORITHMS",
    "AUDITED",
    "AUDIT_LOGGER",
    "CACHE_SIZE",
    "METHOD_ROLES",
    "ROLES",
    "ApiKeys",
    "Authenticator",
    "CredentialError",
    "Guard",
    "JwtVerifier",
    "Principal",
    "Role",
    "audit_to_stderr",
    "hash_key",
]
