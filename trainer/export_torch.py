"""TorchScript export: the serving wrapper, scripted and frozen."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from trainer.model import CNN, ServingModel


def export_torchscript(net: CNN, path: Path) -> None:
    """Write `path` (model.pt): forward(images NHWC float32) -> {probabilities, classes}.

    torch.jit.freeze inlines the weights as constants and runs the frozen-graph optimisations
    (conv+BatchNorm folding, dropout removal, linear fusions). torch.jit.optimize_for_inference is
    deliberately NOT applied: on CPU it rewrites convs into MKLDNN-layout ops, which pins the artifact
    to CPU, while torch_service must be able to load the same file onto a GPU.
    """
    serving = ServingModel(copy.deepcopy(net).cpu().eval()).eval()
    scripted = torch.jit.script(serving)
    frozen = torch.jit.freeze(scripted)
    torch.jit.save(frozen, str(path))
