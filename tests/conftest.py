"""Shared fixtures (owned by the trainer): ONE tiny model published once per test session.

`model_repository` -> Path of a model repository holding version 1 in both trees
(<repo>/torchscript/cnn/1, <repo>/tensorflow/cnn/1); `golden` -> that version's golden.npz as a dict
(images float32 [N,28,28,1], labels int64, probabilities float32 [N,10], classes int64).

Training + export + parity takes ~10-15 s on 2 idle cores. Several test sessions often run at once on
a development machine, so the published version is also kept in a cache under the system temp dir,
keyed by a hash of the trainer's source, the fixture config and the framework versions: any change
to the trainer retrains. CNN_SERVING_FIXTURE_CACHE=0 disables the cache (a clean CI clone has none).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

_TRAINER_SRC = Path(__file__).resolve().parents[1] / "trainer"


def _cache_key() -> str:
    from importlib.metadata import version  # not importing TF: tests that don't need it stay light

    from trainer.config import smoke_config

    h = hashlib.sha256()
    for p in sorted(_TRAINER_SRC.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    h.update(json.dumps(smoke_config().to_dict(), sort_keys=True).encode())
    h.update(" ".join(version(d) for d in ("torch", "tensorflow", "numpy", "scikit-learn")).encode())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained, exported and parity-checked small model, published as version 1."""
    from trainer.config import smoke_config
    from trainer.pipeline import train_and_publish

    repo = tmp_path_factory.mktemp("model_repository")
    use_cache = os.environ.get("CNN_SERVING_FIXTURE_CACHE", "1") != "0"
    cached = Path(tempfile.gettempdir()) / f"cnn-serving-fixture-{_cache_key()}" if use_cache else None
    if cached is not None and (cached / "tensorflow/cnn/1/manifest.json").is_file():
        for tree in ("torchscript", "tensorflow"):
            shutil.copytree(cached / tree, repo / tree)
        return repo
    train_and_publish(smoke_config(), repo, version=1)
    if cached is not None:
        # Copy aside, then one rename: a concurrent session sees the whole cache entry or none.
        tmp = cached.with_name(f".{cached.name}-{uuid.uuid4().hex}")
        with contextlib.suppress(OSError):
            for tree in ("torchscript", "tensorflow"):
                shutil.copytree(repo / tree, tmp / tree)
            os.rename(tmp, cached)
        shutil.rmtree(tmp, ignore_errors=True)
    return repo


@pytest.fixture(scope="session")
def golden(model_repository: Path) -> dict[str, np.ndarray]:
    from trainer.pipeline import load_golden

    return load_golden(model_repository / "torchscript" / "cnn" / "1")
