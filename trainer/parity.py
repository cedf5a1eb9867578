"""Parity: reload BOTH artifacts from disk and prove they compute the same function."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.config import IMAGE_SIZE, NUM_CLASSES
from trainer.errors import TrainerError

# The contract's bar (shared/DESIGN.md): max abs difference of probabilities, and exact argmax agreement.
MAX_ABS_DIFF = 1e-5


class ParityError(TrainerError):
    """The two exports disagree; nothing is published."""


@dataclass
class ParityReport:
    max_abs_diff: float
    argmax_agreement: float
    n_samples: int
    # TorchScript outputs on the images passed in (the test set), reused for golden.npz.
    reference_probabilities: np.ndarray
    reference_classes: np.ndarray

    def to_dict(self) -> dict[str, float | int]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "argmax_agreement": self.argmax_agreement,
            "n_samples": self.n_samples,
            "tolerance": MAX_ABS_DIFF,
        }


def run_torchscript(path: Path, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    module = torch.jit.load(str(path), map_location="cpu")
    probs, classes = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out = module(torch.from_numpy(np.ascontiguousarray(images[i : i + batch])))
            probs.append(out["probabilities"].numpy())
            classes.append(out["classes"].numpy())
    return np.concatenate(probs), np.concatenate(classes)


def run_saved_model(path: Path, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    from trainer.export_tf import import_tf, load_signature

    tf = import_tf()
    fn = load_signature(path)
    probs, classes = [], []
    for i in range(0, len(images), batch):
        out = fn(images=tf.constant(images[i : i + batch]))
        probs.append(out["probabilities"].numpy())
        classes.append(out["classes"].numpy())
    return np.concatenate(probs), np.concatenate(classes)


def check_parity(
    torchscript_path: Path,
    saved_model_dir: Path,
    test_images: np.ndarray,
    seed: int = 0,
    n_random: int = 256,
    tolerance: float = MAX_ABS_DIFF,
) -> ParityReport:
    """Run the held-out images plus `n_random` uniform-noise images through both reloaded artifacts.
    Raises ParityError unless max |p_torch - p_tf| <= tolerance, argmax agrees everywhere and the
    outputs have the contract's dtypes and shapes."""
    rng = np.random.default_rng(seed)
    noise = rng.random((n_random, IMAGE_SIZE, IMAGE_SIZE, 1), dtype=np.float32)
    images = np.concatenate([test_images.astype(np.float32), noise])
    p_t, c_t = run_torchscript(torchscript_path, images)
    p_f, c_f = run_saved_model(saved_model_dir, images)
    for name, arr, dtype, shape in (
        ("torchscript probabilities", p_t, np.float32, (len(images), NUM_CLASSES)),
        ("savedmodel probabilities", p_f, np.float32, (len(images), NUM_CLASSES)),
        ("torchscript classes", c_t, np.int64, (len(images),)),
        ("savedmodel classes", c_f, np.int64, (len(images),)),
    ):
        if arr.dtype != dtype or arr.shape != shape:
            raise ParityError(f"{name}: got {arr.dtype}{list(arr.shape)}, expected {np.dtype(dtype)}{list(shape)}")
    max_diff = float(np.max(np.abs(p_t - p_f)))
    agreement = float(np.mean(c_t == c_f))
    if not (max_diff <= tolerance and agreement == 1.0):
        raise ParityError(
            f"exports disagree: max |p_torch - p_tf| = {max_diff:.3g} (limit {tolerance:g}), "
            f"argmax agreement {agreement:.4%}; nothing published"
        )
    n_test = len(test_images)
    return ParityReport(max_diff, agreement, len(images), p_t[:n_test], c_t[:n_test])
