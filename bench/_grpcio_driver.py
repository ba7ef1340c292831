"""Load from the client model servers run: grpcio (grpc.aio), in processes of their own.

h2load is the leanest possible HTTP/2 client; grpcio sends pings, window updates and
metadata of its own, so the server's cost per call can differ. Each process holds one
channel and keeps `in_flight` calls outstanding; latencies are measured per call.

The processes connect and make a few calls first, then start together (a shared event),
so that every process's warm-up and measured window are the same moments; `calls` counts
every call answered from that start to the end, so the server's CPU over the run divided
by it is the CPU per call without assuming a rate for the warm-up.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from multiprocessing.connection import Connection
from typing import Any

WARM_UP = 1.0
_FIRST_CALLS = 20  # per process, before the start: the channel connected and the code paths warm


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def _drive(
    target: str, method: str, body: bytes, in_flight: int, seconds: float, ready: Any, go: Any
) -> tuple[list[float], int, int]:
    import grpc

    latencies: list[float] = []
    failed = calls = 0
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(method, None, None)  # bytes in, bytes out: no serializer work on the client
        for _ in range(_FIRST_CALLS):
            await call(body, timeout=10)
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        started = time.perf_counter()
        measure_from, until = started + WARM_UP, started + WARM_UP + seconds

        async def worker() -> None:
            nonlocal failed, calls
            while (now := time.perf_counter()) < until:
                try:
                    await call(body, timeout=10)
                except grpc.RpcError:
                    failed += 1
                    continue
                calls += 1
                if now >= measure_from:
                    latencies.append((time.perf_counter() - now) * 1000)

        await asyncio.gather(*(worker() for _ in range(in_flight)))
    return latencies, failed, calls + _FIRST_CALLS


def _process(
    target: str, method: str, body: bytes, in_flight: int, seconds: float, ready: Any, go: Any, out: Connection
) -> None:
    out.send(asyncio.run(_drive(target, method, body, in_flight, seconds, ready, go)))
    out.close()


def drive(target: str, method: str, body: bytes, concurrency: int, seconds: float) -> dict[str, float]:
    """Calls/s and latency percentiles of `concurrency` outstanding calls from grpcio clients, and
    `calls`, every call the server answered for them (warm-up included).

    Concurrency 1 is one process with one call in flight; more is split over two processes
    (a Python client is slower than the server: one process would measure the client).
    """
    processes = 1 if concurrency == 1 else 2
    context = multiprocessing.get_context("spawn")  # no fork beside gRPC's threads
    go = context.Event()
    pipes, workers, readies = [], [], []
    for _ in range(processes):
        receive, send = context.Pipe(duplex=False)
        ready = context.Event()
        args = (target, method, body, max(1, concurrency // processes), seconds, ready, go, send)
        worker = context.Process(target=_process, args=args)
        worker.start()
        pipes.append(receive)
        workers.append(worker)
        readies.append(ready)
    deadline = time.monotonic() + 60
    while not all(ready.is_set() for ready in readies):
        if time.monotonic() > deadline or not all(worker.is_alive() for worker in workers):
            for worker in workers:  # the others wait for `go`: stop them rather than start a partial load
                worker.terminate()
                worker.join()
            raise RuntimeError("a grpcio driver process failed its first calls or did not make them within 60 s")
        time.sleep(0.01)
    go.set()
    results: list[Any] = [pipe.recv() for pipe in pipes]
    for worker in workers:
        worker.join()
    latencies = [ms for samples, _, _ in results for ms in samples]
    return {
        "rps": len(latencies) / seconds,
        "p50": _percentile(latencies, 0.50),
        "p99": _percentile(latencies, 0.99),
        "succeeded": len(latencies),
        "failed": sum(failed for _, failed, _ in results),
        "calls": sum(calls for _, _, calls in results),
    }
