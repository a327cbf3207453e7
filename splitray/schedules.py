"""Budget schedules (phases of {budget, epochs}) and the selectLr learning-rate boost (Algorithm 2)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from splitray.config import ScheduleConfig


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch trains with: its phase, budget (None: all channels) and learning rate."""

    epoch: int
    phase: int
    budget: int | None
    lr: float
    phase_start: bool  # first epoch of a phase (where filter resets happen)
    phase_end: bool    # last epoch of a phase (where a checkpoint, and prune's model M_B, follow)


def select_lr(base_lr: float, phase: int, epoch_in_phase: int, gamma: float, boost_epochs: int) -> float:
    """selectLr: multiply the rate by γ for the first l_k epochs of every non-initial phase."""
    if phase > 0 and epoch_in_phase < boost_epochs:
        return base_lr * gamma
    return base_lr


def epoch_plans(schedule: ScheduleConfig, base_lr: float) -> Iterator[EpochPlan]:
    """Every epoch of the schedule in order."""
    epoch = 0
    for phase, p in enumerate(schedule.phases):
        for k in range(p.epochs):
            lr = select_lr(base_lr, phase, k, schedule.gamma, schedule.boost_epochs)
            yield EpochPlan(epoch, phase, p.budget, lr, k == 0, k == p.epochs - 1)
            epoch += 1


def reset_kind(previous_budget: int, new_budget: int) -> str | None:
    """The filter reset between two phases: 'deprune' to a larger budget, 'prune' to a smaller one."""
    if new_budget > previous_budget:
        return "deprune"
    if new_budget < previous_budget:
        return "prune"
    return None


def scaled_budget(budget: int, reference_channels: int, channels: int) -> int:
    """A phase's budget (channels kept of `reference_channels`, those at model.split_layer) at a
    split point with `channels`: the same fraction, rounded up (project choice for per-client
    split points; equal channel counts keep the budget as it is)."""
    if channels == reference_channels:
        return budget
    return min(channels, -(-budget * channels // reference_channels))
