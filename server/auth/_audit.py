"""Audit lines: one JSON object per line on the `featurestore.audit` logger.

Who (subject, how authenticated, role), what (method, resource), the outcome, and why
(a fixed phrase of ours). Never a token, a key, or a request's values.
"""

from __future__ import annotations

import json
import logging
import sys
import time

AUDIT_LOGGER = "featurestore.audit"
_log = logging.getLogger(AUDIT_LOGGER)


def audit_to_stderr() -> None:
    """Write audit lines bare (one JSON object a line) to stderr, apart from the server's other logs."""
    if not _log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _log.addHandler(handler)
    _log.setLevel(logging.INFO)
    _log.propagate = False


def resource_of(request: object) -> str:
    """The registry resource a request names (a feature or group), or ""."""
    for holder in ("feature", "feature_group"):
        inner = getattr(request, holder, None)
        if inner is not None and hasattr(inner, "name"):
            return str(inner.name)
    return str(getattr(request, "name", ""))


def record(
    *, subject: str, via: str, role: str, method: str, resource: str, outcome: str, detail: str, peer: str
) -> None:
    """Log one audit line."""
    line = {
        "audit": "featurestore",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "subject": subject,
        "via": via,
        "role": role,
        "method": method,
        "resource": resource,
        "outcome": outcome,
        "detail": detail,
        "peer": peer,
    }
    _log.info(json.dumps(line, ensure_ascii=True, separators=(",", ":")))
