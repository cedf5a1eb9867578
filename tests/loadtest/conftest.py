"""Fixtures for the load-test engine tests: real tiny HTTP servers with known latency, synthetic images."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from devstack.process import ManagedProcess, free_port
from gateway.loadtest.data import ImageSet, build_bodies


def synthetic_images(n: int = 64) -> ImageSet:
    """Images whose first pixel encodes their label, which is what fake_server answers with."""
    labels = (np.arange(n) % 10).astype(np.int64)
    images = np.random.default_rng(0).random((n, 28, 28, 1), dtype=np.float32) * 0.05
    images[:, 0, 0, 0] = labels / 10.0
    return ImageSet(images, labels, labels.copy(), "synthetic", 1)


@pytest.fixture(scope="session")
def images() -> ImageSet:
    return synthetic_images()


@pytest.fixture(scope="session")
def bodies(images: ImageSet):
    return build_bodies(images, 1, 0, 32)


@pytest.fixture
def synthetic_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A model repository holding only a golden.npz of synthetic images (MODEL_REPOSITORY points at it)."""
    img = synthetic_images()
    d = tmp_path / "repo" / "torchscript" / "cnn" / "1"
    d.mkdir(parents=True)
    np.savez(
        d / "golden.npz",
        images=img.images,
        labels=img.labels,
        classes=img.labels,
        probabilities=np.full((len(img.labels), 10), 0.1, np.float32),
    )
    monkeypatch.setenv("MODEL_REPOSITORY", str(tmp_path / "repo"))
    return tmp_path / "repo"


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start tests/loadtest/fake_server.py processes; returns their base URLs."""
    started: list[ManagedProcess] = []

    def start(*args: str) -> str:
        port = free_port()
        proc = ManagedProcess.python_module(
            f"fake-{port}",
            "tests.loadtest.fake_server",
            ready_url=f"http://127.0.0.1:{port}/v1/models/cnn",
            log_dir=tmp_path / "logs",
            env={},
            args=["--port", str(port), *args],
            cwd=Path(__file__).resolve().parents[2],
        ).start()
        started.append(proc)
        proc.wait_ready(30)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in started:
        proc.stop(2)
