"""Loss-based asynchronous split learning with FP8 payloads (Chen et al. 2021).

Rounds run as in parallel SL, but each client is in one of three states for a whole epoch:

  A  full step: send activations, receive gradients, update the client part;
  B  send activations only; the client is frozen (eval mode, no backward, no update);
  C  silent: the client sends and computes nothing; the server trains on the activations it
     kept from the client's last epoch that sent them.

After every epoch each client's mean training loss decides its next state: A moves to B once it
has spent `async_sl.min_epochs_a` epochs in A and the loss improved by less than
`async_sl.loss_threshold` over the epoch (a loss that rose keeps it in A); B moves to C after
`epochs_b` epochs, C back to A after `epochs_c` epochs, and a loss that rises by more than the
threshold sends B or C back to A. Project
choices where the paper is not public (METHODS.md section 4): the interval is an epoch, the cache
lives on the server, the schedule is config. FP8 is the codec pair `compression.codec_up:
fp8_e4m3` and `codec_down: fp8_e5m2` (per-tensor scale, sent with the payload).

The run summary compares the run's bytes and client FLOPs with what the same steps would have
cost in state A, so the paper's two headline ratios read off directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from splitray.roles import ClientRole, ServerRole
from splitray.runtime.context import ClientStep

if TYPE_CHECKING:
    from splitray.config import AsyncConfig
    from splitray.runtime.context import RunContext


@dataclass
class ClientState:
    """A client's state, how many epochs it has been in it, and its last epoch's mean loss."""

    state: str = "A"
    epochs: int = 0
    last_loss: float | None = None


def next_state(c: ClientState, loss: float, rules: AsyncConfig) -> ClientState:
    """The state for the next epoch, from this epoch's mean loss (the loss-based transitions)."""
    epochs = c.epochs + 1
    gain = None if c.last_loss is None else c.last_loss - loss
    rose = gain is not None and -gain > rules.loss_threshold
    if c.state == "A":
        if epochs >= rules.min_epochs_a and gain is not None and 0 <= gain < rules.loss_threshold:
            return ClientState("B" if rules.epochs_b else "C" if rules.epochs_c else "A", 0, loss)
    elif c.state == "B":
        if rose:
            return ClientState("A", 0, loss)
        if epochs >= rules.epochs_b:
            return ClientState("C" if rules.epochs_c else "A", 0, loss)
    elif rose or epochs >= rules.epochs_c:  # state C
        return ClientState("A", 0, loss)
    return ClientState(c.state, epochs, loss)


@dataclass
class AsyncState:
    """What the scheme carries across epochs: each client's state and the savings so far."""

    states: list[ClientState]
    bytes_sent: int = 0
    bytes_all_a: int = 0
    flops_spent: float = 0.0
    flops_all_a: float = 0.0

    def __post_init__(self) -> None:  # from a checkpoint the states come back as dicts
        self.states = [c if isinstance(c, ClientState) else ClientState(**c) for c in self.states]


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    clients, server, get = ctx.clients, ctx.server, ctx.get
    n = len(clients)
    s = ctx.keep(AsyncState([ClientState() for _ in range(n)]))
    for plan in ctx.epochs():
        budget, steps = ctx.begin_epoch(plan)
        # What this epoch's steps would cost with every client in state A, at this budget.
        for full_bytes, full_flops in ctx.each_client(
                lambda i, c: c.call(ClientRole.state_a_cost)):
            s.bytes_all_a += full_bytes
            s.flops_all_a += full_flops

        losses: dict[int, list[float]] = {i: [] for i in range(n)}
        for step in range(max(steps)):
            start_s = ctx.timeline.barrier(range(n))
            rows = ctx.run_steps(plan, budget, [ClientStep(i, step, s.states[i].state, start_s)
                                                for i, k in enumerate(steps) if step < k])
            for r in rows:
                s.bytes_sent += r["bytes_up"] + r["bytes_down"]
                s.flops_spent += r["client_flops"]
                losses[r["client_id"]].append(r["loss"])

        ctx.evaluate(plan, budget)
        for i in range(n):
            s.states[i] = next_state(s.states[i], sum(losses[i]) / len(losses[i]), cfg.async_sl)

    ctx.summary.update({
        "payload_bytes": s.bytes_sent, "payload_bytes_all_A": s.bytes_all_a,
        "communication_reduction": _reduction(s.bytes_all_a, s.bytes_sent),
        "client_flops": s.flops_spent, "client_flops_all_A": s.flops_all_a,
        "client_compute_reduction": _reduction(s.flops_all_a, s.flops_spent),
        "server_cache_bytes": get(server.call(ServerRole.cache_nbytes)),
    })


def _reduction(all_a: float, spent: float) -> float:
    """How many times less than all-A the run spent: 1 where all-A costs nothing (a client with
    nothing to train computes no FLOPs in any state)."""
    return all_a / max(spent, 1) if all_a else 1.0
