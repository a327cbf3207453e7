"""Every training scheme under splitray/algorithms/, run on the fused local engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from splitray.algorithms import ALGORITHMS
from splitray.config import load_config
from splitray.roles import BackwardInfo, ClientRole, ServerRole
from splitray.runtime import orchestrator, run_experiment
from splitray.runtime.peers import LocalPeer


def tiny(**overrides) -> object:
    base = {
        "model.name": "tiny_cnn", "model.split_layer": 3,
        "data.name": "synthetic", "data.image_size": 16, "data.train_samples": 64,
        "data.test_samples": 32, "train.batch_size": 8, "train.lr": 0.05,
        "clients.count": 2, "clients.devices": "[laptop_cpu]", "network.links": "[wifi5]",
        "schedule.phases": "[{budget: 2, epochs: 2}]", "train.steps_per_epoch": 2,
    }
    if overrides.get("train.algorithm") == "edgesplit":  # own links: no plan, split points given
        base["clients.split_layers"] = "[2, 3]"
    base.update(overrides)
    return load_config(overrides=[f"{k}={v}" for k, v in base.items()])


def _bn_means(role) -> torch.Tensor:
    return torch.cat([m.running_mean.clone() for module in role.modules()
                      for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)])


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_training_after_an_evaluation_runs_every_module_in_train_mode(algorithm, monkeypatch):
    """Each client and server pass with gradients on sees all of the role's modules training,
    and the compressor's BatchNorm statistics move, also after the first evaluation."""
    events: list[tuple[str, bool, bool, bool]] = []  # (role, grad on, all training, BN moved)

    def watch(role_cls, method, name):
        original = getattr(role_cls, method)

        def wrapped(self, *args):
            training = all(m.training for module in self.modules() for m in module.modules())
            before = _bn_means(self) if name == "client" else None
            out = original(self, *args)
            moved = before is not None and not torch.equal(before, _bn_means(self))
            events.append((name, torch.is_grad_enabled(), training, moved))
            return out

        monkeypatch.setattr(role_cls, method, wrapped)

    watch(ClientRole, "_encode", "client")
    watch(ServerRole, "_decode", "server")
    run_experiment(tiny(**{"train.algorithm": algorithm}), out_dir=None, engine="local",
                   progress=False)
    first_eval = next(i for i, e in enumerate(events) if not e[1])
    after = [e for e in events[first_eval:] if e[1]]
    assert {e[0] for e in after} == {"client", "server"}, "no training after the evaluation"
    assert all(e[2] for e in after), "a module was in eval mode during training"
    assert all(e[3] for e in after if e[0] == "client"), "compressor BN statistics did not move"
    assert all(not e[2] for e in events if not e[1]), "evaluation ran in train mode"


def _result(algorithm: str, **overrides):
    return run_experiment(tiny(**{"train.algorithm": algorithm, **overrides}), out_dir=None,
                          engine="local", progress=False)


SAME_COLUMNS = ["client_id", "epoch", "step", "round", "bytes_up", "bytes_down", "loss",
                "prune_loss", "sim_start_s", "sim_time_s", "sim_uplink_s", "sim_downlink_s",
                "client_flops", "server_flops"]


