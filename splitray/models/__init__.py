"""Split-able model zoo: models as flat unit lists, `split(model, n)` and per-split costs."""

from .core import Normalize, SplittableModel, split
from .flops import SplitPoint, format_split_points_table, split_points
from .zoo import MODEL_NAMES, build_model, min_input_px

__all__ = [
    "MODEL_NAMES",
    "Normalize",
    "SplitPoint",
    "SplittableModel",
    "build_model",
    "format_split_points_table",
    "min_input_px",
    "split",
    "split_points",
]
