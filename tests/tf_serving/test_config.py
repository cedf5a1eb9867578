"""The TF Serving config files parse with TF Serving's protos and agree with each other and the trainer."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from serving_core.batching import load_batching_parameters
from serving_core.repository import VersionPolicy
from tf_serving import config as cfg

# Every flag `tensorflow_model_server` accepts (tensorflow_serving/model_servers/main.cc, TF Serving 2.x).
KNOWN_FLAGS = {
    "port", "grpc_socket_path", "rest_api_port", "rest_api_num_threads", "rest_api_timeout_in_ms",
    "rest_api_enable_cors_support", "enable_batching", "allow_version_labels_for_unavailable_models",
    "batching_parameters_file", "enable_per_model_batching_parameters", "model_config_file",
    "model_config_file_poll_wait_seconds", "model_name", "model_base_path", "num_load_threads",
    "num_unload_threads", "max_num_load_retries", "load_retry_interval_micros", "file_system_poll_wait_seconds",
    "flush_filesystem_caches", "tensorflow_session_parallelism", "tensorflow_session_config_file",
    "tensorflow_intra_op_parallelism", "tensorflow_inter_op_parallelism", "use_alts_credentials", "ssl_config_file",
    "platform_config_file", "per_process_gpu_memory_fraction", "saved_model_tags", "grpc_channel_arguments",
    "grpc_max_threads", "enable_model_warmup", "num_request_iterations_for_warmup", "version",
    "monitoring_config_file", "remove_unused_fields_from_bundle_metagraph", "prefer_tflite_model",
    "num_tflite_pools", "num_tflite_interpreters_per_pool", "enable_signature_method_name_check",
    "xla_cpu_compilation_enabled", "enable_profiler", "thread_pool_factory_config_file",
}  # fmt: skip


def test_models_config_is_the_design_contract() -> None:
    [entry] = cfg.load_model_config()
    assert entry.name == "cnn"
    assert entry.base_path == "/models/tensorflow/cnn"
    assert entry.platform == "tensorflow"
    assert entry.policy == VersionPolicy("latest", num_versions=1)
    assert entry.local_base_path(Path("/tmp/repo")) == Path("/tmp/repo/tensorflow/cnn")
    assert entry.local_base_path(None) == Path("/models/tensorflow/cnn")


def test_batching_config_is_valid_and_warmed_up_by_the_trainer() -> None:
    params = load_batching_parameters(cfg.BATCHING_CONFIG)
    assert params.max_batch_size == 32
    assert 0 < params.batch_timeout_micros <= 5000
    assert params.allowed_batch_sizes[-1] == params.max_batch_size
    # Every padded shape that can run must be in the trainer's warm-up file.
    from trainer.export_tf import write_warmup

    warmed = inspect.signature(write_warmup).parameters["batch_sizes"].default
    assert set(params.allowed_batch_sizes) <= set(warmed), (params.allowed_batch_sizes, warmed)


def test_monitoring_config() -> None:
    mon = cfg.load_monitoring_config()
    assert mon.prometheus_enabled is True
    assert mon.prometheus_path == "/monitoring/prometheus/metrics"


def test_server_flags_are_real_tf_serving_flags() -> None:
    flags = cfg.flags_as_dict(cfg.read_server_flags())
    assert set(flags) <= KNOWN_FLAGS, set(flags) - KNOWN_FLAGS
    assert flags["port"] == "8500" and flags["rest_api_port"] == "8501"
    assert flags["enable_batching"] == "true" and flags["enable_model_warmup"] == "true"
    # The files named in the flags are this folder's files, mounted at /config.
    for flag, local in [
        ("model_config_file", cfg.MODELS_CONFIG),
        ("batching_parameters_file", cfg.BATCHING_CONFIG),
        ("monitoring_config_file", cfg.MONITORING_CONFIG),
    ]:
        assert flags[flag] == f"/config/{local.name}"
        assert local.is_file()
    assert 0 < float(flags["per_process_gpu_memory_fraction"]) <= 1
    assert int(flags["file_system_poll_wait_seconds"]) >= 1


def test_readme_documents_every_flag() -> None:
    readme = (cfg.CONFIG_DIR / "README.md").read_text()
    for flag in cfg.read_server_flags():
        assert flag.split("=")[0] in readme, flag


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model_config_list { config { name: 'cnn' base_path: '/m' model_platform: 'pytorch' } }", "model_platform"),
        ("model_config_list { }", "no models"),
        ("model_config_list { config { name: 'cnn' model_platform: 'tensorflow' } }", "no base_path"),
        ("model_config_list { config { nme: 'cnn' } }", "not a valid ModelServerConfig"),
        (
            "model_config_list { config { name: 'a' base_path: '/m' model_platform: 'tensorflow' } "
            "config { name: 'a' base_path: '/n' model_platform: 'tensorflow' } }",
            "twice",
        ),
    ],
)
def test_bad_model_configs_are_rejected(text: str, message: str) -> None:
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.parse_model_config(text, "x.config")


def test_specific_version_policy_is_read() -> None:
    [entry] = cfg.parse_model_config(
        "model_config_list { config { name: 'cnn' base_path: '/models/x' model_platform: 'tensorflow' "
        "model_version_policy { specific { versions: 2 versions: 1 } } } }"
    )
    assert entry.policy == VersionPolicy("specific", versions=(1, 2))


def test_bad_monitoring_config_is_rejected() -> None:
    with pytest.raises(cfg.ConfigError, match="not a valid MonitoringConfig"):
        cfg.parse_monitoring_config("prometheus_config { enabled: true }")
    with pytest.raises(cfg.ConfigError, match="must start with"):
        cfg.parse_monitoring_config('prometheus_config { enable: true path: "metrics" }')
    assert cfg.parse_monitoring_config("").prometheus_enabled is False


def test_flags_must_be_name_value() -> None:
    with pytest.raises(cfg.ConfigError):
        cfg.flags_as_dict(["--port"])
    with pytest.raises(cfg.ConfigError, match="twice"):
        cfg.flags_as_dict(["--port=1", "--port=2"])
