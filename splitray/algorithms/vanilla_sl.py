"""Vanilla split learning (Gupta & Raskar): one client at a time, the client part handed on.

Clients take turns in a configured order (`vanilla.order`: sequential or seeded random, per
epoch); a turn is the client's whole shard (`vanilla.handoff: epoch`) or one batch (`batch`).
After its turn a client uploads its client part (and compressor) to the server, and the next
client downloads it before it computes: those weights are bytes on the links and time on the
timeline (`bytes_model_up`/`bytes_model_down`). A client handing the weights to itself sends
nothing. The server part is one model trained by every client in turn; each client keeps its own
optimizer state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from splitray.roles import ClientRole
from splitray.runtime.context import ClientStep

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


@dataclass
class VanillaState:
    holder: int | None = None  # the client holding the latest client part


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    clients, get = ctx.clients, ctx.get
    n = len(clients)
    rng = np.random.default_rng(cfg.seed)
    orders = [rng.permutation(n).tolist() if cfg.vanilla.order == "random" else list(range(n))
              for _ in range(cfg.total_epochs)]
    model_nbytes = get(clients[0].call(ClientRole.weights_nbytes))

    # Every client starts from the same initial weights (built from the run seed).
    state = ctx.keep(VanillaState())
    for plan in ctx.epochs():
        e = plan.epoch
        budget, steps = ctx.begin_epoch(plan)

        if cfg.vanilla.handoff == "epoch":
            turns = [[(i, s) for s in range(steps[i])] for i in orders[e]]
        else:
            turns = [[(i, s)] for s in range(max(steps)) for i in orders[e] if s < steps[i]]
        following = [t[0][0] for t in turns[1:]] + [orders[e + 1][0] if e + 1 < len(orders)
                                                    else None]
        for turn, next_client in zip(turns, following, strict=True):
            client = turn[0][0]
            receives = state.holder is not None and state.holder != client
            if receives:
                get(clients[client].call(ClientRole.set_weights,
                                         clients[state.holder].call(ClientRole.get_weights)))
            hands_on = next_client is not None and next_client != client
            for k, (i, s) in enumerate(turn):
                ctx.run_steps(plan, budget, [ClientStep(
                    i, s, ready_s=ctx.timeline.now_s,
                    bytes_model_down=model_nbytes if receives and k == 0 else 0,
                    bytes_model_up=model_nbytes if hands_on and k == len(turn) - 1 else 0)])
            state.holder = client

        # The test set is encoded with the latest client part (evaluation is off the timeline);
        # the holder loads its own weights, unchanged.
        latest = clients[state.holder].call(ClientRole.get_weights)
        ctx.each_client(lambda i, c, w=latest: c.call(ClientRole.set_weights, w))
        ctx.evaluate(plan, budget)
