"""Datasets held in memory as uint8 tensors, and partitioners that split them among clients."""

from .dataset import ArrayDataset, ClientShards, class_cycle_order
from .loaders import (
    DATASET_NAMES,
    DataFileError,
    DownloadError,
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
    "class_cycle_order",
    "DataFileError",
    "DownloadError",
    "SampleCountError",
    "load_dataset",
    "partition",
    "resolve_data_root",
]
