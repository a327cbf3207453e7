"""Parallel split learning with the paper's budget schedules (deprune, no- and high-compression).

All clients train at once against one server model. Each round every client sends one batch; the
server takes the payloads in simulated-arrival order (ties by client id), updates once per payload
and returns the gradient of each. A schedule of phases {budget, epochs} sets the number of channels
sent; between phases the filter is reset (deprune to a larger budget, prune to a smaller one) and
selectLr multiplies the learning rate by γ for the first l_k epochs of each later phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitray.schedules import epoch_plans, reset_kind

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    clients, server, get = ctx.clients, ctx.server, ctx.get
    num_channels = ctx.num_channels
    budget_now = None
    for plan in epoch_plans(cfg.schedule, cfg.train.lr):
        budget = plan.budget or num_channels
        if plan.phase_start and budget_now is not None and cfg.schedule.reset_filter:
            kind = reset_kind(budget_now, budget)
            if kind:
                get([c.call("reset_filter", kind, budget_now) for c in clients])
        budget_now = budget
        steps = get([c.call("begin_epoch", plan.epoch, plan.lr, budget) for c in clients])
        get(server.call("set_lr", plan.lr))
        ctx.begin_epoch(sum(steps))

        for step in range(max(steps)):
            active = [i for i, n in enumerate(steps) if step < n]
            # 1. Clients run their part and encode; payloads stay in Ray's object store.
            fwd = {i: clients[i].call("forward", step, num_returns=2) for i in active}
            fwd_info = dict(zip(active, get([fwd[i][1] for i in active]), strict=True))
            arrivals = ctx.uplink(fwd_info)
            # 2. The server takes the payloads in simulated-arrival order; each gradient goes
            #    straight back to its client.
            srv, bwd = {}, {}
            for i in ctx.clock.server_order(arrivals):
                srv[i] = server.call("step", fwd[i][0], i, num_returns=2)
                bwd[i] = clients[i].call("backward", srv[i][0])
            srv_info = dict(zip(active, get([srv[i][1] for i in active]), strict=True))
            bwd_info = dict(zip(active, get([bwd[i] for i in active]), strict=True))
            ctx.finish_round(plan, step, budget, fwd_info, arrivals, srv_info, bwd_info)

        ctx.evaluate(plan, budget)
