"""Clients as state on a worker pool: the same tables as the fused trainer, faults, resume, and
the priority the pool and server run at."""

from __future__ import annotations

import os
import threading

import pandas as pd
import pytest
import ray
import torch
from fused import algorithm_config, assert_same_results, assert_same_tables, run_fused

from splitray.algorithms import ALGORITHMS
from splitray.config import ConfigError
from splitray.runtime import resume_experiment, run_experiment
from splitray.runtime.context import RunContext
from splitray.runtime.orchestrator import prepare, start_peers

pytestmark = pytest.mark.usefixtures("ray_cluster")  # one Ray instance for the module


def _config(algorithm: str = "parallel_sl", **overrides):
    return algorithm_config(algorithm, {
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.name": "synthetic",
        "data.image_size": 16, "data.train_samples": 96, "data.test_samples": 48,
        "train.batch_size": 8, "train.steps_per_epoch": 2,
        "clients.count": 5, "clients.num_cpus": 0.5, "server.num_cpus": 0.5,
        "clients.devices": "[raspberry_pi_4, laptop_cpu]", "network.links": "[wifi5, lte]",
        "schedule.phases": "[{budget: 4, epochs: 2}]", "splitfed.every_rounds": 1,
        # One worker keeping one client between rounds: every round moves states.
        "engine.clients": "pool", "engine.pool_workers": 1, "engine.pool_capacity": 1,
    }, **overrides)


SLOW_LINKS = "[wifi5, {kind: constant, up_bps: 1e5, down_bps: 1e5, latency_s: 0.01}]"
CASES = {name: {} for name in sorted(ALGORITHMS)} | {
    # Three of five clients a round among those online, some steps cut by a deadline.
    "parallel_sl-sampled": {"clients.per_round": 3, "availability.kind": "synthetic",
                            "availability.mean_on_s": 0.02, "availability.mean_off_s": 0.01,
                            "clients.round_deadline_s": 0.5, "network.links": SLOW_LINKS},
    "splitfed-sampled": {"clients.per_round": 2, "clients.over_selection": 1.5},
    # Shards of 9 to 29 samples at batch 12: one client's steps are smaller, so its forwards
    # cost less than the others' at the same split point and budget. No forward runs ahead.
    "parallel_sl-uneven": {"data.partition": "dirichlet", "data.dirichlet_alpha": 0.1,
                           "train.batch_size": 12, "engine.prefetch": 0},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_pool_gives_the_fused_trainers_tables(case):
    algorithm = case.split("-")[0]
    cfg = _config(algorithm, **CASES[case])
    fused = run_fused(cfg)
    pooled = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    assert_same_results(pooled, fused)
    if case.endswith("sampled"):
        assert (pooled.steps["dropped"] != "").any()
    if case.endswith("uneven"):
        assert sorted(pooled.steps["batch_size"].unique()) == [9, 12]


def test_auto_puts_clients_on_a_pool_when_their_actors_would_not_fit(tmp_path):
    # 5 clients x 0.5 CPUs + server 0.5 exceed the test cluster's 2 CPUs: a pool of 3 workers.
    cfg = _config(**{"engine.clients": "auto", "engine.pool_workers": "null"})
    result = run_experiment(cfg, out_dir=str(tmp_path), progress=False)
    manifest = pd.read_json(os.path.join(result.run_dir, "manifest.json"), typ="series")
    assert manifest["pool_workers"] == 3
    with pytest.raises(ConfigError, match="engine.clients: pool"):
        run_experiment(_config(**{"engine.clients": "actors"}), out_dir=None, progress=False)
    # More pool workers than fit: a one-line error before any actor starts, not a wait.
    with pytest.raises(ConfigError, match=r"engine.pool_workers: 4 is not allowed; 4 pool workers "
                                          r"x clients.num_cpus 0.5 and the server at 0.5 exceed "
                                          r"the cluster's 2 CPUs"):
        run_experiment(_config(**{"engine.pool_workers": 4}), out_dir=None, progress=False)


def test_a_killed_pool_worker_costs_a_replay_not_a_row(tmp_path, monkeypatch):
    cfg = _config(**{"schedule.phases": "[{budget: 4, epochs: 3}]", "checkpoint.every_epochs": 1,
                     "engine.pool_workers": 2})
    whole = run_fused(cfg, str(tmp_path / "whole"))  # the pool's tables, sooner
    original = RunContext.run_steps
    fired: list[int] = []

    def run_steps(self, plan, budget, steps, **kwargs):
        if self.round in (1, 5) and self.round not in fired:  # epoch 0, then epoch 2
            fired.append(self.round)
            threading.Timer(0.02, ray.kill, [self.peers.pool.workers[1]],
                            {"no_restart": False}).start()
        return original(self, plan, budget, steps, **kwargs)

    monkeypatch.setattr(RunContext, "run_steps", run_steps)
    faulty = run_experiment(cfg, out_dir=str(tmp_path / "faulty"), progress=False)
    assert fired == [1, 5]
    assert_same_tables(faulty.run_dir, whole.run_dir)
    manifest = pd.read_json(os.path.join(faulty.run_dir, "manifest.json"), typ="series")
    assert [f["epochs_done"] for f in manifest["faults"]] == [0, 2]


def test_a_pool_run_resumes_from_its_checkpoint_file(tmp_path):
    cfg = _config(**{"schedule.phases": "[{budget: 4, epochs: 3}]", "checkpoint.every_epochs": 1})
    whole = run_fused(cfg, str(tmp_path / "whole"))

    class Stop(Exception):
        pass

    def stop_after_second(row, checkpoint):
        if row["epoch"] == 1:
            assert checkpoint is not None
            raise Stop

    run_dir = str(tmp_path / "stopped")
    with pytest.raises(Stop):
        run_experiment(cfg, out_dir=None, run_dir=run_dir, progress=False,
                       on_epoch=stop_after_second)
    resume_experiment(run_dir, progress=False)
    assert_same_tables(run_dir, whole.run_dir)


def test_the_pool_and_server_run_at_the_drivers_priority():
    # Ray starts workers at niceness 15, below its daemons; the simulated devices must not be.
    peers = start_peers(prepare(_config()), "ray")
    try:
        nice = ray.get([a.handle.__ray_call__.remote(lambda _: os.nice(0)) for a in peers.actors])
    finally:
        peers.stop()
    assert len(nice) == 2 and nice == [os.nice(0)] * 2


def test_actors_reuse_freed_memory_instead_of_mapping_it_anew():
    # By default glibc gives freed memory at the top of a process's heap back to the kernel once
    # it exceeds twice the largest block it has mapped, and the next step faults the pages in
    # and zeroes them again: 1.7 million minor faults in an epoch of 8 client actors.
    def minor_faults_a_round(_actor) -> float:  # nested: Ray pickles it by value
        def minor_faults() -> int:
            with open("/proc/self/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[7])

        def one_round() -> None:  # a step's activations: 8 blocks of 4 MiB, all freed at its end
            blocks = [torch.ones(1 << 20) for _ in range(8)]
            del blocks

        one_round()
        before = minor_faults()
        for _ in range(10):
            one_round()
        return (minor_faults() - before) / 10

    peers = start_peers(prepare(_config()), "ray")
    try:
        faults = ray.get([a.handle.__ray_call__.remote(minor_faults_a_round)
                          for a in peers.actors])
    finally:
        peers.stop()
    pages = (32 << 20) // os.sysconf("SC_PAGE_SIZE")  # a round's pages (8,192 faults without)
    assert len(faults) == 2 and max(faults) < pages / 2, faults
