"""Training schemes, one file each; each exposes `run(ctx: RunContext)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from splitray.algorithms import parallel_sl

ALGORITHMS: dict[str, Callable[[Any], None]] = {
    "parallel_sl": parallel_sl.run,
}