def test_driver_submits_a_clients_next_forward_before_waiting_for_its_backward(monkeypatch):
    """FLOP-timed, the driver does not wait for a backward within its round: its report is
    waited for once the client's next forward is submitted (or the epoch ends), and its prune
    loss still fills the row, the same as a run that waits (measured compute times)."""
    events: list[str] = []
    call = LocalPeer.call

    def recording_call(self, method, *args, num_returns=1):
        events.append(method.__name__)
        return call(self, method, *args, num_returns=num_returns)

    def recording_get(futures):
        if any(isinstance(f, BackwardInfo) for f in (futures if isinstance(futures, list)
                                                      else [futures])):
            events.append("wait for backward")
        return futures

    monkeypatch.setattr(LocalPeer, "call", recording_call)
    monkeypatch.setattr(orchestrator, "get_local", recording_get)
    one = {"clients.count": 1, "schedule.phases": "[{budget: 2, epochs: 1}]",
           "train.steps_per_epoch": 3}
    steps = _result("parallel_sl", **one).steps
    training = [e for e in events if e in ("forward", "backward", "wait for backward")]
    # Step k's backward is waited for after step k+1's forward and backward were submitted.
    assert training == ["forward", "backward", "forward", "backward", "wait for backward",
                        "forward", "backward", "wait for backward", "wait for backward"]
    waited = _result("parallel_sl", **one, **{"engine.compute_time": "measured"}).steps
    assert (steps["prune_loss"] > 0).all()
    pd.testing.assert_series_equal(steps["prune_loss"], waited["prune_loss"])
    assert steps["client_flops"].tolist() == waited["client_flops"].tolist()


def test_vanilla_with_one_client_equals_parallel_with_one_client():
    one = {"clients.count": 1, "schedule.phases": "[{budget: 2, epochs: 2}, {budget: 8, epochs: 1}]"}
    vanilla, parallel = _result("vanilla_sl", **one), _result("parallel_sl", **one)
    pd.testing.assert_frame_equal(vanilla.steps[SAME_COLUMNS], parallel.steps[SAME_COLUMNS])
    assert (vanilla.steps["bytes_model_up"] == 0).all()
    pd.testing.assert_frame_equal(vanilla.evals.drop(columns=["run_id", "algorithm", "wall_time_s"]),
                                  parallel.evals.drop(columns=["run_id", "algorithm", "wall_time_s"]))


def test_vanilla_hands_the_client_part_on_through_the_server():
    result = _result("vanilla_sl", **{"clients.count": 3, "vanilla.handoff": "epoch"})
    s = result.steps
    assert s["sim_start_s"].is_monotonic_increasing  # one client at a time
    assert list(s.groupby("epoch")["client_id"].apply(list).iloc[0]) == [0, 0, 1, 1, 2, 2]
    turns_end = s[s["bytes_model_up"] > 0]
    turns_start = s[s["bytes_model_down"] > 0]
    # Every turn but the run's last hands on; each handoff is one upload and one download.
    assert len(turns_end) == len(turns_start) == 2 * 3 - 1
    weights = turns_end["bytes_model_up"].iloc[0]
    assert (turns_start["bytes_model_down"] == weights).all() and weights > 0
    assert (turns_end["sim_model_up_s"] > 0).all() and (turns_start["sim_model_down_s"] > 0).all()
    # The download starts when the upload arrived at the server.
    ends = turns_end["sim_time_s"].to_numpy()
    np.testing.assert_allclose(turns_start["sim_start_s"].to_numpy(), ends, rtol=1e-12)
    per_batch = _result("vanilla_sl", **{"clients.count": 3, "vanilla.handoff": "batch"}).steps
    assert (per_batch["bytes_model_up"] > 0).sum() == len(per_batch) - 1


def test_splitfed_averaging_leaves_every_client_part_identical(monkeypatch):
    roles: list[ClientRole] = []
    original = ClientRole.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        roles.append(self)

    monkeypatch.setattr(ClientRole, "__init__", init)
    result = _result("splitfed", **{"clients.count": 3, "data.partition": "dirichlet"})
    weights = [r.get_weights() for r in roles]
    assert len(weights) == 3
    for name, array in weights[0].items():
        for other in weights[1:]:
            np.testing.assert_array_equal(other[name], array, err_msg=name)
    s = result.steps
    last_of_epoch = s.groupby("epoch")["step"].transform("max") == s["step"]
    assert (s.loc[last_of_epoch, "bytes_model_up"] > 0).all()
    assert (s.loc[~last_of_epoch, "bytes_model_up"] == 0).all()
    # The average goes down before each client's next step: at the start of epoch 1.
    assert set(s.loc[s["bytes_model_down"] > 0, "epoch"]) == {1}
    # Averaging waits for the slowest upload: the next round starts after all of them.
    first_of_next = s[(s["epoch"] == 1) & (s["step"] == 0)]["sim_start_s"]
    assert (first_of_next >= s[last_of_epoch & (s["epoch"] == 0)]["sim_time_s"].max()).all()


