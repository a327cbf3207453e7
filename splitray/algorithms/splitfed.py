"""SplitFed (Thapa et al.): parallel split learning plus FedAvg of the client parts.

Rounds run as in parallel SL. After every `splitfed.every_rounds`-th round (or the last round of
every epoch when unset) the server averages the client parts and compressors of the clients that
trained since the last average, weighted by their steps in that window. Each of them uploads its
weights right after its last step before the average (its row carries `bytes_model_up`); the
average waits for the slowest upload (the next round starts after it); every client downloads
the average before its next step (`bytes_model_down`). Each client evaluates with its own client
part, identical across clients right after an average; after the run's last average nothing is
sent down. With clients.per_round the rounds draw their clients (`RunContext.rounds`); a client's
weights join an average when it takes part in the round the average closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from splitray.roles import ClientRole, ServerRole, fedavg

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


def _averages(first: int, end: int, period: int) -> bool:
    """Whether an average follows one of the global rounds first..end-1 (period 0: never)."""
    return period > 0 and any((r + 1) % period == 0 for r in range(first, end))


@dataclass
class SplitFedState:
    trained: list[int]          # each client's steps since the last average
    needs_average: list[bool]   # whether it downloads the average before its next step
    round_index: int = 0
    # EdgeSplit: the clients whose server copy trained since the server's last average
    server_trained: list[int] = field(default_factory=list)


def run(ctx: RunContext) -> None:
    train(ctx, ctx.cfg.splitfed.every_rounds, server_parts=False)


def train(ctx: RunContext, every_rounds: int | None, server_parts: bool,
          server_every_rounds: int | None = None) -> None:
    """Parallel SL rounds with an average every `every_rounds` rounds (None: each epoch's last;
    0: never, EdgeSplit only).
    `server_parts`: each client's model is its client part plus its own server part (EdgeSplit),
    and the average is taken over those whole models, layer by layer; in the rounds between, every
    `server_every_rounds`-th round averages the server parts (`ServerRole.average_parts`)."""
    clients, get = ctx.clients, ctx.get
    n = len(clients)
    model_nbytes = ctx.each_client(lambda i, c: c.call(ClientRole.weights_nbytes))
    state = ctx.keep(SplitFedState(trained=[0] * n, needs_average=[False] * n))
    for plan in ctx.epochs():
        budget, steps = ctx.begin_epoch(plan)
        rounds = ctx.round_count(steps)
        period = rounds if every_rounds is None else every_rounds  # 0: no whole average
        for k, round_ in enumerate(ctx.rounds(steps)):
            r = state.round_index
            # The round of a client's next step: the next one, or the next epoch's first; a
            # sampled client's is unknown, so it uploads only when an average closes this round
            # (weights it trained before and did not upload stay out of that average).
            next_round = {s.client_id: r + 1 if ctx.sampled or s.step + 1 < steps[s.client_id]
                          else r + rounds - k for s in round_.steps}
            planned_down = {s.client_id: model_nbytes[s.client_id]
                            if state.needs_average[s.client_id] else 0 for s in round_.steps}
            rows = ctx.run_steps(plan, budget, [replace(
                s, bytes_model_down=planned_down[s.client_id],
                bytes_model_up=model_nbytes[s.client_id] if _averages(r, next_round[s.client_id], period)
                else 0) for s in round_.steps], keep_first=round_.keep_first)
            uploaded = set()
            for row in rows:
                i = row["client_id"]
                # The average came down (its bytes all left, and none still in the link's
                # latency when the client went offline).
                if row["bytes_model_down"] == planned_down[i] and row["cut"] != "model_down":
                    state.needs_average[i] = False
                if not row["dropped"]:
                    state.trained[i] += 1
                    uploaded.add(i)
            # A copy the server trained stays trained, whatever became of its step afterwards
            # (as parallel SL's server update stands).
            served = {row["client_id"] for row in rows if row["batch_size"]}
            state.server_trained = sorted({*state.server_trained, *served})
            if _averages(r, r + 1, period):
                ids = [i for i in range(n) if state.trained[i]
                       and (not ctx.sampled or i in uploaded)]
                if server_parts and not set(state.server_trained) <= set(ids):
                    # Copies the server trained that the average leaves out (a step dropped
                    # after the server's update, a client not sampled this round) join their
                    # layers' copies first, so their training stands.
                    get(ctx.server.call(ServerRole.average_parts, state.server_trained))
                weights = get([clients[i].call(ClientRole.get_weights) for i in ids])
                if server_parts:  # the server side of each model joins its client side
                    server_side = get([ctx.server.call(ServerRole.get_weights, i) for i in ids])
                    weights = [{**w, **s} for w, s in zip(weights, server_side, strict=True)]
                if ids:
                    average = ctx.peers.share(fedavg(weights, [state.trained[i] for i in ids]))
                    ctx.each_client(lambda i, c, w=average: c.call(ClientRole.set_weights, w))
                    if server_parts:
                        get([ctx.server.call(ServerRole.set_weights, i, average)
                             for i in range(n)])
                    state.needs_average = [True] * n
                state.trained = [0] * n
                state.server_trained = []
            elif (server_every_rounds and (r + 1) % server_every_rounds == 0
                  and state.server_trained):
                # Every copy trained since the last average, sampled this round or not: the
                # server holds them all in its memory.
                get(ctx.server.call(ServerRole.average_parts, state.server_trained))
                state.server_trained = []
            state.round_index += 1

        ctx.evaluate(plan, budget)
