"""Settings of the compat server: env vars with the `TF_SERVING_` prefix, plus `MODEL_REPOSITORY`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from serving_core.batching import BatchingParameters, load_batching_parameters
from tf_serving.config import (
    BATCHING_CONFIG,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    ModelEntry,
    MonitoringConfig,
    load_model_config,
    load_monitoring_config,
)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TF_SERVING_", extra="ignore")

    host: str = "127.0.0.1"  # 0.0.0.0 in containers (set by env)
    rest_port: int = Field(default=8501, ge=1, le=65535)
    grpc_port: int = Field(default=8500, ge=0, le=65535)  # 0 = no gRPC server
    # The files tensorflow_model_server reads (defaults: this package's copies).
    model_config_file: Path = MODELS_CONFIG
    batching_parameters_file: Path = BATCHING_CONFIG
    monitoring_config_file: Path = MONITORING_CONFIG
    # The container path /models in models.config is replaced by this folder.
    model_repository: Path = Field(
        default=Path("./model_repository"),
        validation_alias=AliasChoices("MODEL_REPOSITORY", "TF_SERVING_MODEL_REPOSITORY"),
    )
    enable_batching: bool = True
    enable_model_warmup: bool = True
    verify_manifest: bool = True  # check manifest.json sha256 table before a version goes live
    # Like --file_system_poll_wait_seconds: how often new versions are looked for (0 = load once).
    file_system_poll_wait_seconds: float = Field(default=2.0, ge=0)
    rest_api_timeout_in_ms: int = Field(default=30000, ge=1)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)  # larger REST bodies get 413
    grpc_max_message_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # TF thread pools (0 = TF picks; like --tensorflow_intra_op_parallelism / inter_op).
    intra_op_threads: int = Field(default=0, ge=0)
    inter_op_threads: int = Field(default=0, ge=0)
    # With batching off: requests run concurrently on this many threads, at most max_in_flight admitted.
    num_threads: int = Field(default=4, ge=1)
    max_in_flight: int = Field(default=256, ge=1)
    log_level: str = "INFO"

    @model_validator(mode="after")
    def _distinct_ports(self) -> Settings:
        if self.grpc_port and self.grpc_port == self.rest_port:
            raise ValueError(f"TF_SERVING_REST_PORT and TF_SERVING_GRPC_PORT are both {self.rest_port}")
        return self


@dataclass(frozen=True)
class ServerConfig:
    """The parsed config files: what the server will serve and how."""

    models: list[ModelEntry]
    batching: BatchingParameters | None  # None: batching disabled
    monitoring: MonitoringConfig


def load_server_config(settings: Settings) -> ServerConfig:
    """Parse and validate the three files; raises ConfigError / BatchingConfigError with one-line messages."""
    models = load_model_config(settings.model_config_file)
    batching = load_batching_parameters(settings.batching_parameters_file) if settings.enable_batching else None
    monitoring = load_monitoring_config(settings.monitoring_config_file)
    return ServerConfig(models, batching, monitoring)
