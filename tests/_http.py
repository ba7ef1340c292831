"""A tiny HTTP client for REST tests: raw bodies in, status/headers/JSON out."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Response:
    status: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class Rest:
    """Requests against one base URL, such as http://127.0.0.1:PORT."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        parts = urlsplit(base_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80

    def request(self, method: str, path: str, body: str | bytes | dict[str, Any] | None = None) -> Response:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        try:
            headers = {}
            if body is not None:
                headers["Content-Type"] = "application/json"
                if isinstance(body, dict):
                    body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode("utf-8", errors="replace")
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, text)
        finally:
            conn.close()

    def get(self, path: str) -> Response:
        return self.request("GET", path)

    def post(self, path: str, body: str | bytes | dict[str, Any]) -> Response:
        return self.request("POST", path, body)
