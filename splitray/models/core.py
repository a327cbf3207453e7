"""The split-able model container, input normalisation, heads and weight init shared by the zoo."""

from __future__ import annotations

import operator
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
HEAD_KINDS = ("auto", "cifar", "imagenet")
# "auto" picks the CIFAR head for inputs up to this many pixels on each side.
AUTO_CIFAR_MAX_PX = 64


class Normalize(nn.Module):
    """Fixed per-channel (x - mean) / std, so data loaders hand the model floats in [0, 1].

    Defaults to CIFAR-10's statistics for 3 channels and 0.5 / 0.5 for any other count.
    """

    def __init__(
        self,
        channels: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if mean is None:
            mean = CIFAR10_MEAN if channels == 3 else (0.5,) * channels
        if std is None:
            std = CIFAR10_STD if channels == 3 else (0.5,) * channels
        if len(mean) != channels or len(std) != channels:
            raise ValueError(
                f"Normalize needs {channels} mean and std values, got {len(mean)} and {len(std)}"
            )
        if min(std) <= 0:
            raise ValueError(f"Normalize std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(-1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class SplittableModel(nn.Module):
    """A model stored as a flat sequence of named units; forward applies them in order.

    Any prefix of `units` can run on a client and the rest on the server (see `split`).
    """

    def __init__(self, units: Sequence[nn.Module], unit_names: Sequence[str]) -> None:
        super().__init__()
        if len(units) != len(unit_names):
            raise ValueError(f"got {len(units)} units but {len(unit_names)} unit names")
        if len(units) < 2:
            raise ValueError(f"a splittable model needs at least 2 units, got {len(units)}")
        if len(set(unit_names)) != len(unit_names):
            raise ValueError(f"unit names must be unique, got {list(unit_names)}")
        for name in unit_names:
            if not name or "." in name:
                raise ValueError(f"unit name {name!r} must be non-empty and contain no '.'")
        self.units = nn.ModuleList(units)
        self.unit_names = list(unit_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = unit(x)
        return x


def split(model: SplittableModel, n: int) -> tuple[nn.Module, nn.Module]:
    """Cut `model` after its first `n` units into (client, server) parts sharing the same modules.

    Both parts are `nn.Sequential`s keyed by unit name, so a unit's state-dict keys do not depend
    on `n`; `n = 0` gives an empty client that returns its input (the raw input is sent).
    """
    last = len(model.units) - 1
    try:
        index = None if isinstance(n, bool) else operator.index(n)
    except TypeError:
        index = None
    if index is None or not 0 <= index <= last:
        raise ValueError(f"split point n={n!r} is out of range; valid: integers 0..{last}")
    named = list(zip(model.unit_names, model.units, strict=True))
    return nn.Sequential(OrderedDict(named[:index])), nn.Sequential(OrderedDict(named[index:]))


def resolve_head(head: str, input_shape: tuple[int, int, int]) -> str:
    """Return "cifar" or "imagenet": `head` itself, or for "auto" the one suiting the input size."""
    if head not in HEAD_KINDS:
        raise ValueError(f"head={head!r} is not supported; allowed: {', '.join(HEAD_KINDS)}")
    if head != "auto":
        return head
    _, height, width = input_shape
    return "cifar" if max(height, width) <= AUTO_CIFAR_MAX_PX else "imagenet"


def pooled_linear_head(channels: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Global average pool, flatten and one linear layer (optionally after dropout) to logits."""
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(channels, num_classes))
    return nn.Sequential(*layers)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BatchNorm, N(0, 0.01) linears, zero biases (as torchvision)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            nn.init.zeros_(module.bias)
