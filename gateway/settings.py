"""Gateway settings: one `Settings` read from `GATEWAY_*` environment variables, validated at start-up."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Backend = Literal["torch", "tf"]
BACKENDS: tuple[Backend, ...] = ("torch", "tf")

# Comma-separated lists in the environment ("a,b"), not JSON: that is what compose files and shells write.
CsvList = Annotated[list[str], NoDecode]


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every knob of the gateway; the README's settings table lists the same names and defaults."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    # Which backend serves a predict call that names none (query `?backend=` or header `X-Backend`).
    default_backend: Backend = "torch"
    model_name: str = "cnn"

    # Replicas (DESIGN.md): torch_service over REST; TF Serving over gRPC (default) or REST.
    torch_urls: CsvList = ["http://127.0.0.1:8080"]
    tf_rest_urls: CsvList = ["http://127.0.0.1:8501"]
    tf_grpc_targets: CsvList = ["127.0.0.1:8500"]
    tf_protocol: Literal["grpc", "rest"] = "grpc"
    # How predict calls travel to torch_service: "binary", its Open Inference Protocol `infer` with the
    # binary tensor data extension (the validated float32 tensor itself, parsed once, here), or "json",
    # its TF-Serving REST predict with the client's body forwarded as sent (gateway/upstreams/rest.py).
    torch_wire: Literal["binary", "json"] = "binary"
    # Which gRPC client speaks to TF Serving: "h2", the gateway's lean HTTP/2 unary client
    # (upstreams/h2grpc.py, less than half of grpcio's CPU per call), or "grpcio" (grpc.aio channels).
    tf_grpc_client: Literal["h2", "grpcio"] = "h2"

    # least_outstanding sends each call to the replica with the fewest calls in flight, which adapts to a
    # slow replica; round_robin is the simple, predictable alternative.
    balancer: Literal["least_outstanding", "round_robin"] = "least_outstanding"
    # Per upstream call. Predict on the small CNN takes milliseconds; 10 s only trips on a stuck backend.
    timeout_s: float = Field(10.0, gt=0)
    # A request's head must arrive within this, and its body may not pause longer, or the connection is
    # closed (serving_core/http_protocol.py: idle and slowloris connections would otherwise be held forever).
    request_read_timeout_s: float = Field(60.0, gt=0)
    connect_timeout_s: float = Field(1.0, gt=0)
    # Keep-alive pool per replica; enough for the load tests' highest concurrency without reconnects.
    max_connections: int = Field(256, ge=1)
    # Connection errors on a predict (idempotent) are retried once on another replica.
    retry_on_connection_error: bool = True
    # Passive health: a replica whose call fails at the transport level is out of rotation this long
    # (doubling for each failure in a row, capped at 8x) and comes back once a probe answers.
    eject_cooldown_s: float = Field(5.0, gt=0)
    # Active health: how often each replica's status endpoint is probed, and how long a probe may take.
    health_interval_s: float = Field(2.0, gt=0)
    health_timeout_s: float = Field(1.0, gt=0)

    # Input limits, enforced before anything is forwarded (same answer whichever backend was chosen).
    # 32 = max_batch_size in tf_serving/batching.config, which both backends enforce: a larger batch is
    # refused here with their own message instead of being forwarded to fail there.
    max_batch_size: int = Field(32, ge=1)
    # 16 MiB: the largest image upload (below) with room for its multipart wrapping, and 25 times the
    # largest valid predict body (32 images, ~0.6 MB of JSON). Parsing JSON holds the GIL, so a body's
    # size is how long it can keep every other request waiting (a 48 MB body: about 1 s).
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Decoded-size guard against decompression bombs (a tiny PNG can declare a 100k x 100k canvas).
    max_image_pixels: int = Field(16_000_000, ge=784)
    # Images decoded at once for /v1/classify (each up to ~100 MB of working memory); more wait.
    max_concurrent_decodes: int = Field(4, ge=1)

    # Bearer keys; empty = no authentication. Health, metrics and docs stay open.
    api_keys: CsvList = []
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("torch_urls", "tf_rest_urls", "tf_grpc_targets", "api_keys", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("torch_urls", "tf_rest_urls")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} is not an http(s) URL")
        return [u.rstrip("/") for u in urls]

    @field_validator("tf_grpc_targets")
    @classmethod
    def _targets(cls, targets: list[str]) -> list[str]:
        for target in targets:
            if "://" in target or ":" not in target:
                raise ValueError(f"{target!r} is not a host:port gRPC target")
        return targets

    @model_validator(mode="after")
    def _replicas_present(self) -> Settings:
        if not self.torch_urls:
            raise ValueError("GATEWAY_TORCH_URLS names no replica")
        tf = self.tf_grpc_targets if self.tf_protocol == "grpc" else self.tf_rest_urls
        if not tf:
            raise ValueError(f"no TF Serving replica for GATEWAY_TF_PROTOCOL={self.tf_protocol}")
        if self.max_image_bytes > self.max_body_bytes:
            # An upload between the two would be refused by the body cap, with a message naming the wrong one.
            raise ValueError(
                f"GATEWAY_MAX_IMAGE_BYTES ({self.max_image_bytes}) is larger than GATEWAY_MAX_BODY_BYTES "
                f"({self.max_body_bytes}), which every upload must also fit"
            )
        return self


def load_settings(**overrides: object) -> Settings:
    """Read the environment (plus overrides); a bad value exits with a message naming the variable."""
    from pydantic import ValidationError

    from serving_core.settings_errors import setting_problems

    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        # Without the rejected values: the gateway's settings hold its API keys.
        lines = [f"  {p}" for p in setting_problems(exc, "GATEWAY_", show_input=False)]
        raise SystemExit("invalid gateway settings:\n" + "\n".join(lines)) from None
