"""An actor killed mid-step or between two calls costs a replay, never a lost or doubled row."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest
import ray
from fused import assert_same_tables, run_fused
from ray.exceptions import RayActorError

from splitray.config import ALGORITHM_NAMES, load_config
from splitray.runtime import RunFailed, resume_experiment, run_experiment
from splitray.runtime.context import RunContext

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("ray_cluster")  # one Ray instance for the module


def _config(algorithm: str = "parallel_sl", **overrides):
    settings = {
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
        "data.train_samples": 192, "data.test_samples": 32, "train.batch_size": 16,
        "train.algorithm": algorithm, "clients.count": 2, "clients.num_cpus": 0.5,
        "server.num_cpus": 0.5, "clients.devices": "[raspberry_pi_4, laptop_cpu]",
        "network.shared": "{kind: shared, up_bps: 2e6, down_bps: 5e6, latency_s: 0.01}",
        "schedule.phases": ("[{budget: 16, epochs: 2}, {budget: 4, epochs: 2}]"  # largest first
                            if algorithm == "prune" else
                            "[{budget: 4, epochs: 2}, {budget: 16, epochs: 2}]"),
        "checkpoint.every_epochs": 1, "splitfed.every_rounds": 3,
        **overrides,
    }
    return load_config(os.path.join(REPO, "experiments", "quickstart.yaml"),
                       [f"{k}={v}" for k, v in settings.items()])


def _kill_at_rounds(monkeypatch, kills: dict[int, str], delay_s: float = 0.02) -> list[int]:
    """Kill an actor ('client1' or 'server') once each at the listed rounds: a moment after the
    round's calls start, so it dies mid-step. Returns the rounds where a kill fired."""
    original = RunContext.run_steps
    fired: list[int] = []

    def run_steps(self, plan, budget, steps, **kwargs):
        who = kills.get(self.round)
        if who is not None and self.round not in fired:
            fired.append(self.round)
            handle = (self.server if who == "server" else self.clients[1]).handle
            threading.Timer(delay_s, ray.kill, [handle], {"no_restart": False}).start()
        return original(self, plan, budget, steps, **kwargs)

    monkeypatch.setattr(RunContext, "run_steps", run_steps)
    return fired


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_killed_client_and_server_actors_leave_the_tables_of_an_uninterrupted_run(
        algorithm, tmp_path, monkeypatch):
    cfg = _config(algorithm)
    whole = run_fused(cfg, str(tmp_path / "whole"))  # the Ray engine's tables, sooner
    # Round 2 is in the first epoch (rolled back to the run's start), the other in the third
    # (rolled back to the checkpoint after the second).
    later = int(whole.steps.loc[whole.steps["epoch"] == 2, "round"].min()) + 1
    fired = _kill_at_rounds(monkeypatch, {2: "client1", later: "server"})
    faulty = run_experiment(cfg, out_dir=str(tmp_path / "faulty"), progress=False)
    assert fired == [2, later]
    assert_same_tables(faulty.run_dir, whole.run_dir)
    manifest = json.loads(open(os.path.join(faulty.run_dir, "manifest.json")).read())
    assert manifest["status"] == "finished"
    assert [f["epochs_done"] for f in manifest["faults"]] == [0, 2]
    assert all("Actor" in f["error"] or "Worker" in f["error"] for f in manifest["faults"])


def test_more_faults_than_allowed_fail_the_run_which_then_resumes(tmp_path, monkeypatch):
    cfg = _config(**{"faults.max_failures": 1})
    whole = run_fused(cfg, str(tmp_path / "whole"))
    _kill_at_rounds(monkeypatch, {7: "client1", 13: "client1"})
    with pytest.raises(RunFailed, match="2 faults exceed faults.max_failures = 1") as failed:
        run_experiment(cfg, out_dir=str(tmp_path / "faulty"), progress=False)
    run_dir = failed.value.run_dir
    manifest = json.loads(open(os.path.join(run_dir, "manifest.json")).read())
    assert manifest["status"] == "failed"
    assert "--resume" in manifest["reason"] and "\n" not in manifest["reason"]
    assert len(manifest["faults"]) == 2
    failed_faults = manifest["faults"]

    # Resumed, with client actor 1 restarted before the checkpoint is restored: it gets the
    # run's data in the rollback's wait, before the restore, so it costs nothing.
    monkeypatch.undo()
    original, seen = RunContext.rollback, []

    def rollback(self):
        if not seen:
            seen.extend(_kill_and_wait(next(a for a in self.peers.actors if a.name == "client 1")))
        original(self)

    monkeypatch.setattr(RunContext, "rollback", rollback)
    resume_experiment(run_dir, progress=False)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert_same_tables(run_dir, whole.run_dir)
    manifest = json.loads(open(os.path.join(run_dir, "manifest.json")).read())
    assert manifest["status"] == "finished" and "faults" not in manifest  # none in the resume
    [resumed] = manifest["resumes"]
    assert resumed["faults_before"] == failed_faults


def _kill_after_round(monkeypatch, kill_round: int, who: str) -> list[str]:
    """Once round `kill_round` is over, kill an actor ('server', 'client 1' or 'pool worker 1')
    and wait until Ray has restarted it, so that no call of the run fails: only the actor's new
    incarnation shows that its state is lost. Returns the incarnations before and after."""
    original = RunContext.run_steps
    seen: list[str] = []

    def run_steps(self, plan, budget, steps, **kwargs):
        rows = original(self, plan, budget, steps, **kwargs)
        if self.round == kill_round + 1 and not seen:
            seen.extend(_kill_and_wait(next(a for a in self.peers.actors if a.name == who)))
        return rows

    monkeypatch.setattr(RunContext, "run_steps", run_steps)
    return seen


