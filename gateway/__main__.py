"""`python -m gateway`: serve the gateway with uvicorn on GATEWAY_HOST:GATEWAY_PORT."""

from __future__ import annotations

import atexit
import contextlib
import gc
import logging
import sys
from collections.abc import Callable

import uvicorn

from gateway.app import GatewayApp, create_app
from gateway.settings import Settings, load_settings
from serving_core.cli import refuse_arguments, settings_usage
from serving_core.http_protocol import timed_protocol


def _refusal_counter(app: GatewayApp) -> Callable[[int], None]:
    requests = app.state.gateway.metrics.requests

    def count(status: int) -> None:
        requests.labels("unparsed", "-", str(status)).inc()

    return count


def server_config(app: GatewayApp, settings: Settings) -> uvicorn.Config:
    """uvicorn's configuration for the gateway (also what the tests serve it with, in-process)."""
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # ours is structured and carries the backend and replica
        # Nothing here reads the client's address or scheme, so X-Forwarded-* rewriting would be a
        # layer per request for nothing.
        proxy_headers=False,
        loop="uvloop",
        # httptools, with a time limit per request; what it refuses itself (malformed, a head over the limit)
        # never reaches the app's middleware, so it is counted here.
        http=timed_protocol(settings.request_read_timeout_s, on_refused=_refusal_counter(app)),
        timeout_graceful_shutdown=10,
    )


def main() -> None:
    refused = refuse_arguments("gateway", sys.argv[1:], lambda: settings_usage("gateway", Settings, "GATEWAY_"))
    if refused is not None:
        sys.exit(refused)
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(settings)
    if app.state.access_log is not None:
        # Also when the shutdown is cut short (a second Ctrl-C skips the app's own shutdown steps).
        atexit.register(app.state.access_log.close)
    # GC tuning for the hot path. With the default threshold (700 allocations) requests set off frequent
    # collections, and the older generations walk every object the imports made (FastAPI, pydantic, numpy,
    # protobuf: ~80,000 of them). When this was added (bodies then parsed into ~1,600 nested lists, and
    # TensorFlow's modules were loaded) it took a predict from 1.9 ms to 0.8 ms in-process on the project's
    # 2-core machine. Request objects are freed by reference counting anyway; the rarer collections only
    # delay reclaiming cycles.
    gc.freeze()  # everything imported and built so far is permanent: never scanned again
    gc.set_threshold(20_000, 50, 100)
    server = uvicorn.Server(server_config(app, settings))
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # as uvicorn.run: it never served (port taken, start-up failed)


if __name__ == "__main__":
    main()
