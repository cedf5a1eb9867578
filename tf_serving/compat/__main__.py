"""`python -m tf_serving.compat`: load the models, then serve REST (8501) and gRPC (8500) in one event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tf_serving.compat.settings import ServerConfig, Settings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere


def _configure_tensorflow(settings: Settings) -> None:
    import tensorflow as tf

    # Thread pools can only be sized before TF runs its first op.
    tf.config.threading.set_intra_op_parallelism_threads(settings.intra_op_threads)
    tf.config.threading.set_inter_op_parallelism_threads(settings.inter_op_threads)


async def _serve(settings: Settings, config: ServerConfig) -> None:
    import uvicorn

    from serving_core.http_protocol import timed_protocol
    from tf_serving.compat.app import create_app
    from tf_serving.compat.grpc_server import create_grpc_server
    from tf_serving.compat.model import ModelRegistry

    registry = ModelRegistry(settings, config)
    await asyncio.to_thread(registry.start)
    app = create_app(settings, registry)
    rest = uvicorn.Server(
        uvicorn.Config(
            app,
            host=settings.host,
            port=settings.rest_port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            http=timed_protocol(),  # httptools; a head within 60 s, no body pause over 60 s
        )
    )
    grpc_server = None
    if settings.grpc_port:
        grpc_server = create_grpc_server(
            registry,
            host=settings.host,
            port=settings.grpc_port,
            max_message_bytes=settings.grpc_max_message_bytes,
        )
        await grpc_server.start()
    logging.getLogger("tf_serving.compat").info(
        "serving REST on %s:%s, gRPC on %s (compat server, not TensorFlow Serving)",
        settings.host,
        settings.rest_port,
        settings.grpc_port or "off",
    )
    try:
        await rest.serve()  # returns after SIGINT/SIGTERM (uvicorn installs the handlers)
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=5)
        await asyncio.to_thread(registry.stop)


def _run(coro: Coroutine[Any, Any, None]) -> None:
    # uvloop (shipped with uvicorn[standard]) is a cheaper event loop than asyncio's default;
    # grpc.aio runs on it too. Plain asyncio where it is missing.
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
        return
    uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    from pydantic import ValidationError

    from serving_core.batching import BatchingConfigError
    from serving_core.cli import refuse_arguments, settings_usage
    from serving_core.settings_errors import setting_problems
    from tf_serving.compat.settings import Settings, load_server_config
    from tf_serving.config import ConfigError

    refused = refuse_arguments(
        "tf_serving.compat",
        sys.argv[1:] if argv is None else argv,
        lambda: settings_usage("tf_serving.compat", Settings, "TF_SERVING_"),
    )
    if refused is not None:
        return refused
    try:
        settings = Settings()
        config = load_server_config(settings)
    except ValidationError as exc:
        problems = "; ".join(setting_problems(exc, "TF_SERVING_"))
        print(f"tf_serving.compat: invalid settings: {problems}", file=sys.stderr)
        return 2
    except (ConfigError, BatchingConfigError) as exc:
        print(f"tf_serving.compat: invalid config: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    _configure_tensorflow(settings)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # replaced by uvicorn's handler once serving
    try:
        _run(_serve(settings, config))
    except OSError as exc:
        print(f"tf_serving.compat: cannot serve: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
