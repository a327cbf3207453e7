"""ResNet-18 with a CIFAR stem (3x3, stride 1) or an ImageNet stem (7x7 stride 2, max-pool)."""

from __future__ import annotations

import torch
from torch import nn

from .core import Normalize, pooled_linear_head

RESNET18_STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of first block)
BLOCKS_PER_STAGE = 2
RESNET_MIN_INPUT_PX = {"cifar": 8, "imagenet": 32}


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers with an identity (or 1x1 conv+BN projection) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def resnet18_units(
    stem: str, in_channels: int, num_classes: int
) -> tuple[list[nn.Module], list[str]]:
    """Units and names: normalize, stem, [maxpool], layer{s}_block{b} x 8, head."""
    units: list[nn.Module] = [Normalize(in_channels)]
    names = ["normalize"]
    if stem == "cifar":
        stem_conv = nn.Conv2d(in_channels, 64, 3, 1, padding=1, bias=False)
    else:
        stem_conv = nn.Conv2d(in_channels, 64, 7, 2, padding=3, bias=False)
    units.append(nn.Sequential(stem_conv, nn.BatchNorm2d(64), nn.ReLU(inplace=True)))
    names.append("stem")
    if stem == "imagenet":
        units.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        names.append("maxpool")
    channels = 64
    for stage, (out_channels, first_stride) in enumerate(RESNET18_STAGES, start=1):
        for block in range(1, BLOCKS_PER_STAGE + 1):
            stride = first_stride if block == 1 else 1
            units.append(BasicBlock(channels, out_channels, stride))
            names.append(f"layer{stage}_block{block}")
            channels = out_channels
    units.append(pooled_linear_head(channels, num_classes))
    names.append("head")
    return units, names
