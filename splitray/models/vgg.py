"""VGG 11/13/16 with and without BatchNorm: one unit per conv block and one per max-pool."""

from __future__ import annotations

from torch import nn

from .core import Normalize, pooled_linear_head

POOL = "M"
VGG_LAYOUTS: dict[str, list[int | str]] = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg13": [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [
        64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL,
        512, 512, 512, POOL, 512, 512, 512, POOL,
    ],
}
# Five 2x2 max-pools must leave at least a 1x1 map.
VGG_MIN_INPUT_PX = 32


def vgg_imagenet_head(channels: int, num_classes: int) -> nn.Sequential:
    """torchvision's VGG classifier: 7x7 average pool, then 4096-4096-num_classes with dropout."""
    return nn.Sequential(
        nn.AdaptiveAvgPool2d(7),
        nn.Flatten(),
        nn.Linear(channels * 7 * 7, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, num_classes),
    )


def vgg_units(
    depth_name: str, batch_norm: bool, in_channels: int, num_classes: int, head: str
) -> tuple[list[nn.Module], list[str]]:
    """Units and names of a VGG: normalize, conv{i}_{channels} blocks, pool{j}, head."""
    units: list[nn.Module] = [Normalize(in_channels)]
    names = ["normalize"]
    channels = in_channels
    conv_index = pool_index = 0
    for item in VGG_LAYOUTS[depth_name]:
        if item == POOL:
            pool_index += 1
            units.append(nn.MaxPool2d(kernel_size=2, stride=2))
            names.append(f"pool{pool_index}")
            continue
        conv_index += 1
        out_channels = int(item)
        block: list[nn.Module] = [nn.Conv2d(channels, out_channels, 3, padding=1)]
        if batch_norm:
            block.append(nn.BatchNorm2d(out_channels))
        block.append(nn.ReLU(inplace=True))
        units.append(nn.Sequential(*block))
        names.append(f"conv{conv_index}_{out_channels}")
        channels = out_channels
    if head == "cifar":
        units.append(pooled_linear_head(channels, num_classes))
    else:
        units.append(vgg_imagenet_head(channels, num_classes))
    names.append("head")
    return units, names
