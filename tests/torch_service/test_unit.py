"""In-process unit tests: settings, the TorchScript servable (tiny modules in tmp_path), metrics labels."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from serving_core.batching import BatchingParameters, load_batching_parameters
from serving_core.errors import DeadlineExceeded, FailedPrecondition
from serving_core.repository import ManifestError
from torch_service.middleware import endpoint_label
from torch_service.model import SchedulerConfig, load_servable, resolve_device, warmup_sizes
from torch_service.settings import Settings, default_batching_file, describe_validation_error


class Contract(torch.nn.Module):
    """Honours the model contract: NHWC float32 in, {probabilities [N,10], classes [N]} out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(784, 10)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        probs = torch.softmax(self.fc(images.reshape(images.shape[0], -1)), dim=1)
        return {"probabilities": probs, "classes": torch.argmax(probs, dim=1)}


class WrongOutputs(torch.nn.Module):
    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        n = images.shape[0]
        return {"probabilities": torch.zeros(n, 3), "classes": torch.zeros(n, dtype=torch.int64)}


def save_version(path: Path, module: torch.nn.Module | None, raw: bytes | None = None) -> Path:
    path.mkdir(parents=True)
    if module is not None:
        torch.jit.save(torch.jit.script(module), str(path / "model.pt"))
    else:
        (path / "model.pt").write_bytes(raw or b"")
    digest = hashlib.sha256((path / "model.pt").read_bytes()).hexdigest()
    (path / "manifest.json").write_text(json.dumps({"files": {"model.pt": digest}}))
    return path


def sched(batching: BatchingParameters | None) -> SchedulerConfig:
    return SchedulerConfig(batching=batching, inference_threads=1, max_in_flight=4, max_request_instances=16)


# ------------------------------------------------------------------------------------ settings
def test_settings_defaults_follow_design(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MODEL_REPOSITORY", "TORCH_SERVICE_HOST", "TORCH_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = Settings()
    assert (s.host, s.port, s.model_name) == ("127.0.0.1", 8080, "cnn")
    assert s.model_repository == Path("./model_repository")
    assert s.model_base_path == Path("./model_repository/torchscript/cnn")
    assert s.batching_file == default_batching_file() and s.batching_file.name == "batching.config"
    assert s.enable_batching and s.device == "auto" and str(s.policy) == "latest:1"


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_REPOSITORY", "/models")
    monkeypatch.setenv("TORCH_SERVICE_PORT", "9000")
    monkeypatch.setenv("TORCH_SERVICE_ENABLE_BATCHING", "false")
    monkeypatch.setenv("TORCH_SERVICE_VERSION_POLICY", "specific:1,2")
    monkeypatch.setenv("TORCH_SERVICE_DEVICE", "CUDA:1")
    monkeypatch.setenv("TORCH_SERVICE_LOG_LEVEL", "WARNING")
    s = Settings()
    assert s.model_repository == Path("/models") and s.port == 9000 and not s.enable_batching
    assert s.policy.versions == (1, 2) and s.device == "cuda:1" and s.log_level == "warning"


def test_one_intra_op_thread_per_call_unless_told(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from torch_service import runtime

    monkeypatch.setattr(runtime, "available_cpus", lambda: 16)  # the GPU machine's cores, where it mattered
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path))
    for var in [v for v in os.environ if v.startswith("TORCH_SERVICE_")]:
        monkeypatch.delenv(var)
    assert runtime.ModelRuntime.build(Settings()).intra_op_threads() == 1
    monkeypatch.setenv("TORCH_SERVICE_NUM_THREADS", "0")  # share the cores out among the batch threads
    batch_threads = load_batching_parameters(default_batching_file()).num_batch_threads
    assert runtime.ModelRuntime.build(Settings()).intra_op_threads() == 16 // batch_threads
    monkeypatch.setenv("TORCH_SERVICE_NUM_THREADS", "3")
    assert runtime.ModelRuntime.build(Settings()).intra_op_threads() == 3


def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_SERVICE_PORT", "70000")
    monkeypatch.setenv("TORCH_SERVICE_VERSION_POLICY", "latest:0")
    with pytest.raises(ValidationError) as info:
        Settings()
    line = describe_validation_error(info.value)
    assert "\n" not in line
    assert "TORCH_SERVICE_PORT" in line and "TORCH_SERVICE_VERSION_POLICY" in line and "latest:N" in line


