"""Valkey's own capacity for the commands the feature store sends, measured with a C client.

`redis-benchmark` (Debian's redis-tools; `valkey-benchmark` where installed) runs HSET and
HMGET of the benchmark's shapes against the benchmark's Valkey: hashes of the same field
names (`<feature>#<kind>` and `<feature>:j#<kind>`) and values of the same sizes as the
stored forms (ASCII: a command line carries no NUL bytes; Valkey's cost depends on sizes,
not contents), over `keys` random keys, 50 connections, 16 commands pipelined per
connection: the most Valkey serves on this machine, what served values/s are a fraction of.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from urllib.parse import urlsplit

CLIENTS, PIPELINE = 50, 16
KEY = "f:cbench:__rand_int__"


def tool() -> str | None:
    """The C benchmark client: valkey-benchmark, else redis-benchmark; None when neither is installed."""
    return shutil.which("valkey-benchmark") or shutil.which("redis-benchmark")


def require_tool() -> str:
    found = tool()
    if found is None:
        sys.exit("redis-benchmark is missing: apt-get install redis-tools (make bench installs it)")
    return found


def _run(url: str, args: list[str], requests: int, keys: int) -> float:
    """Requests/s of one redis-benchmark run of the command `args`."""
    parts = urlsplit(url)
    cmd = [require_tool(), "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 6379)]
    cmd += ["-c", str(CLIENTS), "-P", str(PIPELINE), "-n", str(requests), "-r", str(keys), "--csv", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=600).stdout
    rows = [row for row in csv.reader(out.splitlines()) if row and row[0] != "test"]
    return float(rows[-1][1])


def fields(names: list[str], kind: int = 1) -> list[tuple[str, str]]:
    """(protobuf field, JSON field) per feature, as the online store names them."""
    return [(f"{n}#{kind}", f"{n}:j#{kind}") for n in names]


def hset_capacity(url: str, names: list[str], sizes: tuple[int, int], keys: int, requests: int) -> float:
    """Values/s Valkey stores with HSET of every feature's two forms per key (one command per entity)."""
    args = ["HSET", KEY]
    for proto_field, json_field in fields(names):
        args += [proto_field, "p" * sizes[0], json_field, "j" * sizes[1]]
    return _run(url, args, requests, keys) * len(names)


def hmget_capacity(url: str, names: list[str], keys: int, requests: int, *, json: bool = False) -> float:
    """Values/s Valkey answers with HMGET of the features' protobuf (or JSON) fields per key, after
    hset_capacity filled the keys."""
    args = ["HMGET", KEY, *(j if json else p for p, j in fields(names))]
    return _run(url, args, requests, keys) * len(names)
