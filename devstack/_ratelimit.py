"""Envoy's local rate limits, re-sized: every route's buckets set to one size (tests, a small deployment).

gateway/envoy.yaml sizes them per route (streams, registry, feature reads and writes); this
overlay replaces every route's sizes at once, for tests that must reach a limit quickly.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

Config = dict[str, Any]
_FILTER = "envoy.filters.http.local_ratelimit"


@dataclass(frozen=True)
class RateLimit:
    """`route` calls per `seconds` on each route in all, `client` per client identity (token, else address)."""

    route: int
    client: int
    seconds: int = 1


def _bucket(tokens: int, seconds: int) -> Config:
    return {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": f"{seconds}s"}


def with_rate_limit(config: Config, limit: RateLimit) -> Config:
    """`config` with every route's rate limit buckets resized to `limit`."""
    config = copy.deepcopy(config)
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                for host in network_filter["typed_config"].get("route_config", {}).get("virtual_hosts", []):
                    for route in host["routes"]:
                        per_route = route.get("typed_per_filter_config", {}).get(_FILTER)
                        if per_route is None:
                            continue
                        per_route = route["typed_per_filter_config"][_FILTER] = copy.deepcopy(per_route)
                        per_route["token_bucket"] = _bucket(limit.route, limit.seconds)
                        for descriptor in per_route.get("descriptors", []):
                            descriptor["token_bucket"] = _bucket(limit.client, limit.seconds)
    return config
