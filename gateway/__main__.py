"""`python -m gateway`: serve the gateway with uvicorn on GATEWAY_HOST:GATEWAY_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn

from gateway.app import create_app
from gateway.settings import load_settings


def main() -> None:
    settings = load_settings()
    # The access log is already one JSON line per request: print it bare, to stdout.
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("gateway.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ours is structured and carries the backend and replica
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()
