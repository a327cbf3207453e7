"""The fused local trainer on one torch thread, as the tests compare it with other engines."""

from __future__ import annotations

import torch

from splitray.runtime import RunResult, run_experiment


def run_fused(cfg, out_dir: str | None = None) -> RunResult:
    """Run `cfg` on the local engine with one torch thread: the actors run one thread each
    (num_cpus=1), and a different thread count changes float summation order, which SGD amplifies.
    With one thread each the tables are the Ray engine's, bit for bit (wall clock aside)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_experiment(cfg, out_dir=out_dir, engine="local", progress=False)
    finally:
        torch.set_num_threads(threads)
