"""The CNN (PyTorch) and its serving wrapper: NHWC images in, {probabilities, classes} out."""

from __future__ import annotations

import torch
from torch import nn

from trainer.config import IMAGE_SIZE, NUM_CLASSES, ModelConfig


class CNN(nn.Module):
    """`len(channels)` blocks of [conv(same) -> (BN) -> ReLU] x convs_per_block -> maxpool 2x2,
    then flatten (NCHW order) -> dense(hidden) -> ReLU -> dropout -> dense(10). Input NCHW, output logits."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in cfg.channels:
            for _ in range(cfg.convs_per_block):
                # No conv bias before BN: BN's shift replaces it (and folding stays exact).
                layers.append(
                    nn.Conv2d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=not cfg.batch_norm)
                )
                if cfg.batch_norm:
                    layers.append(nn.BatchNorm2d(c_out))
                layers.append(nn.ReLU())
                c_in = c_out
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = feature_side(cfg)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c_in * side * side, cfg.hidden),
            nn.ReLU(),
            nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden, NUM_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def feature_side(cfg: ModelConfig) -> int:
    side = IMAGE_SIZE
    for _ in cfg.channels:
        side //= 2  # MaxPool2d floors, like TF's VALID pooling
    return side


class ServingModel(nn.Module):
    """What gets exported: the contract's NHWC float32 input, softmax probabilities and int64 argmax."""

    def __init__(self, net: CNN) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        # The layout change lives inside the artifact so both backends take the same request body.
        logits = self.net(images.permute(0, 3, 1, 2))
        probabilities = torch.softmax(logits, dim=1)
        classes = torch.argmax(probabilities, dim=1)
        return {"probabilities": probabilities, "classes": classes}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_image(net: CNN) -> int:
    """Forward FLOPs for one image as torch's FlopCounterMode counts them (2 x multiply-accumulates of
    convs and matmuls; activations, pooling and BN are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, device=next(net.parameters()).device))
    net.train(was_training)
    return int(counter.get_total_flops())
