"""SavedModel export: the same network rebuilt with tf.nn ops, PyTorch weights copied in, plus the
TF Serving warm-up file. TensorFlow is imported only here (and lazily), so the CLI starts fast."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainer.config import IMAGE_SIZE, MODEL_NAME
from trainer.model import CNN, feature_side

SIGNATURE = "serving_default"
WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def import_tf() -> Any:
    """TensorFlow, quiet and CPU-only: the export and the parity check run on CPU so the numbers are
    reproducible and TF does not grab the GPU that PyTorch is using. (The saved graph itself carries
    no device placement, so TF Serving is free to run it on a GPU.)"""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    # RuntimeError: devices already initialised by an earlier call in this process.
    with contextlib.suppress(RuntimeError):
        tf.config.set_visible_devices([], "GPU")
    return tf


@dataclass
class TFWeights:
    """Numpy weights in TensorFlow layouts; BatchNorm already folded into the convs."""

    convs: list[tuple[np.ndarray, np.ndarray]]  # (kernel HWIO, bias) per conv, in order
    convs_per_block: int
    dense1: tuple[np.ndarray, np.ndarray]  # (kernel [H*W*C, hidden] in NHWC flatten order, bias)
    dense2: tuple[np.ndarray, np.ndarray]  # (kernel [hidden, 10], bias)


def tf_weights_from_torch(net: CNN) -> TFWeights:
    """Copy a trained CNN's weights into TF layouts. Folding is done in float64 for exactness:
    w' = w * gamma / sqrt(var + eps), b' = (b - mean) * gamma / sqrt(var + eps) + beta."""
    net = net.cpu().eval()
    convs: list[tuple[np.ndarray, np.ndarray]] = []
    layers = list(net.features)
    for i, layer in enumerate(layers):
        if not isinstance(layer, torch.nn.Conv2d):
            continue
        w = layer.weight.detach().double().numpy()  # OIHW
        b = layer.bias.detach().double().numpy() if layer.bias is not None else np.zeros(w.shape[0], dtype=np.float64)
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(nxt, torch.nn.BatchNorm2d):
            assert nxt.running_mean is not None and nxt.running_var is not None
            scale = nxt.weight.detach().double().numpy() / np.sqrt(nxt.running_var.detach().double().numpy() + nxt.eps)
            w = w * scale[:, None, None, None]
            b = (b - nxt.running_mean.detach().double().numpy()) * scale + nxt.bias.detach().double().numpy()
        convs.append((w.transpose(2, 3, 1, 0).astype(np.float32), b.astype(np.float32)))  # OIHW -> HWIO

    lin1, lin2 = (m for m in net.classifier if isinstance(m, torch.nn.Linear))
    side = feature_side(net.cfg)
    channels = net.cfg.channels[-1]
    w1 = lin1.weight.detach().numpy()  # [hidden, C*H*W], NCHW flatten order
    # PyTorch flattens NCHW (index c*H*W + h*W + w); the TF graph flattens NHWC (h*W*C + w*C + c).
    # Permuting the dense kernel's rows keeps the TF graph free of a transpose.
    w1_tf = w1.reshape(-1, channels, side, side).transpose(2, 3, 1, 0).reshape(side * side * channels, -1)
    return TFWeights(
        convs=convs,
        convs_per_block=net.cfg.convs_per_block,
        dense1=(np.ascontiguousarray(w1_tf, dtype=np.float32), lin1.bias.detach().numpy().astype(np.float32)),
        dense2=(
            np.ascontiguousarray(lin2.weight.detach().numpy().T, dtype=np.float32),
            lin2.bias.detach().numpy().astype(np.float32),
        ),
    )


def build_tf_module(weights: TFWeights) -> Any:
    """A tf.Module whose `serve` tf.function implements the contract's serving_default signature."""
    tf = import_tf()

    class CNNModule(tf.Module):  # type: ignore[name-defined]
        def __init__(self, w: TFWeights) -> None:
            super().__init__(name="cnn")
            self.conv_kernels = [tf.Variable(k, name=f"conv{i}_kernel") for i, (k, _) in enumerate(w.convs)]
            self.conv_biases = [tf.Variable(b, name=f"conv{i}_bias") for i, (_, b) in enumerate(w.convs)]
            self.dense1_kernel = tf.Variable(w.dense1[0], name="dense1_kernel")
            self.dense1_bias = tf.Variable(w.dense1[1], name="dense1_bias")
            self.dense2_kernel = tf.Variable(w.dense2[0], name="dense2_kernel")
            self.dense2_bias = tf.Variable(w.dense2[1], name="dense2_bias")
            self._convs_per_block = w.convs_per_block
            self._flat = int(w.dense1[0].shape[0])

        @tf.function(input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 1], tf.float32, name="images")])
        def serve(self, images: Any) -> dict[str, Any]:
            x = images
            for i, (k, b) in enumerate(zip(self.conv_kernels, self.conv_biases, strict=True)):
                x = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, k, strides=1, padding="SAME"), b))
                if (i + 1) % self._convs_per_block == 0:
                    x = tf.nn.max_pool2d(x, ksize=2, strides=2, padding="VALID")
            x = tf.reshape(x, [-1, self._flat])
            x = tf.nn.relu(tf.matmul(x, self.dense1_kernel) + self.dense1_bias)
            logits = tf.matmul(x, self.dense2_kernel) + self.dense2_bias
            probabilities = tf.nn.softmax(logits, axis=-1)
            classes = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
            return {"probabilities": probabilities, "classes": classes}

    return CNNModule(weights)


def export_saved_model(net: CNN, export_dir: Path, warmup_images: np.ndarray) -> None:
    """Write a SavedModel into `export_dir` (must not exist yet) plus the TF Serving warm-up file."""
    tf = import_tf()
    module = build_tf_module(tf_weights_from_torch(net))
    tf.saved_model.save(module, str(export_dir), signatures={SIGNATURE: module.serve.get_concrete_function()})
    write_warmup(export_dir / WARMUP_FILE, warmup_images)


def write_warmup(path: Path, images: np.ndarray, batch_sizes: tuple[int, ...] = (1, 8, 32)) -> None:
    """TF Serving replays these PredictRequests at load time, so the first real request is not slow."""
    tf = import_tf()
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for n in batch_sizes:
            batch = np.resize(images.astype(np.float32), (n, IMAGE_SIZE, IMAGE_SIZE, 1))
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=MODEL_NAME, signature_name=SIGNATURE)
            )
            request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.float32))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def load_signature(export_dir: Path) -> Any:
    """The reloaded serving_default concrete function (callable as fn(images=...))."""
    tf = import_tf()
    loaded = tf.saved_model.load(str(export_dir))
    fn = loaded.signatures[SIGNATURE]
    fn._loaded_module = loaded  # keep the module (and its variables) alive with the function
    return fn
