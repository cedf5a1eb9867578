"""Settings of the local stack: where the model repository and reports live, and which loopback ports.

The port variables are the services' own (DESIGN.md), so `TORCH_SERVICE_PORT=9080 make up` means
what it says; `--ports` on the command line overrides them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The names used in --ports, logs and messages, mapped to the settings field that holds the port.
PORT_FIELDS: dict[str, str] = {
    "gateway": "gateway_port",
    "torch_service": "torch_port",
    "tf_rest": "tf_rest_port",
    "tf_grpc": "tf_grpc_port",
}


class StackSettings(BaseSettings):
    """Everything `python -m devstack` needs; read from the environment, overridden by the CLI."""

    model_config = SettingsConfigDict(env_prefix="DEVSTACK_", extra="ignore", populate_by_name=True)

    # Loopback by default: the local stack is for one developer's machine (DEVSTACK_HOST to change it).
    host: str = "127.0.0.1"
    model_repository: Path = Field(
        default=Path("model_repository"),
        validation_alias=AliasChoices("MODEL_REPOSITORY", "DEVSTACK_MODEL_REPOSITORY", "model_repository"),
    )
    gateway_port: int = Field(8000, validation_alias=AliasChoices("GATEWAY_PORT", "gateway_port"))
    torch_port: int = Field(8080, validation_alias=AliasChoices("TORCH_SERVICE_PORT", "torch_port"))
    tf_rest_port: int = Field(8501, validation_alias=AliasChoices("TF_SERVING_REST_PORT", "tf_rest_port"))
    tf_grpc_port: int = Field(8500, validation_alias=AliasChoices("TF_SERVING_GRPC_PORT", "tf_grpc_port"))
    # The load test writes reports/<run>/; service logs are moved into that run folder at the end.
    report_dir: Path = Path("reports")
    # Where service logs go while the stack runs (a fresh timestamped folder below it per start).
    log_dir: Path = Path("reports/logs")
    # TensorFlow's import plus a SavedModel load and warm-up takes ~20-40 s on 2 busy cores;
    # 240 s leaves room for a cold disk cache without hanging forever on a broken service.
    ready_timeout_s: float = Field(240.0, gt=0)
    # SIGTERM first so servers drain; SIGKILL after this many seconds.
    stop_grace_s: float = Field(10.0, ge=0)

    @field_validator("gateway_port", "torch_port", "tf_rest_port", "tf_grpc_port")
    @classmethod
    def _port_range(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError(f"port {v} is outside 1-65535")
        return v

    @model_validator(mode="after")
    def _distinct_ports(self) -> StackSettings:
        seen: dict[int, str] = {}
        for name, attr in PORT_FIELDS.items():
            port = getattr(self, attr)
            if port in seen:
                raise ValueError(f"{name} and {seen[port]} are both set to port {port}; each needs its own")
            seen[port] = name
        return self

    def ports(self) -> dict[str, int]:
        return {name: getattr(self, attr) for name, attr in PORT_FIELDS.items()}

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"
