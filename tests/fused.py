"""The fused local trainer on one torch thread, as the tests compare it with other engines, the
comparison of two runs' tables, and the small per-algorithm configs those tests share."""

from __future__ import annotations

import os

import pandas as pd
import torch

from splitray.config import ExperimentConfig, load_config
from splitray.metrics import RUN_TABLES
from splitray.runtime import RunResult, run_experiment


def algorithm_config(algorithm: str, settings: dict, **overrides) -> ExperimentConfig:
    """A small config: `settings` running `algorithm`, with what that algorithm needs on them (two
    budget phases for prune, two split points for EdgeSplit, no compression on a shared medium for
    EPSL), then `overrides`."""
    settings = {**settings, "train.algorithm": algorithm}
    if algorithm == "prune":
        settings["schedule.phases"] = "[{budget: 8, epochs: 1}, {budget: 4, epochs: 1}]"
    if algorithm == "edgesplit":
        settings["clients.split_layers"] = "[2, 3]"
    if algorithm == "epsl":
        settings.update({"compression.enabled": "false", "schedule.phases": "[{epochs: 2}]",
                         "train.phi": 0.5, "network.shared": "wifi6_shared"})
    settings.update(overrides)
    return load_config(overrides=[f"{k}={v}" for k, v in settings.items()])


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


def _assert_same_table(got: pd.DataFrame, expected: pd.DataFrame, name: str) -> None:
    """Equal to the last bit, but for the columns that differ between two runs of the same config
    (host wall clock, run id)."""
    drop = ["wall_time_s", "run_id"]
    pd.testing.assert_frame_equal(got.drop(columns=drop, errors="ignore"),
                                  expected.drop(columns=drop, errors="ignore"), obj=name)


def assert_same_tables(run_dir: str | os.PathLike, expected_dir: str | os.PathLike) -> None:
    """Every table of two run directories is equal (wall clock and run id aside)."""
    for name in RUN_TABLES:
        _assert_same_table(pd.read_parquet(os.path.join(run_dir, name)),
                           pd.read_parquet(os.path.join(expected_dir, name)), name)


def assert_same_results(got: RunResult, expected: RunResult) -> None:
    """Every table of two runs' results is equal (wall clock and run id aside): losses and
    accuracies too, bit for bit, as between engines whose roles run on as many threads."""
    for name in ("steps", "evals", "client_evals"):
        _assert_same_table(getattr(got, name), getattr(expected, name), name)
