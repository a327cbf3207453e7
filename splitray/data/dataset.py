"""In-memory image dataset with cheap batch indexing and on-the-fly augmentation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CROP_PADDING_PX = 4


@dataclass(eq=False)
class ArrayDataset:
    """A whole dataset in memory: uint8 images (N, C, H, W), int64 labels; cheap batch indexing."""

    images: Tensor
    labels: Tensor
    num_classes: int

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} "
                f"with shape {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(
                f"labels must be an int64 tensor (N,), got {self.labels.dtype} "
                f"with shape {tuple(self.labels.shape)}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"images and labels differ in length: {len(self.images)} vs {len(self.labels)}"
            )
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")
        if len(self.labels) and (
            int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes
        ):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}], got range "
                f"[{int(self.labels.min())}, {int(self.labels.max())}]"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self,
        indices: np.ndarray | Tensor,
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Float32 images in [0, 1] (N, C, H, W) and int64 labels for `indices`.

        With `augment`, each image gets a random crop from its 4-px zero-padded version and a
        random horizontal flip, drawn from `generator` (so the result is deterministic given it).
        """
        idx = _as_index(indices)
        images = self.images[idx]
        if augment and len(idx):
            images = _crop_and_flip(images, generator)
        return images.to(torch.float32).div_(255.0), self.labels[idx]

    def subset(self, indices: np.ndarray | Tensor) -> ArrayDataset:
        """A new dataset holding copies of the samples at `indices`, in that order (indexing by
        a tensor of indices copies)."""
        idx = _as_index(indices)
        return ArrayDataset(self.images[idx], self.labels[idx], self.num_classes)


def class_cycle_order(order: np.ndarray, labels: np.ndarray, num_classes: int,
                      batch_size: int, epoch: int = 0) -> np.ndarray:
    """`order` rearranged so that position j of every batch holds class j mod `num_classes` while
    the shard has samples of that class left (else one of the class with the most left); within a
    class, `order`'s sequence is kept. Clients that all use it put the same class at the same
    position of their batches whichever step each is at, as EPSL's positional averaging needs
    (see algorithms/epsl.py). A batch smaller than the class count turns its classes with the
    epoch (position j holds class (j + epoch * batch_size) mod `num_classes`), so all train."""
    first = epoch * batch_size % num_classes if batch_size < num_classes else 0
    by_class = [order[labels[order] == c].tolist() for c in range(num_classes)]
    taken = [0] * num_classes
    left = [len(q) for q in by_class]
    out = np.empty_like(order)
    for k in range(len(order)):
        c = (first + k % batch_size) % num_classes
        if not left[c]:
            c = max(range(num_classes), key=left.__getitem__)
        out[k] = by_class[c][taken[c]]
        taken[c] += 1
        left[c] -= 1
    return out


@dataclass(eq=False)
class ClientShards:
    """A run's train and test sets with each client's sample indices into them."""

    train: ArrayDataset
    test: ArrayDataset
    train_parts: list[np.ndarray]
    test_parts: list[np.ndarray]

    def of(self, client_id: int) -> tuple[ArrayDataset, ArrayDataset]:
        """Client `client_id`'s training shard and test slice (copies)."""
        return (self.train.subset(self.train_parts[client_id]),
                self.test.subset(self.test_parts[client_id]))


def _as_index(indices: np.ndarray | Tensor) -> Tensor:
    idx = torch.as_tensor(np.asarray(indices) if not isinstance(indices, Tensor) else indices)
    if idx.dim() != 1 or idx.dtype == torch.bool or (idx.numel() and idx.dtype.is_floating_point):
        raise ValueError(f"indices must be a 1-D integer array, got shape {tuple(idx.shape)}")
    return idx.to(torch.long)


def _crop_and_flip(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random crop from the zero-padded images plus random horizontal flip, as one gather."""
    n, c, h, w = images.shape
    pad = CROP_PADDING_PX
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    off_y = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    off_x = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator)
    flip = torch.rand(n, 1, generator=generator) < 0.5
    rows = off_y + torch.arange(h)
    cols = off_x + torch.arange(w)
    cols = torch.where(flip, cols.flip(1), cols)
    return padded[
        torch.arange(n)[:, None, None, None],
        torch.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
