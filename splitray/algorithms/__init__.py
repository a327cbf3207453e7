"""Training schemes, one file each; each exposes `run(ctx: RunContext)`.

`splitray.config.ALGORITHM_NAMES` names them for config validation, which must not import them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from splitray.algorithms import async_sl, edgesplit, epsl, parallel_sl, prune, splitfed, vanilla_sl

ALGORITHMS: dict[str, Callable[[Any], None]] = {
    "parallel_sl": parallel_sl.run,
    "vanilla_sl": vanilla_sl.run,
    "splitfed": splitfed.run,
    "async_sl": async_sl.run,
    "edgesplit": edgesplit.run,
    "epsl": epsl.run,
    "prune": prune.run,
}
