"""Synthetic, learnable image classification data: noisy, shifted copies of per-class prototypes."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .dataset import ArrayDataset

PROTOTYPE_GRID = 4  # each prototype is a random GRID x GRID pattern per channel, upsampled smoothly
PROTOTYPE_STD = 55.0  # pixel-value spread of the prototypes around mid-grey
NOISE_STD = 100.0  # per-pixel Gaussian noise
BRIGHTNESS_STD = 20.0  # per-sample global brightness offset
DISTRACTOR_MAX_WEIGHT = 0.5  # a sample blends in another class's prototype with weight U(0, this)
SHIFT_FRACTION = 4  # samples are shifted by up to image_size // SHIFT_FRACTION pixels each way
_CHUNK = 4096
_PROTOTYPE_STREAM, _TRAIN_STREAM, _TEST_STREAM = 0, 1, 2


def make_synthetic(
    num_samples: int,
    *,
    train: bool,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> ArrayDataset:
    """Balanced synthetic dataset, deterministic by `seed`.

    Each class has a fixed smooth random prototype drawn from `seed` alone, so the train and test
    splits of one seed share them. A sample is its class prototype shifted by a few pixels, blended
    with a weaker prototype of another class, plus a brightness offset and per-pixel noise, clipped
    to uint8; its own prototype always dominates, so the label is recoverable but not trivially.
    Train and test draw samples from different random streams.
    """
    for name, value in (
        ("num_samples", num_samples),
        ("image_size", image_size),
        ("channels", channels),
        ("num_classes", num_classes),
    ):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"synthetic {name} must be an integer >= 1, got {value!r}")
    shift_px = image_size // SHIFT_FRACTION
    window = image_size + 2 * shift_px
    proto_rng = np.random.default_rng([seed, _PROTOTYPE_STREAM])
    grid = torch.from_numpy(
        proto_rng.standard_normal((num_classes, channels, PROTOTYPE_GRID, PROTOTYPE_GRID))
    ).to(torch.float32)
    prototypes = 128.0 + PROTOTYPE_STD * F.interpolate(
        grid, size=(window, window), mode="bicubic", align_corners=True
    )
    centred = prototypes[:, :, shift_px : shift_px + image_size, shift_px : shift_px + image_size]

    rng = np.random.default_rng([seed, _TRAIN_STREAM if train else _TEST_STREAM])
    labels = rng.permutation(np.arange(num_samples) % num_classes)
    offsets = rng.integers(0, 2 * shift_px + 1, size=(num_samples, 2))
    brightness = rng.normal(0.0, BRIGHTNESS_STD, size=num_samples).astype(np.float32)
    distractor = (labels + rng.integers(1, max(num_classes, 2), size=num_samples)) % num_classes
    weight = rng.uniform(0.0, DISTRACTOR_MAX_WEIGHT, size=num_samples).astype(np.float32)

    images = torch.empty((num_samples, channels, image_size, image_size), dtype=torch.uint8)
    span = torch.arange(image_size)
    for start in range(0, num_samples, _CHUNK):
        part = slice(start, min(start + _CHUNK, num_samples))
        rows = torch.from_numpy(offsets[part, :1]) + span
        cols = torch.from_numpy(offsets[part, 1:]) + span
        own = prototypes[
            torch.from_numpy(labels[part])[:, None, None, None],
            torch.arange(channels)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        other = centred[torch.from_numpy(distractor[part])]
        w = torch.from_numpy(weight[part])[:, None, None, None]
        shade = torch.from_numpy(brightness[part])[:, None, None, None]
        noise = torch.from_numpy(rng.standard_normal(own.shape, dtype=np.float32))
        pixels = (1 - w) * own + w * other + shade + NOISE_STD * noise
        images[part] = pixels.round_().clamp_(0, 255).to(torch.uint8)
    return ArrayDataset(images, torch.from_numpy(labels).to(torch.int64), num_classes)
