"""Shared fixtures (owned by the trainer): ONE tiny model published once per test session.

`model_repository` -> Path of a model repository holding version 1 in both trees
(<repo>/torchscript/cnn/1, <repo>/tensorflow/cnn/1); `golden` -> that version's golden.npz as a dict
(images float32 [N,28,28,1], labels int64, probabilities float32 [N,10], classes int64).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained, exported and parity-checked small model, published as version 1 (~15 s)."""
    from trainer.config import smoke_config
    from trainer.pipeline import train_and_publish

    repo = tmp_path_factory.mktemp("model_repository")
    train_and_publish(smoke_config(), repo, version=1)
    return repo


@pytest.fixture(scope="session")
def golden(model_repository: Path) -> dict[str, np.ndarray]:
    from trainer.pipeline import load_golden

    return load_golden(model_repository / "torchscript" / "cnn" / "1")
