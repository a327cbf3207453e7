"""Datasets held in memory as uint8 tensors, and partitioners that split them among clients."""

from .dataset import ArrayDataset, ClientShards
from .loaders import (
    DATASET_NAMES,
    DataFileError,
    SampleCountError,
    load_dataset,
    resolve_data_root,
)
from .partition import PARTITION_SCHEMES, partition

__all__ = [
    "DATASET_NAMES",
    "PARTITION_SCHEMES",
    "ArrayDataset",
    "ClientShards",
    "DataFileError",
    "SampleCountError",
    "load_dataset",
    "partition",
    "resolve_data_root",
]
