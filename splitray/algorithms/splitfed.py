"""SplitFed (Thapa et al.): parallel split learning plus FedAvg of the client parts.

Rounds run as in parallel SL. After every `splitfed.every_rounds`-th round (or the last round of
every epoch when unset) the server averages the client parts and compressors of the clients that
trained since the last average, weighted by their steps in that window. Each of them uploads its
weights right after its last step before the average (its row carries `bytes_model_up`); the
average waits for the slowest upload (the next round starts after it); every client downloads
the average before its next step (`bytes_model_down`). Each client evaluates with its own client
part, identical across clients right after an average; after the run's last average nothing is
sent down.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from splitray.roles import ClientRole, ServerRole
from splitray.runtime.context import ClientStep

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


def fedavg(weights: list[dict[str, np.ndarray]], counts: list[int]) -> dict[str, np.ndarray]:
    """Weighted average of every floating array over the copies that hold its key (all of them
    for SplitFed; for EdgeSplit's different split points, layer-wise FedAvg); integer buffers
    (BN step counts) take the max."""
    out = {}
    for name in dict.fromkeys(k for w in weights for k in w):
        held = [(w[name], c) for w, c in zip(weights, counts, strict=True) if name in w]
        arrays = [a for a, _ in held]
        if np.issubdtype(arrays[0].dtype, np.floating):
            total = sum(c for _, c in held)
            out[name] = sum((c / total) * a.astype(np.float64) for a, c in held
                            ).astype(arrays[0].dtype)
        else:
            out[name] = np.max(arrays, axis=0)
    return out


def _averages(first: int, end: int, period: int) -> bool:
    """Whether an average follows one of the global rounds first..end-1."""
    return any((r + 1) % period == 0 for r in range(first, end))


@dataclass
class SplitFedState:
    trained: list[int]          # each client's steps since the last average
    needs_average: list[bool]   # whether it downloads the average before its next step
    round_index: int = 0


def run(ctx: RunContext) -> None:
    train(ctx, ctx.cfg.splitfed.every_rounds, server_parts=False)


def train(ctx: RunContext, every_rounds: int | None, server_parts: bool) -> None:
    """Parallel SL rounds with an average every `every_rounds` rounds (None: each epoch's last).
    `server_parts`: each client's model is its client part plus its own server part (EdgeSplit),
    and the average is taken over those whole models, layer by layer."""
    clients, get = ctx.clients, ctx.get
    n = len(clients)
    model_nbytes = get([c.call(ClientRole.weights_nbytes) for c in clients])
    state = ctx.keep(SplitFedState(trained=[0] * n, needs_average=[False] * n))
    for plan in ctx.epochs():
        budget, steps = ctx.begin_epoch(plan)
        rounds = max(steps)
        period = every_rounds or rounds
        for step in range(rounds):
            r = state.round_index
            # A client's next step is the next round, or the first round of the next epoch.
            next_round = {i: r + 1 if step + 1 < k else r + rounds - step
                          for i, k in enumerate(steps) if step < k}
            start_s = ctx.timeline.barrier(range(n))  # the round (and an average) waits for all
            ctx.run_steps(plan, budget, [ClientStep(
                i, step, ready_s=start_s,
                bytes_model_down=model_nbytes[i] if state.needs_average[i] else 0,
                bytes_model_up=model_nbytes[i] if _averages(r, nxt, period) else 0)
                for i, nxt in next_round.items()])
            for i in next_round:
                state.trained[i] += 1
                state.needs_average[i] = False
            if (r + 1) % period == 0:
                ids = [i for i in range(n) if state.trained[i]]
                weights = get([clients[i].call(ClientRole.get_weights) for i in ids])
                if server_parts:  # the server side of each model joins its client side
                    server_side = get([ctx.server.call(ServerRole.get_weights, i) for i in ids])
                    weights = [{**w, **s} for w, s in zip(weights, server_side, strict=True)]
                average = fedavg(weights, [state.trained[i] for i in ids])
                get([c.call(ClientRole.set_weights, average) for c in clients])
                if server_parts:
                    get([ctx.server.call(ServerRole.set_weights, i, average) for i in range(n)])
                state.trained = [0] * n
                state.needs_average = [True] * n
            state.round_index += 1

        ctx.evaluate(plan, budget)