def _kill_and_wait(peer) -> list[str]:
    """Kill a Ray actor and wait until Ray has restarted it: its incarnations before and after."""
    before = peer.wait_ready()
    ray.kill(peer.handle, no_restart=False)
    deadline = time.monotonic() + 60
    while (after := _answer(peer)) in (None, before):
        assert time.monotonic() < deadline, f"Ray did not restart {peer.name} within 60 s"
        time.sleep(0.05)
    return [before, after]


def _answer(peer) -> str | None:
    """The actor's incarnation, or None while it is dead or restarting."""
    try:
        return ray.get(peer.handle.incarnation.remote())
    except RayActorError:
        return None


@pytest.mark.parametrize("who", ["server", "client 1", "pool worker 1"])
def test_an_actor_killed_and_restarted_between_rounds_costs_a_replay(who, tmp_path, monkeypatch):
    pool = {"engine.clients": "pool", "engine.pool_workers": 2} if who.startswith("pool") else {}
    cfg = _config(**{"faults.max_failures": 1, **pool})
    whole = run_fused(cfg, str(tmp_path / "whole"))
    seen = _kill_after_round(monkeypatch, 7, who)  # round 7 is in the second epoch
    restarted = run_experiment(cfg, out_dir=str(tmp_path / "restarted"), progress=False)
    assert len(seen) == 2 and seen[0] != seen[1]  # it was restarted before the next call
    assert_same_tables(restarted.run_dir, whole.run_dir)
    manifest = json.loads(open(os.path.join(restarted.run_dir, "manifest.json")).read())
    assert manifest["status"] == "finished"
    [fault] = manifest["faults"]
    assert fault["error"].startswith(f"ActorRestarted: {who} restarted")
    assert fault["epochs_done"] == 1  # caught in the second epoch, which is replayed


@pytest.mark.parametrize("who", ["client 1", "pool worker 1"])
def test_an_actor_restarted_before_the_first_commit_costs_a_fresh_start(who, tmp_path,
                                                                         monkeypatch):
    # Restarted between taking the run's data and the commit a fault rolls back to: its new
    # incarnation has no data yet, so the commit fails; the run waits for it and starts again.
    pool = {"engine.clients": "pool", "engine.pool_workers": 2} if who.startswith("pool") else {}
    cfg = _config(**{"faults.max_failures": 1, **pool})
    whole = run_fused(cfg, str(tmp_path / "whole"))
    original = RunContext.commit
    seen: list[str] = []

    def commit(self):
        if not seen:
            seen.extend(_kill_and_wait(next(a for a in self.peers.actors if a.name == who)))
        return original(self)

    monkeypatch.setattr(RunContext, "commit", commit)
    restarted = run_experiment(cfg, out_dir=str(tmp_path / "restarted"), progress=False)
    assert len(seen) == 2 and seen[0] != seen[1]
    assert_same_tables(restarted.run_dir, whole.run_dir)
    manifest = json.loads(open(os.path.join(restarted.run_dir, "manifest.json")).read())
    assert manifest["status"] == "finished"
    [fault] = manifest["faults"]
    assert fault["error"].startswith(f"ActorRestarted: {who} restarted")
    assert fault["epochs_done"] == 0


def test_a_restart_after_the_last_epoch_is_caught_at_the_runs_end(tmp_path, monkeypatch):
    # Async SL asks the server for its cache's size after its last epoch: a server restarted
    # between that epoch's check and this call would report the empty cache of a fresh one.
    cfg = _config("async_sl", **{"faults.max_failures": 1})
    whole = run_fused(cfg, str(tmp_path / "whole"))
    original = RunContext.epochs
    seen: list[str] = []

    def epochs(self):
        yield from original(self)
        if not seen:
            seen.extend(_kill_and_wait(self.server))

    monkeypatch.setattr(RunContext, "epochs", epochs)
    restarted = run_experiment(cfg, out_dir=str(tmp_path / "restarted"), progress=False)
    assert len(seen) == 2
    assert whole.summary["server_cache_bytes"] > 0
    assert restarted.summary == whole.summary
    assert_same_tables(restarted.run_dir, whole.run_dir)
    manifest = json.loads(open(os.path.join(restarted.run_dir, "manifest.json")).read())
    assert [f["error"].split(":")[0] for f in manifest["faults"]] == ["ActorRestarted"]


@pytest.mark.parametrize("clients", ["actors", "pool"])
def test_actors_ray_may_restart_take_their_data_in_a_call_not_the_constructor(clients, tmp_path,
                                                                              capfd):
    """Ray cannot promise a restarted actor its constructor's object-store arguments and says so
    on every run (ray-project/ray#53727): the shards (over Ray's 100 KB inline limit here) go to
    the actors through `ActorProcess.ready` instead, and the warning stays away. (Ray logs it
    once per process: each case fails alone on the old way.)"""
    pool = {"engine.clients": "pool", "engine.pool_workers": 2} if clients == "pool" else {}
    cfg = _config(**{"faults.max_failures": 1, "data.train_samples": 1024,
                     "schedule.phases": "[{budget: 4, epochs: 1}]", **pool})
    run_experiment(cfg, out_dir=str(tmp_path), progress=False)
    assert "constructor arguments in the object store" not in capfd.readouterr().err
