"""PyTorch -> TensorFlow weight copy: parity on random weights for both presets (BN included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.trainer.helpers import random_images, random_net
from trainer.config import make_config
from trainer.export_tf import build_tf_module, export_saved_model, import_tf, tf_weights_from_torch
from trainer.export_torch import export_torchscript
from trainer.model import ServingModel
from trainer.parity import ParityError, check_parity


def _torch_probs(net, x):
    with torch.no_grad():
        return ServingModel(net).eval()(torch.from_numpy(x))["probabilities"].numpy()


def _tf_probs(weights, x):
    tf = import_tf()
    module = build_tf_module(weights)  # keep a reference: a tf.function method holds its object weakly
    out = module.serve(tf.constant(x))
    return out["probabilities"].numpy(), out["classes"].numpy()


@pytest.mark.parametrize("preset", ["small", "large"])
def test_tf_copy_matches_torch_on_random_weights(preset):
    net = random_net(make_config(preset).model, seed=1)
    x = random_images(64, seed=2)
    p_torch = _torch_probs(net, x)
    p_tf, c_tf = _tf_probs(tf_weights_from_torch(net), x)
    assert np.abs(p_torch - p_tf).max() <= 1e-5
    np.testing.assert_array_equal(p_torch.argmax(1), c_tf)
    assert c_tf.dtype == np.int64
    assert p_torch.max() > 0.5  # outputs are peaked, so the comparison is sensitive


def test_batchnorm_running_stats_matter_and_are_folded():
    net = random_net(make_config("large").model, seed=5)
    x = random_images(32, seed=6)
    p_tf, _ = _tf_probs(tf_weights_from_torch(net), x)
    assert np.abs(_torch_probs(net, x) - p_tf).max() <= 1e-5
    # Resetting the running stats changes the torch outputs a lot: the test above is not vacuous.
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
    assert np.abs(_torch_probs(net, x) - p_tf).max() > 1e-2


def test_wrong_flatten_order_would_be_caught():
    net = random_net(make_config("small").model, seed=7)
    x = random_images(32, seed=8)
    w = tf_weights_from_torch(net)
    lin1 = net.classifier[1]
    w.dense1 = (lin1.weight.detach().numpy().T.copy(), w.dense1[1])  # NCHW order fed to an NHWC flatten
    p_tf, _ = _tf_probs(w, x)
    assert np.abs(_torch_probs(net, x) - p_tf).max() > 1e-3


@pytest.mark.parametrize("preset", ["small", "large"])
def test_check_parity_reloads_both_artifacts(tmp_path, preset):
    net = random_net(make_config(preset).model, seed=9)
    export_torchscript(net, tmp_path / "model.pt")
    export_saved_model(net, tmp_path / "sm", warmup_images=random_images(4))
    report = check_parity(tmp_path / "model.pt", tmp_path / "sm", random_images(50, seed=10), n_random=20)
    assert report.n_samples == 70 and report.argmax_agreement == 1.0 and report.max_abs_diff <= 1e-5
    assert report.reference_probabilities.shape == (50, 10) and report.reference_classes.dtype == np.int64


def test_check_parity_fails_on_mismatched_weights(tmp_path):
    net = random_net(make_config("small").model, seed=11)
    export_torchscript(net, tmp_path / "model.pt")
    with torch.no_grad():
        net.classifier[-1].bias[3] += 0.05  # one class only: a shift of all logits would cancel in softmax
    export_saved_model(net, tmp_path / "sm", warmup_images=random_images(4))
    with pytest.raises(ParityError, match="exports disagree"):
        check_parity(tmp_path / "model.pt", tmp_path / "sm", random_images(20), n_random=10)