def test_splitfed_every_k_rounds():
    s = _result("splitfed", **{"splitfed.every_rounds": 3,
                               "schedule.phases": "[{budget: 2, epochs: 3}]"}).steps
    assert sorted(s.loc[s["bytes_model_up"] > 0, "round"].unique()) == [2, 5]


def test_async_states_cost_what_they_send(monkeypatch):
    from splitray.algorithms import async_sl

    # The states by epoch are scripted here; the loss-based rules have a test of their own.
    script = iter("ABCAA")  # the state after each of the 5 epochs
    monkeypatch.setattr(async_sl, "next_state",
                        lambda c, loss, rules: async_sl.ClientState(next(script)))
    result = _result("async_sl", **{
        "schedule.phases": "[{budget: 2, epochs: 5}]", "clients.count": 1,
        "compression.codec_up": "fp8_e4m3", "compression.codec_down": "fp8_e5m2"})
    s = result.steps
    assert s.groupby("epoch")["client_state"].first().tolist() == ["A", "A", "B", "C", "A"]
    a, b, c = (s[s["client_state"] == k] for k in "ABC")
    assert (c[["bytes_up", "bytes_down", "client_flops", "sim_client_compute_s",
               "sim_uplink_s", "sim_downlink_s"]] == 0).all().all()
    assert (c["server_flops"] > 0).all() and (c["sim_server_compute_s"] > 0).all()
    assert (b["bytes_up"] > 0).all() and (b["bytes_down"] == 0).all()
    assert (b["client_flops"] < a["client_flops"].iloc[0]).all() and (b["client_flops"] > 0).all()
    summary = result.summary
    full = a["bytes_up"].iloc[0] + a["bytes_down"].iloc[0]
    assert summary["payload_bytes"] == s["bytes_up"].sum() + s["bytes_down"].sum()
    assert summary["payload_bytes_all_A"] == full * len(s)
    assert summary["communication_reduction"] == pytest.approx(full * len(s) / summary["payload_bytes"])
    assert summary["client_compute_reduction"] > 1 and summary["server_cache_bytes"] > 0


def test_async_savings_of_a_client_with_nothing_to_train_count_no_gradient():
    # At split 0 without compression the client trains nothing and no gradient comes back; the
    # all-A cost counted one anyway, so a run that never left A claimed 2x less communication.
    result = _result("async_sl", **{"model.split_layer": 0, "compression.enabled": "false",
                                    "schedule.phases": "[{epochs: 2}]",
                                    "async_sl.loss_threshold": 0})
    s, summary = result.steps, result.summary
    assert (s["client_state"] == "A").all() and (s["bytes_down"] == 0).all()
    assert summary["payload_bytes_all_A"] == summary["payload_bytes"] == s["bytes_up"].sum()
    assert summary["communication_reduction"] == 1.0
    assert summary["client_flops_all_A"] == 0 and summary["client_compute_reduction"] == 1.0


def test_async_state_machine_switches_on_the_loss_change():
    from splitray.algorithms.async_sl import ClientState, next_state
    from splitray.config import AsyncConfig

    rules = AsyncConfig(loss_threshold=0.01, min_epochs_a=2, epochs_b=1, epochs_c=2)
    c = next_state(ClientState(), 2.0, rules)                 # first epoch: nothing to compare
    assert c.state == "A"
    c = next_state(c, 1.5, rules)                             # improved by 0.5: stay in A
    assert c.state == "A"
    c = next_state(c, 1.495, rules)                           # improved by 0.005 < 0.01: B
    assert (c.state, c.epochs) == ("B", 0)
    c = next_state(c, 1.49, rules)                            # one epoch in B: C
    assert c.state == "C"
    assert next_state(c, 1.6, rules).state == "A"            # the loss rose: back to A
    c = next_state(c, 1.49, rules)
    assert c.state == "C"
    assert next_state(c, 1.49, rules).state == "A"           # two epochs in C: A


