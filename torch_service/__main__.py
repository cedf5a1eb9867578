"""`python -m torch_service`: validate settings, build the app, and serve it with uvicorn."""

from __future__ import annotations

import logging
import math
import sys

from pydantic import ValidationError


def usage() -> str:
    from torch_service.settings import Settings

    lines = ["usage: python -m torch_service   (configured by environment variables only)", ""]
    for name, field in Settings.model_fields.items():
        var = "MODEL_REPOSITORY" if name == "model_repository" else f"TORCH_SERVICE_{name.upper()}"
        default = "tf_serving/batching.config" if name == "batching_parameters_file" else field.default
        lines.append(f"  {var:<40} default: {default}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from serving_core.cli import refuse_arguments
    from torch_service.settings import Settings, describe_validation_error

    refused = refuse_arguments("torch_service", sys.argv[1:] if argv is None else argv, usage)
    if refused is not None:
        return refused
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"torch_service: {describe_validation_error(exc)}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    import uvicorn

    from serving_core.batching import BatchingConfigError
    from serving_core.http_protocol import timed_protocol
    from torch_service.app import create_app
    from torch_service.model import DeviceError

    try:
        app = create_app(settings)
    except (BatchingConfigError, DeviceError) as exc:
        hint = " (or set TORCH_SERVICE_ENABLE_BATCHING=false)" if isinstance(exc, BatchingConfigError) else ""
        print(f"torch_service: {exc}{hint}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="auto",  # uvloop when installed
        http=timed_protocol(settings.request_read_timeout_s),  # httptools, with a time limit per request
        lifespan="on",
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.ceil(settings.graceful_shutdown_s),
        log_config=None,  # keep the logging set up above
    )
    server = uvicorn.Server(config)
    server.run()
    # uvicorn returns normally when start-up (model loading) failed; say so with a non-zero code.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
