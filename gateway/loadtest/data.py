"""Request bodies: real test images from the model repository, drawn (seeded) and encoded before the run."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.loadtest.grpc_wire import encode_predict_request

MODEL_NAME = "cnn"


class DataError(RuntimeError):
    """No usable images for the request bodies."""


@dataclass
class ImageSet:
    images: np.ndarray  # float32 [N,28,28,1]
    labels: np.ndarray  # int64 [N]
    golden_classes: np.ndarray | None  # the model's own predictions, when the golden file has them
    source: str
    model_version: int | None = None
    # Set when these are not the model's own test images: said in the console and in the report.
    warning: str | None = None


def model_repository() -> Path:
    return Path(os.environ.get("MODEL_REPOSITORY", "./model_repository"))


def _versions(base: Path) -> list[int]:
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit())


def latest_golden(repo: Path) -> tuple[Path, int] | None:
    for tree in ("torchscript", "tensorflow"):
        for version in reversed(_versions(repo / tree / MODEL_NAME)):
            path = repo / tree / MODEL_NAME / str(version) / "golden.npz"
            if path.is_file():
                return path, version
    return None


def load_images(repo: Path | None = None, allow_fallback: bool = True) -> ImageSet:
    """The latest version's golden.npz; else sklearn's digits resized to 28x28 (labels only)."""
    repo = repo or model_repository()
    found = latest_golden(repo)
    if found:
        path, version = found
        with np.load(path) as z:
            images = np.asarray(z["images"], dtype=np.float32)
            labels = np.asarray(z["labels"], dtype=np.int64)
            classes = np.asarray(z["classes"], dtype=np.int64) if "classes" in z.files else None
        if images.ndim != 4 or images.shape[1:] != (28, 28, 1) or len(images) == 0:
            raise DataError(f"{path}: images have shape {images.shape}, expected [N,28,28,1]")
        return ImageSet(images, labels, classes, str(path), version)
    if not allow_fallback:
        raise DataError(f"no golden.npz under {repo}/torchscript/{MODEL_NAME}/<version>/ (train a model first)")
    return _digits_fallback(repo)


def _digits_fallback(repo: Path) -> ImageSet:
    try:
        from PIL import Image
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - both are pinned dependencies
        raise DataError(f"no golden.npz under {repo} and no fallback available: {exc}") from exc
    digits = load_digits()
    imgs = []
    for img in digits.images[:512]:
        pil = Image.fromarray((img / 16.0 * 255).astype(np.uint8)).resize((28, 28), Image.Resampling.BILINEAR)
        imgs.append(np.asarray(pil, dtype=np.float32)[..., None] / 255.0)
    return ImageSet(
        np.stack(imgs),
        digits.target[:512].astype(np.int64),
        None,
        f"sklearn digits (no golden.npz under {repo})",
        warning=(
            f"no golden.npz under {repo}/torchscript/{MODEL_NAME}/<version>/ (set MODEL_REPOSITORY or train a "
            "model): the requests carry scikit-learn's 8x8 digits scaled to 28x28, not the model's test images"
        ),
    )


@dataclass
class BodySet:
    """A pool of pre-encoded request bodies and, per body, the image indices it carries."""

    batch_size: int
    image_indices: list[list[int]]
    rest: list[bytes] = field(default_factory=list)
    grpc: list[bytes] = field(default_factory=list)
    expected_labels: list[list[int]] = field(default_factory=list)
    expected_classes: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.image_indices)

    def sequence(self, seed: int, n: int) -> np.ndarray:
        """The order in which bodies are sent: identical for every target given the same seed."""
        rng = np.random.default_rng(seed)
        return rng.integers(0, len(self), size=max(n, 1))


def build_bodies(
    images: ImageSet,
    batch_size: int,
    seed: int,
    pool_size: int = 256,
    grpc: bool = False,
) -> BodySet:
    rng = np.random.default_rng(seed)
    n = len(images.images)
    indices = [rng.integers(0, n, size=batch_size).tolist() for _ in range(pool_size)]
    bodies = BodySet(batch_size=batch_size, image_indices=indices)
    for idx in indices:
        batch = images.images[idx]
        bodies.rest.append(orjson.dumps({"instances": batch}, option=orjson.OPT_SERIALIZE_NUMPY))
        bodies.expected_labels.append(images.labels[idx].tolist())
    if images.golden_classes is not None:
        bodies.expected_classes = [images.golden_classes[idx].tolist() for idx in indices]
    if grpc:
        bodies.grpc = [encode_predict_request(images.images[idx]) for idx in indices]
    return bodies


def describe(images: ImageSet) -> dict[str, Any]:
    return {"source": images.source, "count": len(images.images), "model_version": images.model_version}
