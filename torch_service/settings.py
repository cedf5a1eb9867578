"""torch_service settings: one `Settings` read from `TORCH_SERVICE_*` (and `MODEL_REPOSITORY`), checked at start-up."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving_core.repository import VersionPolicy
from serving_core.settings_errors import setting_problems

_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def default_batching_file() -> Path:
    """The project's single batching file, shipped inside the `tf_serving` package (drives both backends)."""
    import tf_serving

    return Path(tf_serving.__file__).parent / "batching.config"


class Settings(BaseSettings):
    """Every knob of the service; names are the env vars without the `TORCH_SERVICE_` prefix."""

    model_config = SettingsConfigDict(
        env_prefix="TORCH_SERVICE_", extra="ignore", populate_by_name=True, protected_namespaces=()
    )

    host: str = "127.0.0.1"  # loopback for the local stack; compose sets 0.0.0.0
    port: int = Field(default=8080, ge=1, le=65535)
    # Shared with the trainer and the compat server, hence no prefix.
    model_repository: Path = Field(
        default=Path("./model_repository"),
        validation_alias=AliasChoices("MODEL_REPOSITORY", "model_repository"),
    )
    model_name: str = Field(default="cnn", pattern=r"^[A-Za-z0-9_.-]+$")
    # TF Serving's ServableVersionPolicy in env form: latest, latest:N, all, specific:1,2
    version_policy: str = "latest"
    # How often the version folder is polled (TF Serving's file_system_poll_wait_seconds); 0 = load once.
    poll_interval_s: float = Field(default=2.0, ge=0)
    enable_batching: bool = True
    # None -> tf_serving/batching.config, the one file both backends read.
    batching_parameters_file: Path | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch intra-op threads per call; 0 = the cores divided by the number of batches that run at once.
    # 1 by default: measured on a 16-core host, sharing the cores out (4 threads per batch) cost 20 ms of
    # CPU per request at concurrency 1 (OpenMP threads spinning between calls) against 1.1 ms, and was
    # slower at concurrency 1 and no faster at 64 than one thread per call; the parallelism comes from
    # the batches that run at once.
    num_threads: int = Field(default=1, ge=0)
    num_interop_threads: int = Field(default=0, ge=0)  # 0 = torch's default
    # Batching off: requests run concurrently on this many threads (0 = one per core) ...
    inference_threads: int = Field(default=0, ge=0)
    # ... and at most this many wait or run at once; more are refused with 503 (never an unbounded queue).
    max_in_flight: int = Field(default=256, ge=1)
    # Largest batch one request may carry (also capped by the batching file's max_batch_size).
    max_request_instances: int = Field(default=1024, ge=1)
    # 32 MiB holds ~1000 images as JSON text; larger bodies are refused with 413 before they are read.
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    request_timeout_s: float = Field(default=30.0, gt=0)  # waiting for inference beyond this answers 504
    # A request's head must arrive within this and its body may not pause longer (slowloris guard).
    request_read_timeout_s: float = Field(default=60.0, gt=0)
    graceful_shutdown_s: float = Field(default=30.0, gt=0)  # SIGTERM: time in-flight requests get to finish
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    access_log: bool = False  # off by default: one log line per request costs real time on the hot path

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, v: object) -> object:
        return v.lower() if isinstance(v, str) else v

    @field_validator("version_policy")
    @classmethod
    def _policy(cls, v: str) -> str:
        VersionPolicy.parse(v)  # raises ValueError with the accepted forms
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        v = v.strip().lower()
        if not _DEVICE.match(v):
            raise ValueError(f"invalid device {v!r}: use auto, cpu, cuda or cuda:N")
        return v

    @property
    def policy(self) -> VersionPolicy:
        return VersionPolicy.parse(self.version_policy)

    @property
    def model_base_path(self) -> Path:
        return self.model_repository / "torchscript" / self.model_name

    @property
    def batching_file(self) -> Path:
        return self.batching_parameters_file or default_batching_file()

    @property
    def resolved_inference_threads(self) -> int:
        return self.inference_threads or len(os.sched_getaffinity(0))


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad variable, e.g. `TORCH_SERVICE_PORT: Input should be ...`."""
    problems = setting_problems(exc, "TORCH_SERVICE_", aliases={"model_repository": "MODEL_REPOSITORY"})
    return "invalid settings: " + "; ".join(problems)
