"""MobileNetV2 (width 1.0) as a flat unit list; a stride-1 stem keeps 32x32 inputs usable."""

from __future__ import annotations

import torch
from torch import nn

from .core import Normalize, pooled_linear_head

# (expansion t, output channels c, repeats n, stride of first repeat s), as in the paper.
MOBILENET_V2_STAGES = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
STEM_CHANNELS = 32
LAST_CHANNELS = 1280
# Inputs up to this size get a stride-1 stem instead of stride 2.
SMALL_INPUT_PX = 64
MOBILENET_MIN_INPUT_PX = 8


def conv_bn_relu6(
    in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    """Conv (no bias, "same" padding) + BatchNorm + ReLU6."""
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel, stride, padding=kernel // 2, groups=groups,
            bias=False,
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expansion, 3x3 depthwise, linear 1x1 projection; residual when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(conv_bn_relu6(in_channels, hidden, 1))
        layers += [
            conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.layers = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x)
        return x + out if self.use_residual else out


def mobilenet_v2_units(
    in_channels: int, input_px: int, num_classes: int, head: str
) -> tuple[list[nn.Module], list[str]]:
    """Units and names: normalize, stem, block1..block17, conv_last, head.

    `input_px` is the larger input side; it picks the stem stride. The ImageNet head adds
    torchvision's dropout of 0.2 before the linear layer.
    """
    stem_stride = 1 if input_px <= SMALL_INPUT_PX else 2
    units: list[nn.Module] = [
        Normalize(in_channels),
        conv_bn_relu6(in_channels, STEM_CHANNELS, 3, stem_stride),
    ]
    names = ["normalize", "stem"]
    channels = STEM_CHANNELS
    for expansion, out_channels, repeats, first_stride in MOBILENET_V2_STAGES:
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            units.append(InvertedResidual(channels, out_channels, stride, expansion))
            names.append(f"block{len(names) - 1}")
            channels = out_channels
    units.append(conv_bn_relu6(channels, LAST_CHANNELS, 1))
    names.append("conv_last")
    units.append(pooled_linear_head(LAST_CHANNELS, num_classes, 0.2 if head == "imagenet" else 0))
    names.append("head")
    return units, names
