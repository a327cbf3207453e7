"""Prune (Prune-Deprune, Algorithm 3): train once at the largest budget, then derive one model per
smaller budget by transfer learning; the run's output is the model set Θ = {M_B}.

The schedule's phases go from the largest budget down (e.g. all 128 channels for 30 epochs, then
32 and 4 for 10 each). Each phase trains as parallel SL does; between phases every parameter
carries over and the filter is reset as the paper's prune reset says (the channels still on stay
on, the others restart low). At the end of each phase the run writes that budget's model M_B
(every client part and compressor, the server side) to RUN_DIR/models/budget-B.pt, as tensors
that `torch.load(..., weights_only=True)` reads; the manifest's summary lists Θ with each
model's test accuracy. `splitray infer RUN_DIR` serves Θ: each client gets the budget its link
can carry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from splitray.algorithms import parallel_sl

if TYPE_CHECKING:
    from splitray.runtime.context import RunContext


@dataclass
class PruneState:
    models: list[dict] = field(default_factory=list)  # Θ so far: budget, path, epoch, accuracy


def run(ctx: RunContext) -> None:
    state = ctx.keep(PruneState())
    for plan in ctx.epochs():
        row = parallel_sl.train_epoch(ctx, plan)
        if plan.phase_end:
            state.models.append({"budget": row["budget"], "path": ctx.save_model(row["budget"]),
                                 "epoch": plan.epoch, "test_accuracy": row["test_accuracy"]})
    ctx.summary["models"] = state.models
