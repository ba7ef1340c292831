"""What the serving benchmarks share about the running server."""

from __future__ import annotations

import os
import time
from pathlib import Path

import grpc

from featurestore import FeatureStoreClient
from featurestore.serving.v1 import feature_store_service_pb2 as fs


def wait_servable(client: FeatureStoreClient, group: str, entity_type: str = "user") -> None:
    """Block until the server serves `group` (registry changes reach the serving snapshot within moments)."""
    request = fs.GetFeaturesRequest(entity_type=entity_type, entity_id="probe", feature_groups=[group])
    deadline = time.monotonic() + 10
    while True:
        try:
            client.store.GetFeatures(request)
            return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


_TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()


def cpu_seconds(pid: int, with_children: bool = False) -> float:
    """CPU time of `pid` (and, with_children, of its live and reaped children)."""
    try:
        fields = _stat(pid)
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if with_children:
        ticks += int(fields[13]) + int(fields[14])  # reaped children
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    child = _stat(int(entry.name))
                except OSError:
                    continue
                if int(child[1]) == pid:
                    ticks += int(child[11]) + int(child[12])
    return ticks / _TICK
