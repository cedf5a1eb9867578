"""train_and_publish end to end: the shared fixture's version, version sequencing, failed publishes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.trainer.helpers import assert_manifest_hashes, assert_saved_model_contract, read_warmup, version_dirs
from trainer import export_tf
from trainer.config import smoke_config
from trainer.errors import TrainerError
from trainer.parity import ParityError, run_saved_model
from trainer.pipeline import train_and_publish

REQUIRED = {"model_name", "version", "created_at", "config", "dataset", "sizes", "metrics", "parity", "frameworks"}


def tiny():
    # One epoch on 200 images: enough to exercise everything; accuracy is not the point here.
    return smoke_config(epochs=1, max_train_samples=200)


def test_fixture_version_layout_and_manifests(model_repository):
    assert version_dirs(model_repository) == {"torchscript": ["1"], "tensorflow": ["1"], "staging": []}
    ts, tf_dir = model_repository / "torchscript/cnn/1", model_repository / "tensorflow/cnn/1"
    assert {"model.pt", "manifest.json", "golden.npz", "config.json"} <= {p.name for p in ts.iterdir()}
    assert (tf_dir / "saved_model.pb").is_file() and (tf_dir / "variables").is_dir()
    manifests = {tree: assert_manifest_hashes(d) for tree, d in (("torchscript", ts), ("tensorflow", tf_dir))}
    for tree, m in manifests.items():
        assert set(m) >= REQUIRED, tree
        assert m["model_name"] == "cnn" and m["version"] == 1
        assert m["parity"]["max_abs_diff"] <= 1e-5 and m["parity"]["argmax_agreement"] == 1.0
        assert m["parity"]["n_samples"] == 360 + 256
        assert m["metrics"]["test_accuracy"] >= 0.9
        assert m["dataset"]["split_sizes"] == {"train": 1257, "val": 180, "test": 360}
        assert m["sizes"]["params"] > 0 and m["sizes"]["flops_per_image"] > 0 and m["sizes"]["artifact_bytes"] > 0
        assert {"python", "torch", "tensorflow", "numpy"} <= set(m["frameworks"])
        assert json.loads((model_repository / tree / "cnn/1/config.json").read_text()) == m["config"]
    assert "variables/variables.index" in manifests["tensorflow"]["files"]
    assert "assets.extra/tf_serving_warmup_requests" in manifests["tensorflow"]["files"]
    assert manifests["torchscript"]["files"]["golden.npz"] == manifests["tensorflow"]["files"]["golden.npz"]


def test_golden_matches_both_artifacts(model_repository, golden):
    n = 256
    assert golden["images"].dtype == np.float32 and golden["images"].shape == (n, 28, 28, 1)
    assert golden["labels"].dtype == np.int64 and golden["labels"].shape == (n,)
    assert golden["probabilities"].dtype == np.float32 and golden["probabilities"].shape == (n, 10)
    assert golden["classes"].dtype == np.int64 and golden["classes"].shape == (n,)
    assert (golden["classes"] == golden["labels"]).mean() >= 0.9  # other components classify with it
    ts = torch.jit.load(str(model_repository / "torchscript/cnn/1/model.pt"))
    with torch.no_grad():
        out = ts(torch.from_numpy(golden["images"]))
    np.testing.assert_allclose(out["probabilities"].numpy(), golden["probabilities"], atol=1e-6)
    probs, classes = run_saved_model(model_repository / "tensorflow/cnn/1", golden["images"])
    assert np.abs(probs - golden["probabilities"]).max() <= 1e-5
    np.testing.assert_array_equal(classes, golden["classes"])


def test_saved_model_signature_and_warmup(model_repository):
    export_dir = model_repository / "tensorflow/cnn/1"
    assert_saved_model_contract(export_dir)
    logs = read_warmup(export_dir)
    assert [log.predict_log.request.inputs["images"].tensor_shape.dim[0].size for log in logs] == [1, 8, 32]
    for log in logs:
        req = log.predict_log.request
        assert req.model_spec.name == "cnn" and req.model_spec.signature_name == "serving_default"
        assert [d.size for d in req.inputs["images"].tensor_shape.dim][1:] == [28, 28, 1]


def test_versions_increase_and_existing_is_refused(tmp_path):
    first = train_and_publish(tiny(), tmp_path)
    second = train_and_publish(tiny(), tmp_path)
    assert (first.version, second.version) == (1, 2)
    assert second.manifest["version"] == 2 and second.paths["tensorflow"] == tmp_path / "tensorflow/cnn/2"
    before = (tmp_path / "torchscript/cnn/2/model.pt").read_bytes()
    with pytest.raises(TrainerError, match="version 2 already exists"):
        train_and_publish(tiny(), tmp_path, version=2)
    assert (tmp_path / "torchscript/cnn/2/model.pt").read_bytes() == before
    assert version_dirs(tmp_path) == {"torchscript": ["1", "2"], "tensorflow": ["1", "2"], "staging": []}


def test_failure_mid_publish_leaves_nothing(tmp_path, monkeypatch):
    import os

    from trainer import publish

    real_rename = os.rename

    def fail_tf_rename(src, dst):
        if "tensorflow" in str(dst) and "/cnn/" in str(dst):
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(publish.os, "rename", fail_tf_rename)
    with pytest.raises(TrainerError, match="cannot publish version 1"):
        train_and_publish(tiny(), tmp_path)
    assert version_dirs(tmp_path) == {"torchscript": [], "tensorflow": [], "staging": []}


def test_parity_failure_publishes_nothing(tmp_path, monkeypatch):
    real = export_tf.tf_weights_from_torch

    def skewed(net):
        w = real(net)
        w.dense2[1][3] += 0.5  # one logit off: the SavedModel no longer matches TorchScript
        return w

    monkeypatch.setattr(export_tf, "tf_weights_from_torch", skewed)
    with pytest.raises(ParityError, match="exports disagree"):
        train_and_publish(tiny(), tmp_path)
    assert version_dirs(tmp_path) == {"torchscript": [], "tensorflow": [], "staging": []}
