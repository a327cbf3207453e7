"""Compression-aware split learning: the Prune-Deprune module, its losses, wire codecs, Payload."""

from splitray.compression.codecs import (
    CODECS,
    bytes_per_element,
    decode,
    encode,
    is_scaled,
)
from splitray.compression.module import (
    Compressor,
    Decompressor,
    encoded_shape,
    prune_loss,
    total_loss,
)
from splitray.compression.payload import Payload, payload_nbytes

__all__ = [
    "CODECS",
    "Compressor",
    "Decompressor",
    "Payload",
    "bytes_per_element",
    "decode",
    "encode",
    "encoded_shape",
    "is_scaled",
    "payload_nbytes",
    "prune_loss",
    "total_loss",
]
