"""Data sets in the serving contract's form: float32 NHWC [N, 28, 28, 1] in [0, 1], int64 labels.

Default: scikit-learn's bundled 8x8 digits, upscaled and centred like MNIST. `--data`: real MNIST as
IDX files (gzipped or not) or as mnist.npz. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.config import IMAGE_SIZE, NUM_CLASSES, TrainConfig
from trainer.errors import TrainerError

# MNIST digits sit in a 20x20 box centred in the 28x28 frame; the digits are resized to match.
_DIGIT_BOX = 20


@dataclass
class Splits:
    """Train/validation/test arrays plus a description for the manifest."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def digits_to_mnist_form(images8: np.ndarray) -> np.ndarray:
    """8x8 digits with values 0..16 -> float32 [N, 28, 28, 1] in [0, 1]: bilinear resize to 20x20,
    zero-pad 4 pixels on each side (the MNIST layout)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images8, dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0)
    x = F.interpolate(x, size=(_DIGIT_BOX, _DIGIT_BOX), mode="bilinear", align_corners=False)
    pad = (IMAGE_SIZE - _DIGIT_BOX) // 2
    x = F.pad(x, (pad, pad, pad, pad))
    return x.clamp_(0.0, 1.0).permute(0, 2, 3, 1).contiguous().numpy()


def load_splits(cfg: TrainConfig) -> Splits:
    """The configured data set, split with the configured seed. Raises TrainerError on unreadable data."""
    splits = _bundled_digits(cfg) if cfg.data is None else _mnist(Path(cfg.data), cfg)
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(splits.y_train):
        splits.x_train, splits.y_train = _stratified_take(
            splits.x_train, splits.y_train, cfg.max_train_samples, cfg.seed
        )
    splits.info.update(seed=cfg.seed, split_sizes=splits.sizes(), max_train_samples=cfg.max_train_samples)
    return splits


def _bundled_digits(cfg: TrainConfig) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = digits_to_mnist_form(bunch.images)
    y = bunch.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=cfg.test_fraction, stratify=y, random_state=cfg.seed
    )
    val_of_rest = cfg.val_fraction / (1.0 - cfg.test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_of_rest, stratify=y_rest, random_state=cfg.seed
    )
    return Splits(
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        info={
            "name": "sklearn-digits",
            "source": "sklearn.datasets.load_digits (bundled, 1,797 8x8 images)",
            "preprocessing": "values/16, bilinear resize 8x8->20x20, zero-pad to 28x28",
            "split": f"stratified: test {cfg.test_fraction}, val {cfg.val_fraction} of all",
        },
    )


def _mnist(path: Path, cfg: TrainConfig) -> Splits:
    from sklearn.model_selection import train_test_split

    if not path.exists():
        raise TrainerError(f"data path not found: {path}")
    if path.is_dir():
        x_tr, y_tr, x_te, y_te = _read_idx_dir(path)
        kind = "IDX files"
    else:
        x_tr, y_tr, x_te, y_te = _read_npz(path)
        kind = "npz"
    x_tr, x_te = (_to_unit_nhwc(a, path) for a in (x_tr, x_te))
    y_tr, y_te = (_check_labels(y, n, path) for y, n in ((y_tr, len(x_tr)), (y_te, len(x_te))))
    # MNIST's own test set stays the test set; validation is a stratified slice of its training set.
    try:
        x_train, x_val, y_train, y_val = train_test_split(
            x_tr, y_tr, test_size=cfg.val_fraction, stratify=y_tr, random_state=cfg.seed
        )
    except ValueError as e:
        raise TrainerError(f"cannot split the training set in {path}: {e}") from None
    return Splits(
        x_train,
        y_train,
        x_val,
        y_val,
        x_te,
        y_te,
        info={
            "name": "mnist",
            "source": f"{path.resolve()} ({kind})",
            "preprocessing": "values/255",
            "split": f"MNIST test set; val = stratified {cfg.val_fraction} of the training set",
        },
    )


_IDX_NAMES = {
    "x_train": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "y_train": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "x_test": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "y_test": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}


def _read_idx_dir(d: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    arrays = {}
    for key, stems in _IDX_NAMES.items():
        candidates = [d / (s + ext) for s in stems for ext in ("", ".gz")]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise TrainerError(f"MNIST file {stems[0]}[.gz] not found in {d}")
        arrays[key] = read_idx(found)
    return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (gzipped or not) as a uint8 array. Raises TrainerError if it is malformed."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise TrainerError(f"cannot read {path}: {e}") from None
    if len(raw) < 4:
        raise TrainerError(f"malformed IDX file {path}: too short")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or ndim not in (1, 3):
        raise TrainerError(f"malformed IDX file {path}: bad magic (expected unsigned-byte, 1 or 3 dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TrainerError(f"malformed IDX file {path}: truncated header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise TrainerError(f"malformed IDX file {path}: {len(raw) - header} data bytes, expected {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise TrainerError(f"cannot read {path}: {e.strerror or e}") from None
    if magic != b"PK\x03\x04":
        # Anything else would reach np.load's pickle branch, whose message is about trusting pickles.
        raise TrainerError(
            f"cannot read {path}: not an .npz file (a zip of arrays x_train, y_train, x_test, y_test, as Keras' "
            "mnist.npz) nor a directory of MNIST IDX files"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z.files]
            if missing:
                raise TrainerError(f"{path} lacks array(s): {', '.join(missing)}")
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise TrainerError(f"cannot read {path} as an .npz file: {e}") from None


def _to_unit_nhwc(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or len(x) == 0:
        raise TrainerError(f"images in {path} have shape {x.shape}, expected [N, 28, 28]")
    x = x.astype(np.float32)
    # uint8 MNIST is 0..255; an already-normalised float copy is left as it is.
    if x.max() > 1.0:
        x /= 255.0
    return np.clip(x, 0.0, 1.0)[..., None]


def _check_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    y = np.asarray(y).reshape(-1)
    if len(y) != n:
        raise TrainerError(f"{path}: {len(y)} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= NUM_CLASSES:
        raise TrainerError(f"{path}: labels must be integers 0..9")
    return y.astype(np.int64)


def _stratified_take(x: np.ndarray, y: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    x_small, _, y_small, _ = train_test_split(x, y, train_size=n, stratify=y, random_state=seed)
    return x_small, y_small
