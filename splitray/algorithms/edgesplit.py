"""EdgeSplit (Zhang et al., ICNC 2024), in the concrete form of METHODS.md section 5.

Heterogeneous devices each train to their own split point: weaker devices run fewer layers. Unless
the config gives clients.split_layers, `splitray.planning` chooses each client's split point and
its fixed share of the shared access point (alternating: best split per client at fixed shares,
then shares that make every client finish the round together) before the run starts; the run's
config.yaml holds the plan. Rounds run as in parallel SL, each client against its own copy of the
server side (layers s_i+1..L). Every `edgesplit.every_rounds` rounds (default: each epoch) every
client's whole model (its client part plus its server copy) is averaged layer by layer over all
the copies that hold each layer: SplitFed's loop, with the server side joining the average. In
the rounds between, every `edgesplit.server_every_rounds` rounds (default: each) the server
averages its copies among themselves, layer by layer over the clients that trained in the round
(`ServerRole.average_parts`), so the server side stays one model, as parallel SL's is. That
average moves no bytes and takes no simulated time; METHODS.md's whole average each round would
send every client part up and down each round instead. `every_rounds: 0` never averages the
client parts (they stay apart, as parallel SL's do), so no weights cross the network at all.
Averaged server copies update their BatchNorm running statistics with momentum 1 - (1 - m)^K
(K copies hold the layer, m its own momentum), so their average tracks the batches as one
shared server part's would; with m itself, eight compressed copies at split 5 tested at 14 %
after two epochs on stale statistics (53 % with this momentum, 61 % on each test batch's own
statistics). The n-th batch of a copy weighs at least 1/n: a copy alone at its split point
(K = 1) sees one batch a round, and a compressed client alone at split 5 tested at 11 % on its
decompressor's stale statistics (55-59 % with this start, 3 seeds).
The paper is not public: the planner's cost model, the averaging periods, the layer-wise
averages and the BatchNorm momentum are this project's choices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitray.algorithms import splitfed
from splitray.roles import ServerRole

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


def run(ctx: RunContext) -> None:
    ctx.summary["server_parts_nbytes"] = ctx.get(ctx.server.call(ServerRole.parts_nbytes))
    splitfed.train(ctx, ctx.cfg.edgesplit.every_rounds, server_parts=True,
                   server_every_rounds=ctx.cfg.edgesplit.server_every_rounds)
