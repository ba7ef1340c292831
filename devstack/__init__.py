"""The local stack: real PostgreSQL, Valkey, server and Envoy on loopback (for `make up` and tests)."""
