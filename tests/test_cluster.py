"""The worker pool across two Ray nodes (both on this machine): workers on each, same tables."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from splitray.runtime import run_experiment


@pytest.fixture(scope="module")
def two_nodes():
    import ray
    from ray.cluster_utils import Cluster

    # No GPUs: on a GPU machine each node would detect the GPU and the server could take it,
    # where the comparison with the fused trainer on the CPU is not bit for bit.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0,
                                                           "include_dashboard": False})
    cluster.add_node(num_cpus=1, num_gpus=0)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_pool_workers_spread_over_two_nodes_and_give_the_fused_tables(two_nodes, tmp_path):
    from fused import assert_same_results, run_fused
    from test_pool import _config

    cfg = _config(**{"engine.pool_workers": 2, "clients.per_round": 3})
    fused = run_fused(cfg, str(tmp_path / "fused"))  # read back as the pool's tables are
    pooled = run_experiment(cfg, out_dir=str(tmp_path / "pool"), engine="ray", progress=False)
    manifest = pd.read_json(os.path.join(pooled.run_dir, "manifest.json"), typ="series")
    assert manifest["pool_workers"] == 2 and manifest["pool_nodes"] == 2
    assert_same_results(pooled, fused)
