"""EPSL (Lin et al. 2024): parallel SL with last-layer gradient aggregation, in the concrete form of
METHODS.md section 6 (the paper is not public; the details below are this project's choices).

Rounds run as in parallel SL, with one cut layer for all clients. Of each batch of b samples the
first m = ceil(phi * b) positions are shared: the server computes their logits as each payload
arrives, but instead of back-propagating them per client it keeps their last-layer gradients (of
the mean loss over the batch); the other b - m positions train per client, as in parallel SL. Once
every payload of the round is in, the server averages the kept gradients over the clients and
back-propagates them once, at the positionally averaged input, with one update; the resulting
cut-layer gradient of the m positions is the same for every client and goes down as one broadcast
on the shared medium. Each client's backward waits for its own b - m gradients and the broadcast.
Server backward FLOPs and downlink bytes thus follow (1 - phi)*K*b + phi*b samples; phi = 0 is
exactly parallel SL. The cut layer and the uplink shares come from `splitray plan --objective epsl`
when network.shared says `allocation: planned`.

BatchNorm on the server: the shared and the own positions go through it as two batches, each
normalised by its own statistics (the shared ones need no autograd graph); its running statistics
learn from each client batch once (from the own positions, or at phi = 1 from the shared ones),
never from the aggregated pass, whose averaged input has about 1/K of a real batch's variance.

Averaging position by position only makes sense if a position holds alike samples on every client,
so with phi > 0 each client orders its shard so that position j of each batch holds class j mod C
while its shard has one left, turning with the epoch when a batch is smaller than C
(`train.phi_positions: by_class`, `splitray.data.class_cycle_order`;
the rule does not depend on the step, so clients drawn by `clients.per_round` at different steps of
their epochs still agree): the server averages activations and gradients of one class, and the
gradient it broadcasts is a class's, not noise. Measured (synthetic data, 3 epochs, seeds 0-2,
2026-12-06): on experiments/epsl.yaml phi = 1 scored 0.711 by class and 0.607 shuffled against phi
= 0's 0.681; on the claims' 1:10 mix at phi = 1's cut and shares (`python -m analysis.claims --row
epsl`, then its configs with --set seed=1, 2) 0.713 by class, 0.602 shuffled, phi = 0 0.757.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from splitray.algorithms import parallel_sl

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


def run(ctx: RunContext) -> None:
    shared_positions = ctx.cfg.train.shared_positions()
    for plan in ctx.epochs():
        parallel_sl.train_epoch(ctx, plan, shared_positions)
