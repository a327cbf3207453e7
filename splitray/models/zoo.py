"""`build_model`: every model in the zoo by name, as a SplittableModel."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .core import SplittableModel, init_weights, resolve_head
from .mobilenet import MOBILENET_MIN_INPUT_PX, mobilenet_v2_units
from .resnet import RESNET_MIN_INPUT_PX, resnet18_units
from .tiny import TINY_MIN_INPUT_PX, tiny_cnn_units
from .vgg import VGG_MIN_INPUT_PX, vgg_units

MODEL_NAMES: tuple[str, ...] = (
    "tiny_cnn",
    "vgg11",
    "vgg11_bn",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "resnet18_cifar",
    "resnet18_imagenet",
    "mobilenet_v2",
)


def min_input_px(name: str) -> int:
    """The smallest image height and width `name` accepts."""
    if name == "tiny_cnn":
        return TINY_MIN_INPUT_PX
    if name.startswith("vgg"):
        return VGG_MIN_INPUT_PX
    if name.startswith("resnet18_"):
        return RESNET_MIN_INPUT_PX[name.removeprefix("resnet18_")]
    return MOBILENET_MIN_INPUT_PX


def check_input_shape(input_shape: Sequence[int]) -> tuple[int, int, int]:
    """Return `input_shape` as a (C, H, W) tuple of positive ints, or raise ValueError."""
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise ValueError(f"input_shape={input_shape!r} must be 3 positive ints (C, H, W)")
    return shape  # type: ignore[return-value]


def build_model(
    name: str,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    head: str = "auto",
) -> SplittableModel:
    """Build zoo model `name` for inputs of `input_shape` (C, H, W) in [0, 1].

    `head` is "cifar" (global pool + linear), "imagenet" (torchvision-style) or "auto" (cifar for
    inputs up to 64 px); it changes only VGG and MobileNetV2 (dropout), as the ResNet-18 stem is
    chosen by name. Weights come from torch's global RNG, so seed torch first.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} must be a positive int")
    channels, height, width = check_input_shape(input_shape)
    head_kind = resolve_head(head, (channels, height, width))
    min_px = min_input_px(name)
    if min(height, width) < min_px:
        raise ValueError(
            f"input_shape={tuple(input_shape)} is too small for {name}; "
            f"height and width must be >= {min_px}"
        )

    units: list[nn.Module]
    if name == "tiny_cnn":
        units, names = tiny_cnn_units(channels, num_classes)
    elif name.startswith("vgg"):
        depth_name, _, norm = name.partition("_")
        units, names = vgg_units(depth_name, norm == "bn", channels, num_classes, head_kind)
    elif name.startswith("resnet18_"):
        units, names = resnet18_units(name.removeprefix("resnet18_"), channels, num_classes)
    else:
        units, names = mobilenet_v2_units(channels, max(height, width), num_classes, head_kind)
    model = SplittableModel(units, names)
    init_weights(model)
    return model
