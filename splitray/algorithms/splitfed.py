"""SplitFed (Thapa et al.): parallel split learning plus FedAvg of the client parts.

Rounds run as in parallel SL. Every `splitfed.every_rounds` rounds (or at the end of every epoch
when unset) each client of the round uploads its client part and compressor; the server waits for
the slowest upload, averages the weights (weighted by each client's steps per epoch) and every
client downloads the average before its next step. Uploads and downloads are bytes on the links
and time on the timeline. After the last averaging of the run nothing is sent down again: the
server holds the final client part, and the evaluation uses it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from splitray.roles import ClientRole
from splitray.runtime.context import ClientStep
from splitray.schedules import epoch_plans

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


def fedavg(weights: list[dict[str, np.ndarray]], counts: list[int]) -> dict[str, np.ndarray]:
    """Weighted average of every floating array; integer buffers (BN step counts) take the max."""
    share = np.asarray(counts, dtype=np.float64) / sum(counts)
    out = {}
    for name, first in weights[0].items():
        arrays = [w[name] for w in weights]
        if np.issubdtype(first.dtype, np.floating):
            out[name] = sum(s * a.astype(np.float64) for s, a in zip(share, arrays, strict=True)
                            ).astype(first.dtype)
        else:
            out[name] = np.max(arrays, axis=0)
    return out


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    clients, get = ctx.clients, ctx.get
    n = len(clients)
    first = get(clients[0].call(ClientRole.get_weights))
    model_nbytes = int(sum(a.nbytes for a in first.values()))
    every = cfg.splitfed.every_rounds
    waiting_for_average: set[int] = set()  # clients that download the average before computing
    rounds_done = 0
    for plan in epoch_plans(cfg.schedule, cfg.train.lr):
        budget, steps = ctx.begin_epoch(plan)

        for step in range(max(steps)):
            active = [i for i, k in enumerate(steps) if step < k]
            rounds_done += 1
            average = (rounds_done % every == 0) if every else step == max(steps) - 1
            start_s = ctx.timeline.barrier(range(n))  # the round (and the average) waits for all
            ctx.run_steps(plan, budget, [ClientStep(
                i, step, ready_s=start_s,
                bytes_model_down=model_nbytes if i in waiting_for_average else 0,
                bytes_model_up=model_nbytes if average else 0) for i in active])
            waiting_for_average -= set(active)
            if average:
                weights = get([c.call(ClientRole.get_weights) for c in clients])
                avg = fedavg(weights, steps)
                get([c.call(ClientRole.set_weights, avg) for c in clients])
                waiting_for_average = set(range(n))

        ctx.evaluate(plan, budget)
