"""A two-conv CNN for fast tests; works for any channel count and inputs of 8 px or more."""

from __future__ import annotations

from torch import nn

from .core import Normalize, pooled_linear_head

TINY_MIN_INPUT_PX = 8


def tiny_cnn_units(in_channels: int, num_classes: int) -> tuple[list[nn.Module], list[str]]:
    """Units and names: normalize, conv1_16, pool1, conv2_32, pool2, head."""
    units: list[nn.Module] = [
        Normalize(in_channels),
        nn.Sequential(nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(inplace=True)),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(inplace=True)),
        nn.MaxPool2d(2),
        pooled_linear_head(32, num_classes),
    ]
    return units, ["normalize", "conv1_16", "pool1", "conv2_32", "pool2", "head"]
