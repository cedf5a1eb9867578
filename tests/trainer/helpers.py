"""Test helpers: MNIST-format files written from the bundled digits, and random-weight networks."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from trainer.config import ModelConfig
from trainer.model import CNN


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()


def mnist_like(n_train: int = 300, n_test: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """uint8 [N,28,28] images + labels made from the bundled digits (so a model can learn them)."""
    from sklearn.datasets import load_digits

    from trainer.data import digits_to_mnist_form

    bunch = load_digits()
    x = (digits_to_mnist_form(bunch.images)[..., 0] * 255).round().astype(np.uint8)
    y = bunch.target.astype(np.uint8)
    return x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test]


def write_idx_dir(d: Path, gz: bool, n_train: int = 300, n_test: int = 100) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    x_tr, y_tr, x_te, y_te = mnist_like(n_train, n_test)
    for stem, arr in (
        ("train-images-idx3-ubyte", x_tr),
        ("train-labels-idx1-ubyte", y_tr),
        ("t10k-images-idx3-ubyte", x_te),
        ("t10k-labels-idx1-ubyte", y_te),
    ):
        raw = idx_bytes(arr)
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(raw))
        else:
            (d / stem).write_bytes(raw)
    return d


def write_npz(path: Path, n_train: int = 300, n_test: int = 100) -> Path:
    x_tr, y_tr, x_te, y_te = mnist_like(n_train, n_test)
    np.savez(path, x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)
    return path


def random_net(cfg: ModelConfig, seed: int = 0) -> CNN:
    """A CNN with random weights, sharpened so its outputs are far from uniform, and (with BN)
    non-trivial running statistics (accumulated from probe images, so mean != 0 and var != 1) and
    random affine parameters, so a wrong weight copy cannot hide behind ~0.1 probabilities."""
    torch.manual_seed(seed)
    net = CNN(cfg)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batches
        if bns:
            net.train()
            for i in range(4):
                net(torch.from_numpy(random_images(64, seed=100 + i)).permute(0, 3, 1, 2))
        net.eval()
        # Centre each class's logit over probe images and scale the spread across images to ~4:
        # predictions then depend on the input (not on the biases) and are peaked.
        logits = net(torch.from_numpy(random_images(64, seed=99)).permute(0, 3, 1, 2))
        last = net.classifier[-1]
        assert isinstance(last, torch.nn.Linear)
        last.bias.sub_(logits.mean(dim=0))
        scale = 4.0 / float(logits.std(dim=0).mean())
        last.weight.mul_(scale)
        last.bias.mul_(scale)
    return net


def random_images(n: int, seed: int = 0) -> np.ndarray:
    """Varied probe images in [0, 1]: bundled digits, plain noise, and noise scaled per image (plain
    uniform noise alone drives a random net to one class)."""
    from sklearn.datasets import load_digits

    from trainer.data import digits_to_mnist_form

    rng = np.random.default_rng(seed)
    noise = rng.random((n, 28, 28, 1), dtype=np.float32)
    scaled = noise * rng.random((n, 1, 1, 1), dtype=np.float32) ** 2
    digits = digits_to_mnist_form(load_digits().images[rng.choice(1797, size=n)])
    pick = rng.integers(0, 3, size=n)[:, None, None, None]
    return np.where(pick == 0, noise, np.where(pick == 1, scaled, digits)).astype(np.float32)


def assert_saved_model_contract(export_dir: Path) -> None:
    """The SavedModel's serving_default signature is exactly the contract in shared/DESIGN.md."""
    from trainer.export_tf import import_tf

    tf = import_tf()
    loaded = tf.saved_model.load(str(export_dir))
    assert list(loaded.signatures.keys()) == ["serving_default"]
    sig = loaded.signatures["serving_default"]
    args, kwargs = sig.structured_input_signature
    assert args == () and set(kwargs) == {"images"}
    assert kwargs["images"].dtype == tf.float32 and kwargs["images"].shape.as_list() == [None, 28, 28, 1]
    outs = sig.structured_outputs
    assert set(outs) == {"probabilities", "classes"}
    assert outs["probabilities"].dtype == tf.float32 and outs["probabilities"].shape.as_list() == [None, 10]
    assert outs["classes"].dtype == tf.int64 and outs["classes"].shape.as_list() == [None]


def read_warmup(export_dir: Path) -> list:
    """The PredictionLog records of the TF Serving warm-up file."""
    from tensorflow_serving.apis import prediction_log_pb2

    from trainer.export_tf import WARMUP_FILE, import_tf

    tf = import_tf()
    return [
        prediction_log_pb2.PredictionLog.FromString(r.numpy())
        for r in tf.data.TFRecordDataset(str(export_dir / WARMUP_FILE))
    ]


def assert_manifest_hashes(version_dir: Path) -> dict:
    """manifest.json lists every file but itself with the right sha256; returns the manifest."""
    import hashlib
    import json

    manifest = json.loads((version_dir / "manifest.json").read_text())
    on_disk = {
        p.relative_to(version_dir).as_posix()
        for p in version_dir.rglob("*")
        if p.is_file() and p.name != "manifest.json"
    }
    assert set(manifest["files"]) == on_disk
    for rel, digest in manifest["files"].items():
        assert hashlib.sha256((version_dir / rel).read_bytes()).hexdigest() == digest, rel
    return manifest


def version_dirs(repo: Path) -> dict[str, list[str]]:
    """Names in each tree's cnn/ folder plus any staging leftovers at the top."""
    out = {
        tree: sorted(p.name for p in (repo / tree / "cnn").iterdir()) if (repo / tree / "cnn").is_dir() else []
        for tree in ("torchscript", "tensorflow")
    }
    out["staging"] = sorted(p.name for p in repo.glob(".staging-*")) if repo.is_dir() else []
    return out
