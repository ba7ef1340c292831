"""`python -m server`: run the feature store gRPC server until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from server._app import start
from server._settings import Settings


async def _run(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = await start(settings)
    await stop.wait()
    logging.getLogger("server").info("draining (grace %.1fs)", settings.shutdown_grace)
    await app.stop(settings.shutdown_grace)


def main() -> None:
    settings = Settings.load(sys.argv[1:], os.environ)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_run(settings))


if __name__ == "__main__":
    main()
