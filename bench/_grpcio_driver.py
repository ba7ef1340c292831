"""Load from the client model servers run: grpcio (grpc.aio), in processes of their own.

h2load is the leanest possible HTTP/2 client; grpcio sends pings, window updates and
metadata of its own, so the server's cost per call can differ. Each process holds one
channel and keeps `in_flight` calls outstanding; latencies are measured per call.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

WARM_UP = 1.0


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _drive(target: str, method: str, body: bytes, in_flight: int, seconds: float) -> tuple[list[float], int]:
    import grpc

    latencies: list[float] = []
    failed = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method, None, None)  # bytes in, bytes out: no serializer work on the client
        started = time.perf_counter()
        measure_from, until = started + WARM_UP, started + WARM_UP + seconds

        async def worker() -> None:
            nonlocal failed
            while (now := time.perf_counter()) < until:
                try:
                    await call(body, timeout=10)
                except grpc.RpcError:
                    failed += 1
                    continue
                if now >= measure_from:
                    latencies.append((time.perf_counter() - now) * 1000)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies, failed


def _process(target: str, method: str, body: bytes, in_flight: int, seconds: float, out: Connection) -> None:
    out.send(asyncio.run(_drive(target, method, body, in_flight, seconds)))
    out.close()


def drive(target: str, method: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """Calls/s and latency percentiles of `concurrency` outstanding calls from grpcio clients.

    Concurrency 1 is one process with one call in flight; more is split over two processes
    (a Python client is slower than the server: one process would measure the client).
    """
    processes = 1 if concurrency == 1 else 2
    context = multiprocessing.get_context("spawn")  # no fork beside gRPC's threads
    pipes, workers = [], []
    for _ in range(processes):
        receive, send = context.Pipe(duplex=False)
        args = (target, method, body, max(1, concurrency // processes), seconds, send)
        worker = context.Process(target=_process, args=args)
        worker.start()
        pipes.append(receive)
        workers.append(worker)
    results: list[Any] = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    latencies = [ms for samples, _ in results for ms in samples]
    return {
        "rps": len(latencies) / seconds,
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "succeeded": len(latencies),
        "failed": sum(failed for _, failed in results),
    }
