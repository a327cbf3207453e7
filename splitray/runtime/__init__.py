"""The simulation engine: actors, peers, the discrete-event timeline and the orchestrator."""

from __future__ import annotations

from typing import Any

__all__ = ["ENGINES", "RunDiverged", "RunFailed", "RunInterrupted", "RunResult", "prepare",
           "resume_experiment", "run_experiment"]


def __getattr__(name: str) -> Any:
    # Lazy, so the pure parts (timeline, peers) import without loading torch and the model zoo.
    if name in __all__:
        from splitray.runtime import orchestrator

        return getattr(orchestrator, name)
    raise AttributeError(name)
