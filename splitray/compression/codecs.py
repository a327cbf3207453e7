"""Wire codecs: how a float tensor becomes the bytes that cross the network, and back.

fp32/fp16/bf16 are plain casts. fp8_e4m3/fp8_e5m2 (Chen et al. 2021) and int8 are scaled by one
per-tensor float32 so that the tensor's max-abs maps onto the format's largest finite value.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

CODECS: tuple[str, ...] = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8")

# codec -> (torch dtype cast to, numpy dtype of the wire array)
_WIRE: dict[str, tuple[torch.dtype, np.dtype]] = {
    "fp32": (torch.float32, np.dtype(np.float32)),
    "fp16": (torch.float16, np.dtype(np.float16)),
    "bf16": (torch.bfloat16, np.dtype(np.uint16)),
    "fp8_e4m3": (torch.float8_e4m3fn, np.dtype(np.uint8)),
    "fp8_e5m2": (torch.float8_e5m2, np.dtype(np.uint8)),
    "int8": (torch.int8, np.dtype(np.int8)),
}
_INT8_MAX = 127.0


def _fp8_table(dtype: torch.dtype) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an fp8 type (decoding is a table lookup)."""
    bits = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    return bits.view(dtype).to(torch.float32).numpy()


_FP8_TABLES: dict[str, np.ndarray] = {
    "fp8_e4m3": _fp8_table(torch.float8_e4m3fn),
    "fp8_e5m2": _fp8_table(torch.float8_e5m2),
}


def check_codec(codec: str) -> None:
    """Raise ValueError unless ``codec`` is one of CODECS."""
    if codec not in _WIRE:
        raise ValueError(f"unknown codec {codec!r}; allowed: {CODECS}")


def bytes_per_element(codec: str) -> int:
    """Bytes one tensor element occupies on the wire."""
    check_codec(codec)
    return _WIRE[codec][1].itemsize


def wire_dtype(codec: str) -> np.dtype:
    """numpy dtype of the array :func:`encode` returns for ``codec``."""
    check_codec(codec)
    return _WIRE[codec][1]


def is_scaled(codec: str) -> bool:
    """True for codecs that carry one float32 scale (fp8_* and int8)."""
    check_codec(codec)
    return codec.startswith("fp8") or codec == "int8"


def _max_finite(codec: str) -> float:
    dtype = _WIRE[codec][0]
    return _INT8_MAX if codec == "int8" else float(torch.finfo(dtype).max)


_SMALLEST_NORMAL = float(np.finfo(np.float32).tiny)


def encode(t: Tensor, codec: str) -> tuple[np.ndarray, float | None]:
    """Cast ``t`` to the codec's wire format: (C-contiguous numpy array, scale or None).

    Scaled codecs divide by scale = amax / max_finite (amax 0 -> scale 1); decoding multiplies back.
    The cast happens on ``t``'s device, so only wire-sized data is copied to the host.
    """
    check_codec(codec)
    torch_dtype = _WIRE[codec][0]
    t = t.detach()
    scale: float | None = None
    if is_scaled(codec):
        amax = float(t.abs().max()) if t.numel() else 0.0
        if not math.isfinite(amax):
            raise ValueError(f"codec {codec} needs a finite tensor, got max-abs {amax}")
        max_finite = _max_finite(codec)
        # The scale travels as float32; use its float32 value here too so decode inverts exactly.
        # At least float32's smallest normal number: a max-abs below ~1e-38 times the format's
        # largest value would round the scale to a subnormal, or to 0, which decodes to NaN.
        scale = (max(float(np.float32(amax / max_finite)), _SMALLEST_NORMAL) if amax > 0
                 else 1.0)
        scaled = (t.to(torch.float32) / scale).clamp_(-max_finite, max_finite)
        if codec == "int8":
            scaled = scaled.round_()
        wire = scaled.to(torch_dtype)
    else:
        wire = t.to(torch_dtype)
    if codec in ("bf16", "fp8_e4m3", "fp8_e5m2"):
        wire = wire.view(torch.uint16 if codec == "bf16" else torch.uint8)
    wire = wire.cpu().contiguous()
    if wire.data_ptr() == t.data_ptr():
        # fp32 on the CPU casts to itself; copy so the payload never aliases a live tensor.
        wire = wire.clone()
    return wire.numpy(), scale


def decode(
    arr: np.ndarray, codec: str, scale: float | None, shape: tuple[int, ...] | None = None
) -> Tensor:
    """Turn a wire array back into a writable float32 CPU tensor, reshaped to ``shape`` if given."""
    check_codec(codec)
    np_dtype = _WIRE[codec][1]
    if arr.dtype != np_dtype:
        raise ValueError(f"codec {codec} expects a {np_dtype} array, got {arr.dtype}")
    if is_scaled(codec) != (scale is not None):
        raise ValueError(
            f"codec {codec} {'needs' if is_scaled(codec) else 'takes no'} scale, got {scale!r}"
        )
    if shape is not None and math.prod(shape) != arr.size:
        raise ValueError(f"shape {shape} does not fit an array of {arr.size} elements")
    # Every branch builds a new array: the input may be a read-only view (Ray's object store).
    if codec == "fp32":
        out = np.array(arr, dtype=np.float32, copy=True)
    elif codec == "fp16":
        out = arr.astype(np.float32)
    elif codec == "bf16":
        # bfloat16 is the upper half of a float32.
        out = (arr.astype(np.uint32) << 16).view(np.float32)
    elif codec == "int8":
        out = arr.astype(np.float32)
        out *= np.float32(scale)
    else:
        out = _FP8_TABLES[codec][arr]
        out *= np.float32(scale)
    # ascontiguousarray makes a 0-d array 1-d: the shape is set again from the wire's.
    return torch.from_numpy(np.ascontiguousarray(out)).reshape(
        shape if shape is not None else arr.shape)
