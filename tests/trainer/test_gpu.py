"""CUDA: training on the GPU, and the TorchScript artifact (saved on CPU) loading onto a GPU with the
same outputs. Skipped where no CUDA GPU is present (CI, the 2-core dev machines)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainer.config import make_config
from trainer.data import load_splits
from trainer.export_torch import export_torchscript
from trainer.train import DistContext, resolve_device, train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)"),
]


@pytest.fixture(autouse=True)
def exact_fp32():
    # TF32 convs/matmuls would differ from CPU fp32 by ~1e-3; the parity bar is 1e-5.
    prev = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = prev


def test_auto_device_picks_cuda():
    assert resolve_device("auto", DistContext()).type == "cuda"


@pytest.mark.parametrize("preset", ["small", "large"])
def test_train_on_cuda_and_torchscript_runs_on_gpu(tmp_path, preset):
    cfg = make_config(preset, device="cuda", epochs=4 if preset == "small" else 3)
    splits = load_splits(cfg)
    res = train(cfg, splits, resolve_device("cuda", DistContext()), DistContext(), progress=False, verbose=False)
    assert res.test_accuracy >= 0.9
    export_torchscript(res.model, tmp_path / "model.pt")
    x = torch.from_numpy(splits.x_test)
    with torch.no_grad():
        cpu = torch.jit.load(str(tmp_path / "model.pt"), map_location="cpu")(x)
        gpu = torch.jit.load(str(tmp_path / "model.pt"), map_location="cuda")(x.cuda())
    assert gpu["probabilities"].device.type == "cuda" and gpu["classes"].dtype == torch.int64
    diff = np.abs(cpu["probabilities"].numpy() - gpu["probabilities"].cpu().numpy()).max()
    assert diff <= 1e-5, diff
    np.testing.assert_array_equal(cpu["classes"].numpy(), gpu["classes"].cpu().numpy())
