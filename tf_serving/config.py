"""Read and validate the three TF Serving config files of this folder (model, batching, monitoring).

The files are the ones `tensorflow_model_server` reads in compose; the compat server and the tests
parse them with TF Serving's own protos so a typo fails here, not only in the container.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from google.protobuf.message_factory import GetMessageClass

from serving_core.repository import VersionPolicy

CONFIG_DIR = Path(__file__).resolve().parent
MODELS_CONFIG = CONFIG_DIR / "models.config"
BATCHING_CONFIG = CONFIG_DIR / "batching.config"
MONITORING_CONFIG = CONFIG_DIR / "monitoring.config"
SERVER_FLAGS = CONFIG_DIR / "server_flags.txt"

# Where compose mounts the model repository volume; the compat server maps it to MODEL_REPOSITORY.
CONTAINER_MODELS_ROOT = "/models"


class ConfigError(ValueError):
    """A TF Serving config file is missing, unparsable or not what this project can serve."""


@dataclass(frozen=True)
class ModelEntry:
    """One `config` entry of a ModelServerConfig's model_config_list."""

    name: str
    base_path: str
    platform: str
    policy: VersionPolicy

    def local_base_path(self, model_repository: Path | None) -> Path:
        """The base path with the container's /models root replaced by `model_repository`."""
        p = self.base_path
        if model_repository is not None and (p == CONTAINER_MODELS_ROOT or p.startswith(CONTAINER_MODELS_ROOT + "/")):
            return Path(model_repository) / p[len(CONTAINER_MODELS_ROOT) :].lstrip("/")
        return Path(p)


def _read(path: Path, what: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


def parse_model_config(text: str, source: str = "<string>") -> list[ModelEntry]:
    """Parse a ModelServerConfig text proto; only a non-empty model_config_list of TF models is accepted."""
    from tensorflow_serving.config import model_server_config_pb2

    msg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a valid ModelServerConfig text proto: {exc}") from None
    if msg.WhichOneof("config") != "model_config_list":
        raise ConfigError(f"{source}: expected a model_config_list (custom_model_config is not supported)")
    entries: list[ModelEntry] = []
    seen: set[str] = set()
    for cfg in msg.model_config_list.config:
        if not cfg.name:
            raise ConfigError(f"{source}: a model config has no name")
        if cfg.name in seen:
            raise ConfigError(f"{source}: model name {cfg.name!r} appears twice")
        seen.add(cfg.name)
        if not cfg.base_path:
            raise ConfigError(f"{source}: model {cfg.name!r} has no base_path")
        # model_type (deprecated) is not supported; an empty platform would make TF Serving fail too.
        if cfg.model_platform != "tensorflow":
            raise ConfigError(
                f"{source}: model {cfg.name!r} has model_platform {cfg.model_platform!r}; expected 'tensorflow'"
            )
        if cfg.version_labels:
            raise ConfigError(f"{source}: model {cfg.name!r}: version_labels are not supported by this project")
        policy = VersionPolicy.from_proto(cfg.model_version_policy)
        entries.append(ModelEntry(cfg.name, cfg.base_path, cfg.model_platform, policy))
    if not entries:
        raise ConfigError(f"{source}: model_config_list has no models")
    return entries


def load_model_config(path: str | Path = MODELS_CONFIG) -> list[ModelEntry]:
    return parse_model_config(_read(Path(path), "model config file"), str(path))


# ------------------------------------------------------------------------------------ monitoring
def _monitoring_config_class() -> type:
    # tensorflow-serving-api ships no monitoring_config_pb2: declare the two messages of
    # tensorflow_serving/config/monitoring_config.proto here (same names, numbers, types).
    fdp = descriptor_pb2.FileDescriptorProto(
        name="cnn_serving/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    F = descriptor_pb2.FieldDescriptorProto
    prom = fdp.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=F.TYPE_BOOL, label=F.LABEL_OPTIONAL)
    prom.field.add(name="path", number=2, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    mon = fdp.message_type.add(name="MonitoringConfig")
    mon.field.add(
        name="prometheus_config",
        number=1,
        type=F.TYPE_MESSAGE,
        type_name=".tensorflow.serving.PrometheusConfig",
        label=F.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


@dataclass(frozen=True)
class MonitoringConfig:
    prometheus_enabled: bool = False
    # TF Serving's default when prometheus_config.path is empty (PrometheusExporter::kPrometheusPath).
    prometheus_path: str = "/monitoring/prometheus/metrics"


def parse_monitoring_config(text: str, source: str = "<string>") -> MonitoringConfig:
    msg = _monitoring_config_class()()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise ConfigError(f"{source}: not a valid MonitoringConfig text proto: {exc}") from None
    prom = msg.prometheus_config
    path = prom.path or MonitoringConfig.prometheus_path
    if not path.startswith("/"):
        raise ConfigError(f"{source}: prometheus_config.path must start with '/', got {path!r}")
    if path.startswith("/v1/"):
        raise ConfigError(f"{source}: prometheus_config.path {path!r} collides with the /v1/ REST API")
    return MonitoringConfig(prometheus_enabled=prom.enable, prometheus_path=path)


def load_monitoring_config(path: str | Path = MONITORING_CONFIG) -> MonitoringConfig:
    return parse_monitoring_config(_read(Path(path), "monitoring config file"), str(path))


# -------------------------------------------------------------------------------------- flags
def read_server_flags(path: str | Path = SERVER_FLAGS) -> list[str]:
    """The `--name=value` lines of server_flags.txt (comments and blank lines dropped)."""
    flags = []
    for raw in _read(Path(path), "server flags file").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            flags.append(line)
    return flags


def flags_as_dict(flags: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for flag in flags:
        if not flag.startswith("--") or "=" not in flag:
            raise ConfigError(f"server flag {flag!r} is not of the form --name=value")
        name, _, value = flag[2:].partition("=")
        if name in out:
            raise ConfigError(f"server flag --{name} is given twice")
        out[name] = value
    return out
