"""The Payload: exactly what one split-learning message carries over the network."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from splitray.compression.codecs import (
    bytes_per_element,
    check_codec,
    decode,
    encode,
    is_scaled,
    wire_dtype,
)

_INT16 = np.iinfo(np.int16)
INDEX_BYTES = 2  # channel indices and labels travel as int16
SCALE_BYTES = 4  # the scale of fp8/int8 codecs travels as float32


def _to_int16(values: Tensor | np.ndarray, what: str, low: int) -> np.ndarray:
    """1-D int16 copy of integer ``values``, or ValueError when any is outside [low, int16 max]."""
    arr = values.detach().cpu().numpy() if isinstance(values, Tensor) else np.asarray(values)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{what} must be a 1-D integer array, got {arr.dtype} shape {arr.shape}")
    if arr.size and (arr.min() < low or arr.max() > _INT16.max):
        raise ValueError(
            f"{what} must lie in [{low}, {_INT16.max}] to travel as int16, "
            f"got range [{arr.min()}, {arr.max()}]"
        )
    return arr.astype(np.int16)


@dataclass
class Payload:
    """What crosses the network: the sent channels in the codec's dtype, their indices, labels,
    one scale. Built from numpy arrays so that Ray stores it zero-copy."""

    data: np.ndarray
    codec: str
    scale: float | None = None
    channel_indices: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_codec(self.codec)
        if self.data.dtype != wire_dtype(self.codec):
            raise ValueError(
                f"codec {self.codec} carries {wire_dtype(self.codec)} data, got {self.data.dtype}"
            )
        if is_scaled(self.codec) != (self.scale is not None):
            raise ValueError(f"codec {self.codec} scale must be set iff scaled, got {self.scale!r}")
        for name, arr, axis in (
            ("channel_indices", self.channel_indices, 1),
            ("labels", self.labels, 0),
        ):
            if arr is None:
                continue
            if arr.dtype != np.int16 or arr.ndim != 1:
                raise ValueError(f"{name} must be 1-D int16, got {arr.dtype} shape {arr.shape}")
            if self.data.ndim <= axis or self.data.shape[axis] != arr.size:
                raise ValueError(
                    f"{name} has {arr.size} entries but data has shape {self.data.shape}"
                )

    @property
    def nbytes(self) -> int:
        """Bytes on the wire, counted from the arrays carried (see :func:`payload_nbytes`)."""
        total = self.data.nbytes
        if self.channel_indices is not None:
            total += INDEX_BYTES * len(self.channel_indices)
        if self.labels is not None:
            total += INDEX_BYTES * len(self.labels)
        if self.scale is not None and self.data.size:  # an empty payload (EPSL, phi 1) sends none
            total += SCALE_BYTES
        return total

    @classmethod
    def from_tensor(
        cls,
        t: Tensor,
        codec: str,
        channel_indices: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> Payload:
        """Encode ``t`` with ``codec`` and attach channel indices and labels as int16."""
        check_codec(codec)
        indices = None if channel_indices is None else _to_int16(channel_indices, "indices", 0)
        label_arr = None if labels is None else _to_int16(labels, "labels", int(_INT16.min))
        data, scale = encode(t, codec)
        return cls(data=data, codec=codec, scale=scale, channel_indices=indices, labels=label_arr)

    def to_state(self) -> dict:
        """The payload as tensors and plain values, for a checkpoint."""
        def tensor(a: np.ndarray | None) -> Tensor | None:
            return None if a is None else torch.from_numpy(a.copy())

        return {"data": tensor(self.data), "codec": self.codec, "scale": self.scale,
                "channel_indices": tensor(self.channel_indices), "labels": tensor(self.labels)}

    @classmethod
    def from_state(cls, state: dict) -> Payload:
        """The payload `to_state` saved."""
        def array(t: Tensor | None) -> np.ndarray | None:
            return None if t is None else t.numpy()

        return cls(data=array(state["data"]), codec=state["codec"], scale=state["scale"],
                   channel_indices=array(state["channel_indices"]), labels=array(state["labels"]))

    def to_tensor(self) -> Tensor:
        """The data decoded to a writable float32 CPU tensor of the data's shape."""
        return decode(self.data, self.codec, self.scale, self.data.shape)

    def indices_tensor(self) -> Tensor | None:
        """Channel indices as a long tensor, or None when the payload has none."""
        if self.channel_indices is None:
            return None
        return torch.from_numpy(self.channel_indices.astype(np.int64))

    def labels_tensor(self) -> Tensor | None:
        """Labels as a long tensor, or None when the payload has none."""
        if self.labels is None:
            return None
        return torch.from_numpy(self.labels.astype(np.int64))


def payload_nbytes(
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    codec: str,
    with_indices: bool,
    with_labels: bool,
) -> int:
    """Analytical wire size of a payload in bytes:

    N*B*h*w*bytes_per_element(codec) + 2*B*[with_indices] + 2*N*[with_labels] + 4*[is_scaled(codec)]
    with N = batch_size, B = channels; indices and labels are int16, the scale float32.
    """
    for name, value in (
        ("batch_size", batch_size),
        ("channels", channels),
        ("height", height),
        ("width", width),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    n, b = batch_size, channels
    return (
        n * b * height * width * bytes_per_element(codec)
        + (INDEX_BYTES * b if with_indices else 0)
        + (INDEX_BYTES * n if with_labels else 0)
        + (SCALE_BYTES if is_scaled(codec) else 0)
    )
