"""Shared fixtures: one Ray instance per test module that asks for it."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for the module: 2 CPUs, no GPU (on a GPU machine too, so that the
    server stays on the CPU where tests compare tables bit for bit; tests/test_gpu.py takes the
    GPU), no dashboard, token authentication on."""
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