def test_timeline_picture_lays_every_step_out_in_lanes(tmp_path):
    from splitray.analysis.timeline import lane_summary, select_window, step_segments
    from splitray.cli import main

    result = run_experiment(tiny(**{"train.algorithm": "vanilla_sl", "clients.count": 2}),
                            out_dir=str(tmp_path), engine="local", progress=False)
    s = result.steps
    segments = step_segments(s)
    # Each client lane covers its steps end to end; the server lane holds the server compute.
    client_time = segments[segments["lane"] != "server"].groupby("client_id")["duration_s"].sum()
    np.testing.assert_allclose(client_time.sort_index().to_numpy(),
                               (s["sim_time_s"] - s["sim_start_s"]).groupby(s["client_id"]).sum()
                               .sort_index().to_numpy(), rtol=1e-9)
    server = segments[segments["lane"] == "server"]["duration_s"].sum()
    assert server == pytest.approx(s["sim_server_compute_s"].sum())
    table, label = lane_summary(s, rounds=(0, int(s["round"].max())))
    assert {"model up", "model down", "forward", "backward"} <= set(table.columns)
    assert label == f"rounds 0-{int(s['round'].max())}"
    # A window counts only the seconds inside it: no lane is busier than the window is long.
    middle = ((s["sim_start_s"] + s["sim_time_s"]) / 2).to_numpy()
    lo, hi = float(middle[1]), float(middle[2])  # through the middle of two steps
    inside, label = lane_summary(s, window_s=(lo, hi))
    assert label == f"simulated {lo:g}-{hi:g} s"
    busy = inside.set_index("lane").sum(axis=1)
    assert (busy <= hi - lo + 1e-9).all() and busy.max() > 0
    whole, _ = select_window(s, window_s=(lo, hi))
    assert busy.sum() < step_segments(whole)["duration_s"].sum()  # steps cut at the edges
    assert main(["analyze", result.run_dir, "--timeline", "--round", "1-2"]) == 0
    assert (Path(result.run_dir) / "analysis" / "timeline.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["analyze", result.run_dir, "--timeline", "--round", "999"]) == 2
    assert main(["analyze", result.run_dir, "--timeline", "--window", "5"]) == 2


def test_splitfed_averages_only_the_clients_that_trained_and_charges_their_uploads(monkeypatch):
    # Uneven shards: with an average after every round, a client whose shard is used up does
    # not upload, and its stale part is not in the average.
    from splitray.algorithms import splitfed

    averaged: list[list[int]] = []
    original = splitfed.fedavg
    monkeypatch.setattr(splitfed, "fedavg",
                        lambda weights, counts: averaged.append(counts) or original(weights, counts))
    s = _result("splitfed", **{"clients.count": 3, "data.partition": "dirichlet",
                               "data.dirichlet_alpha": 0.3, "train.steps_per_epoch": "null",
                               "splitfed.every_rounds": 1,
                               "schedule.phases": "[{budget: 2, epochs: 1}]"}).steps
    per_client = s.groupby("client_id")["step"].count()
    assert per_client.nunique() > 1, "the shards should be uneven"
    assert (s["bytes_model_up"] > 0).all()  # every step is followed by an average
    # Each client downloads the average before each of its steps but the first.
    assert ((s["bytes_model_down"] > 0) == (s["step"] > 0)).all()
    assert [len(c) for c in averaged] == s.groupby("round").size().tolist()