# ------------------------------------------------------------------------------------ servable
def test_warmup_sizes() -> None:
    assert warmup_sizes(BatchingParameters(max_batch_size=32, allowed_batch_sizes=(1, 8, 32)), 1024) == [1, 8, 32]
    assert warmup_sizes(BatchingParameters(max_batch_size=20), 1024) == [1, 2, 4, 8, 16, 20]
    assert warmup_sizes(None, 8) == [1, 2, 4, 8]


def test_resolve_device() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


async def test_load_warm_up_and_predict_through_the_batcher(tmp_path: Path) -> None:
    module = Contract()
    path = save_version(tmp_path / "1", module)
    params = BatchingParameters(max_batch_size=8, allowed_batch_sizes=(2, 8), num_batch_threads=1)
    servable = load_servable(path, 1, device=torch.device("cpu"), sched=sched(params))
    try:
        assert servable.warmed_sizes == [2, 8]
        x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
        out = await servable.predict(x, timeout_s=10)
        with torch.inference_mode():
            ref = module(torch.from_numpy(x))
        np.testing.assert_allclose(out["probabilities"], ref["probabilities"].numpy(), atol=1e-6)
        assert out["classes"].dtype == np.int64 and out["classes"].shape == (3,)
    finally:
        servable.close()


async def test_inference_slower_than_the_request_timeout_is_deadline_exceeded(tmp_path: Path) -> None:
    # A lone request waits 5 s for its batch to fill; the caller gives up after 0.2 s.
    params = BatchingParameters(max_batch_size=8, batch_timeout_micros=5_000_000, num_batch_threads=1)
    servable = load_servable(
        save_version(tmp_path / "1", Contract()), 1, device=torch.device("cpu"), sched=sched(params)
    )
    try:
        with pytest.raises(DeadlineExceeded, match=r"within 0\.2 s"):
            await servable.predict(np.zeros((1, 28, 28, 1), np.float32), timeout_s=0.2)
    finally:
        servable.close()


async def test_load_without_batching_uses_direct_scheduler(tmp_path: Path) -> None:
    servable = load_servable(save_version(tmp_path / "1", Contract()), 1, device=torch.device("cpu"), sched=sched(None))
    try:
        assert servable.warmed_sizes == [1, 2, 4, 8, 16]
        out = await servable.predict(np.zeros((5, 28, 28, 1), np.float32), timeout_s=10)
        assert out["probabilities"].shape == (5, 10)
    finally:
        servable.close()


def test_contract_violation_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match=r"'probabilities' is float32\[1, 3\]"):
        load_servable(save_version(tmp_path / "1", WrongOutputs()), 1, device=torch.device("cpu"), sched=sched(None))


def test_unloadable_or_tampered_file_fails_the_load(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="not a loadable TorchScript module"):
        load_servable(
            save_version(tmp_path / "1", None, b"not a zip"), 1, device=torch.device("cpu"), sched=sched(None)
        )
    path = save_version(tmp_path / "2", Contract())
    with open(path / "model.pt", "ab") as f:
        f.write(b"x")
    with pytest.raises(ManifestError, match="checksum mismatch"):
        load_servable(path, 2, device=torch.device("cpu"), sched=sched(None))


# ----------------------------------------------------------------------------------- metrics
@pytest.mark.parametrize(
    ("path", "label"),
    [
        ("/v1/models/cnn:predict", "predict"),
        ("/v1/models/cnn/versions/2:predict", "predict"),
        ("/v1/models/cnn", "status"),
        ("/v1/models/cnn/metadata", "metadata"),
        ("/v1/models/cnn:classify", "v1_other"),
        ("/v2/models/cnn/infer", "infer"),
        ("/v2/health/ready", "health"),
        ("/v2/models/cnn/ready", "health"),
        ("/v2/models/cnn", "v2_metadata"),
        ("/metrics", "metrics"),
        ("/random/thing/123", "other"),
    ],
)
def test_endpoint_labels_are_bounded(path: str, label: str) -> None:
    assert endpoint_label(path) == label


# ------------------------------------------------------------------------------------- docs
def test_every_setting_is_in_the_readme_and_in_help() -> None:
    from torch_service.__main__ import usage

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("<!-- section:torch_service -->")[1].split("<!-- /section:torch_service -->")[0]
    help_text = usage()
    for name in Settings.model_fields:
        var = "MODEL_REPOSITORY" if name == "model_repository" else f"TORCH_SERVICE_{name.upper()}"
        assert f"`{var}`" in section, f"{var} missing from the README's torch_service settings table"
        assert var in help_text
