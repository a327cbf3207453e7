"""Parallel split learning with the paper's budget schedules (deprune, no- and high-compression).

All clients train at once against one server model. Each round every client with steps left sends
one batch; the round starts when the slowest client finished the last one. With clients.per_round
(or availability) each round instead draws its clients among those online (`RunContext.rounds`).
The server takes the payloads in simulated-arrival order (ties by client id), updates once per
payload and returns the gradient of each. A schedule of phases {budget, epochs} sets the number of
channels sent; between phases the filter is reset (deprune to a larger budget, prune to a smaller
one) and selectLr multiplies the learning rate by γ for the first l_k epochs of each later phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext
    from splitray.schedules import EpochPlan


def run(ctx: RunContext) -> None:
    for plan in ctx.epochs():
        train_epoch(ctx, plan)


def train_epoch(ctx: RunContext, plan: EpochPlan, shared_positions: int = 0) -> dict:
    """One epoch of rounds, then the evaluation; returns the evaluation's row (budget, test
    accuracy, ...). `shared_positions` > 0 is EPSL's gradient aggregation."""
    budget, steps = ctx.begin_epoch(plan)
    for round_ in ctx.rounds(steps):
        ctx.run_steps(plan, budget, round_.steps, shared_positions=shared_positions,
                      keep_first=round_.keep_first)
    return ctx.evaluate(plan, budget)
