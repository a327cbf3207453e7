"""Per-client split points (EdgeSplit), EPSL's gradient aggregation and the planner, end to end
on the fused local engine."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from splitray.cli import main
from splitray.compression import Payload
from splitray.config import ConfigError, load_config
from splitray.models import split
from splitray.planning import plan
from splitray.roles import ClientRole, ServerRole, activation_shape, fedavg, model_for
from splitray.runtime import prepare, run_experiment

MEDIUM = "{kind: shared, up_bps: 2e6, down_bps: 5e6, latency_s: 0.005}"
DEVICES = "[{name: slow, flops_per_s: 2e7}, {name: mid, flops_per_s: 1e8}, {name: fast, flops_per_s: 1e9}]"


def tiny(**overrides) -> object:
    base = {
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.name": "synthetic",
        "data.image_size": 16, "data.train_samples": 144, "data.test_samples": 48,
        "train.batch_size": 8, "train.lr": 0.05, "clients.count": 3, "clients.devices": DEVICES,
        "network.shared": MEDIUM, "schedule.phases": "[{epochs: 2}]",
        "compression.enabled": "false",
    }
    base.update(overrides)
    return load_config(overrides=[f"{k}={v}" for k, v in base.items()])


def _capture_roles(monkeypatch) -> tuple[list[ClientRole], list[ServerRole]]:
    clients: list[ClientRole] = []
    servers: list[ServerRole] = []
    for cls, seen in ((ClientRole, clients), (ServerRole, servers)):
        original = cls.__init__

        def init(self, *args, _original=original, _seen=seen, **kwargs):
            _original(self, *args, **kwargs)
            _seen.append(self)

        monkeypatch.setattr(cls, "__init__", init)
    return clients, servers


def _drop_run_columns(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["run_id", "algorithm", "wall_time_s"])


# ---------------------------------------------------------------- layer-wise averaging

def test_fedavg_averages_each_layer_over_the_copies_that_hold_it():
    a = {"conv.w": np.array([1.0, 1.0]), "fc.w": np.array([2.0])}
    b = {"conv.w": np.array([3.0, 5.0])}                       # holds only the first layer
    c = {"fc.w": np.array([8.0]), "bn.steps": np.array(4)}      # the other layer, int buffer
    d = {"bn.steps": np.array(7)}
    out = fedavg([a, b, c, d], [1, 3, 1, 1])
    np.testing.assert_allclose(out["conv.w"], [2.5, 4.0])     # (1*1 + 3*3) / 4, (1 + 15) / 4
    np.testing.assert_allclose(out["fc.w"], [5.0])             # a and c, equal weights
    assert out["bn.steps"] == 7                                # integer buffers take the max


def test_edgesplit_copies_agree_layer_by_layer_after_an_average(monkeypatch):
    clients, servers = _capture_roles(monkeypatch)
    # Split points 2, 3 and 4: 16 channels at 2 and 3, 32 at 4; the budget fraction 4/16 holds.
    result = run_experiment(tiny(**{
        "train.algorithm": "edgesplit", "clients.split_layers": "[2, 3, 4]",
        "compression.enabled": "true", "schedule.phases": "[{budget: 4, epochs: 2}]"}),
        out_dir=None, engine="local", progress=False)
    [server] = servers
    assert [part.split_layer for part in server.parts] == [2, 3, 4]
    models = [{**c.get_weights(), **server.get_weights(i)} for i, c in enumerate(clients)]
    units = [k for k in models[0] if "@" not in k]
    assert all(set(units) <= set(m) for m in models)  # every copy holds every layer, one side or other
    for key in units:
        for m in models[1:]:
            np.testing.assert_array_equal(m[key], models[0][key], err_msg=key)
    # A layer on the client for one and on the server for another: conv2 (unit 3) of client 2.
    assert any(k.startswith("conv2") for k in clients[2].get_weights())
    assert any(k.startswith("conv2") for k in server.get_weights(0))
    steps = result.steps
    assert steps.groupby("client_id")["split_layer"].unique().map(list).tolist() == [[2], [3], [4]]
    assert steps.groupby("split_layer")["budget"].unique().map(list).to_dict() == {
        2: [4], 3: [4], 4: [8]}
    assert result.summary["server_parts_nbytes"] == server.parts_nbytes() > 0


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_the_server_parts_memory_counts_momentum_only_when_sgd_keeps_it(momentum):
    server = ServerRole(tiny(**{"train.algorithm": "edgesplit", "clients.split_layers": "[2, 4]",
                                "train.momentum": momentum}), (3, 16, 16), 10)
    modules = [m for part in server.parts for m in part.modules()]
    weights = sum(p.nbytes for m in modules for p in m.parameters())
    buffers = sum(b.nbytes for m in modules for b in m.buffers())
    assert server.parts_nbytes() == buffers + (3 if momentum else 2) * weights


def test_average_parts_averages_each_layer_over_the_copies_that_hold_it():
    server = ServerRole(tiny(**{"train.algorithm": "edgesplit", "clients.split_layers": "[2, 4, 4]"}),
                        (3, 16, 16), 10)
    start = [server.get_weights(i) for i in range(3)]
    moved = {0: 1.0, 1: 2.0, 2: 4.0}  # each copy moves every float by this much
    for i, delta in moved.items():
        server.set_weights(i, {k: a + delta if a.dtype.kind == "f" else a
                               for k, a in start[i].items()})
    server.average_parts([0, 1, 2])
    averaged = [server.get_weights(i) for i in range(3)]
    only_0 = [k for k in start[0] if k not in start[1] and start[0][k].dtype.kind == "f"]
    all_3 = [k for k in start[1] if start[1][k].dtype.kind == "f"]
    assert only_0 and all_3
    for k in only_0:   # conv2: on copy 0 only, it keeps copy 0's update
        np.testing.assert_allclose(averaged[0][k], start[0][k] + 1.0, rtol=1e-6)
    for k in all_3:    # units 5..: the three copies' mean, in every copy
        for m in averaged:
            np.testing.assert_allclose(m[k], start[1][k] + 7.0 / 3, rtol=1e-6)


@pytest.mark.parametrize("averaged", [True, False])
def test_averaged_server_copies_keep_batch_norm_statistics_as_one_shared_part(averaged):
    no_average = {} if averaged else {"edgesplit.every_rounds": 0,
                                      "edgesplit.server_every_rounds": "null"}
    server = ServerRole(tiny(**{
        "train.algorithm": "edgesplit", "clients.split_layers": "[2, 4, 4]",
        "compression.enabled": "true", "schedule.phases": "[{budget: 4, epochs: 2}]",
        **no_average}), (3, 16, 16), 10)
    server.set_training(True)
    bns = [part.decompressor.bn for part in server.parts]

    def normalise(channel_mean: float) -> list[float]:
        """Each copy's decompressor BN normalises one batch whose channels all have this mean."""
        for bn in bns:
            bn(torch.full((8, bn.num_features, 4, 4), channel_mean))
        if averaged:
            server.average_parts([0, 1, 2])
        return [float(bn.running_mean.mean()) for bn in bns]

    # Averaged copies start as the plain mean of their batches: the first one's mean exactly,
    # where PyTorch's momentum 0.1 leaves 0.9 of the start (0).
    first = 4.0 if averaged else 0.1 * 4.0
    np.testing.assert_allclose(normalise(4.0), [first] * 3, rtol=1e-5)
    for _ in range(19):
        normalise(4.0)
    start = 4.0 if averaged else (1 - 0.9 ** 20) * 4.0
    # After 20 batches (1/21 < 0.1) a batch of mean 8 moves them by the momentum alone.
    # decompressor@2 is copy 0's alone: 0.1. decompressor@4 is held by copies 1 and 2, whose
    # average forgets as one part that normalised both batches: 1 - 0.9^2 = 0.19.
    both = 1 - 0.9 ** 2 if averaged else 0.1
    np.testing.assert_allclose(normalise(8.0), [start + 0.1 * (8 - start)]
                               + [start + both * (8 - start)] * 2, rtol=1e-5)


@pytest.mark.parametrize("server_every_rounds", [1, None])
def test_edgesplit_averages_the_server_copies_alone_between_whole_averages(
        monkeypatch, server_every_rounds):
    clients, servers = _capture_roles(monkeypatch)
    run_experiment(tiny(**{
        "train.algorithm": "edgesplit", "clients.split_layers": "[2, 3, 4]",
        "edgesplit.every_rounds": 0,
        "edgesplit.server_every_rounds": server_every_rounds or "null",
        "schedule.phases": "[{epochs: 1}]"}), out_dir=None, engine="local", progress=False)
    [server] = servers
    parts = [server.get_weights(i) for i in range(3)]
    # Server copies at splits 2, 3, 4: units 4.. are on the first two, units 5.. on all three.
    pairs = [(0, 1, [k for k in parts[0] if k in parts[1]]), (0, 2, list(parts[2]))]
    assert len(pairs[0][2]) > len(pairs[1][2]) > 0
    agree = [all(np.array_equal(parts[a][k], parts[b][k]) for k in keys) for a, b, keys in pairs]
    assert agree == [server_every_rounds == 1] * 2
    # The client parts are not averaged: their common first layer differs client to client.
    first = [k for k in clients[0].get_weights() if k.endswith(".weight")][0]
    assert not np.array_equal(clients[0].get_weights()[first], clients[1].get_weights()[first])


def test_edgesplit_averages_every_server_copy_trained_since_the_last_average(monkeypatch):
    # One client a round, the server's copies averaged every second round: each average takes
    # the copies of both rounds' clients, not only the last round's.
    averaged: list[list[int]] = []
    original = ServerRole.average_parts
    monkeypatch.setattr(ServerRole, "average_parts",
                        lambda self, ids: (averaged.append(list(ids)), original(self, ids))[1])
    steps = run_experiment(tiny(**{
        "train.algorithm": "edgesplit", "clients.split_layers": "[2, 3, 4]",
        "clients.per_round": 1, "edgesplit.every_rounds": 0, "edgesplit.server_every_rounds": 2,
        "schedule.phases": "[{epochs: 1}]"}), out_dir=None, engine="local", progress=False).steps
    by_round = steps.groupby("round")["client_id"].apply(set).tolist()
    expected = [sorted(by_round[r] | by_round[r + 1]) for r in range(0, len(by_round) - 1, 2)]
    assert averaged == expected and any(len(ids) == 2 for ids in expected)


def test_different_split_points_need_edgesplit_and_valid_layers():
    with pytest.raises(ConfigError, match=r"clients.split_layers: \[2, 3\] is not allowed with "
                                          "train.algorithm parallel_sl"):
        prepare(tiny(**{"clients.split_layers": "[2, 3]"}))
    with pytest.raises(ConfigError, match=r"clients.split_layers\[1\]: 9 is not allowed"):
        prepare(tiny(**{"train.algorithm": "edgesplit", "clients.split_layers": "[2, 9]"}))
    with pytest.raises(ConfigError, match="clients.split_layers: None is not allowed for edgesplit"):
        prepare(tiny(**{"train.algorithm": "edgesplit", "network.shared": "null"}))


# ---------------------------------------------------------------- EdgeSplit against its plan

@pytest.mark.parametrize("every_rounds", ["null", 0])
def test_edgesplit_runs_the_plan_and_its_rounds_take_the_predicted_time(tmp_path, every_rounds):
    cfg = tiny(**{"train.algorithm": "edgesplit", "plan.split_layers": "[2, 3, 4, 5]",
                  "edgesplit.every_rounds": every_rounds})
    predicted = plan(cfg)
    assert len({c.split_layer for c in predicted.clients}) > 1, "the case should be heterogeneous"
    result = run_experiment(cfg, out_dir=str(tmp_path), engine="local", progress=False)
    planned = [c.split_layer for c in predicted.clients]
    assert result.steps.groupby("client_id")["split_layer"].first().tolist() == planned
    # Each client's accuracy on its own slice, at its own split point, sums to the run's.
    per_client = result.client_evals
    assert per_client.groupby("client_id")["split_layer"].first().tolist() == planned
    for epoch, rows in per_client.groupby("epoch"):
        run_row = result.evals[result.evals["epoch"] == epoch].iloc[0]
        assert rows["test_samples"].sum() == cfg.data.test_samples
        correct = (rows["test_accuracy"] * rows["test_samples"]).sum()
        assert correct / rows["test_samples"].sum() == pytest.approx(run_row["test_accuracy"])
        loss_sum = (rows["test_loss"] * rows["test_samples"]).sum()
        assert loss_sum / rows["test_samples"].sum() == pytest.approx(run_row["test_loss"])
    saved = yaml.safe_load((tmp_path / result.run_id / "config.yaml").read_text())
    assert saved["clients"]["split_layers"] == planned
    assert saved["network"]["shared"]["shares"] == pytest.approx([c.share for c in predicted.clients])
    # The second epoch: a download of the average, its rounds and an upload; the plan spreads the
    # averaging over the rounds, so the epoch's mean round is what it predicts. Every 0 rounds:
    # no weights cross the network.
    model_bytes = result.steps[["bytes_model_up", "bytes_model_down"]].to_numpy().sum()
    assert (model_bytes == 0) == (every_rounds == 0)
    evals = result.evals
    rounds = result.steps[result.steps["epoch"] == 1]["round"].nunique()
    mean_round_s = (evals["sim_time_s"].iloc[1] - evals["sim_time_s"].iloc[0]) / rounds
    assert mean_round_s == pytest.approx(predicted.round_s, rel=0.05)


def test_plan_command_prints_the_plan_and_writes_a_runnable_config(tmp_path, capsys):
    path = tmp_path / "edge.yaml"
    cfg = tiny(**{"train.algorithm": "edgesplit"})
    path.write_text(cfg.to_yaml())
    written = tmp_path / "planned.yaml"
    assert main(["plan", str(path), "--write", str(written)]) == 0
    out = capsys.readouterr().out
    assert "predicted round time" in out and "best single split point" in out
    assert out.count("\n     ") >= 3 or len(out.splitlines()) >= 6  # a row per client
    planned = load_config(written)
    assert planned.network.shared["allocation"] == "shares"
    assert len(planned.clients.split_layers) == 3
    assert main(["plan", str(path), "--objective", "epsl"]) == 0
    assert "(epsl, " in capsys.readouterr().out
    epsl = tmp_path / "epsl.yaml"  # its baseline is parallel SL: phi does not carry over
    epsl.write_text(tiny(**{"train.algorithm": "epsl", "train.phi": 0.5}).to_yaml())
    assert main(["plan", str(epsl)]) == 0
    assert "(epsl, " in capsys.readouterr().out
    own_links = tmp_path / "own.yaml"
    own_links.write_text(tiny(**{"network.shared": "null"}).to_yaml())
    assert main(["plan", str(own_links)]) == 2
    assert "network.shared" in capsys.readouterr().err


def test_plan_grid_prints_a_row_per_combination_and_writes_csv(tmp_path, capsys):
    path = tmp_path / "edge.yaml"
    path.write_text(tiny(**{"train.algorithm": "edgesplit"}).to_yaml())
    rows = tmp_path / "grid.csv"
    assert main(["plan", str(path), "--grid", "network.shared.up_bps=1e6,1e8",
                 "--grid", "clients.cpu_share=0.1,1", "--csv", str(rows),
                 "--plot", str(tmp_path / "grid.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert lines[0].split()[:3] == ["network.shared.up_bps", "clients.cpu_share", "round"]
    assert [line.split()[:2] for line in lines[1:5]] == [
        ["1e6", "0.1"], ["1e6", "1"], ["1e8", "0.1"], ["1e8", "1"]]
    table = pd.read_csv(rows)
    assert len(table) == 4
    assert (table["speedup"] == table["baseline_round_s"] / table["round_s"]).all()
    # The grid's first point is what `splitray plan --set` plans for it.
    one = load_config(path, ["network.shared.up_bps=1e6", "clients.cpu_share=0.1"])
    best = plan(one)
    assert table["round_s"].iloc[0] == pytest.approx(best.round_s, rel=1e-12)
    assert table["split_layers"].iloc[0] == " ".join(str(c.split_layer) for c in best.clients)
    # Bad input: one line, before anything is planned.
    assert main(["plan", str(path), "--grid", "clients.cpu_share=0.5,-1"]) == 2
    assert "clients.cpu_share" in capsys.readouterr().err
    assert main(["plan", str(path), "--grid", "clients.cpu_share"]) == 2
    assert main(["plan", str(path), "--grid", "clients.cpu_share=1", "--write", "x.yaml"]) == 2
    assert main(["plan", str(path), "--csv", str(rows)]) == 2
    assert "--csv and --plot are only allowed with --grid" in capsys.readouterr().err
    # An output file whose folder cannot be made: one line, before anything is planned.
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    for flag in ("--csv", "--plot"):
        assert main(["plan", str(path), "--grid", "clients.cpu_share=1", flag,
                     str(blocked / "out")]) == 2
        assert capsys.readouterr() == ("", f"splitray: error: {flag}: '{blocked / 'out'}' is "
                                           f"not allowed; its folder '{blocked}': it is a file, "
                                           "not a directory\n")
    assert main(["plan", str(path), "--write", str(tmp_path)]) == 2
    assert "it is a directory, not a file" in capsys.readouterr().err


def test_planned_allocation_gives_other_algorithms_shares_at_their_split(tmp_path):
    cfg = tiny(**{"network.shared": "{kind: shared, up_bps: 2e6, down_bps: 5e6, latency_s: 0.005, "
                                     "allocation: planned}"})
    prepared = prepare(cfg)
    assert prepared.cfg.clients.split_layers == [3, 3, 3]
    shares = prepared.cfg.network.shared["shares"]
    assert sum(shares) == pytest.approx(1.0) and shares[0] > shares[2]  # the slow device gets more


# ---------------------------------------------------------------- EPSL

def test_epsl_with_phi_zero_is_parallel_sl():
    parallel = run_experiment(tiny(), out_dir=None, engine="local", progress=False)
    epsl = run_experiment(tiny(**{"train.algorithm": "epsl", "train.phi": 0}), out_dir=None,
                          engine="local", progress=False)
    pd.testing.assert_frame_equal(_drop_run_columns(epsl.steps), _drop_run_columns(parallel.steps))
    pd.testing.assert_frame_equal(_drop_run_columns(epsl.evals), _drop_run_columns(parallel.evals))


@pytest.mark.parametrize("phi", [0.5, 1.0])
def test_epsl_updates_the_servers_batchnorm_statistics_once_per_client_batch(phi):
    # The aggregated pass runs at the clients' mean input, whose variance is about 1/K of a real
    # batch's: it trains with its batch statistics but leaves the running ones alone.
    cfg = tiny(**{"model.name": "vgg11_bn", "model.split_layer": 2, "data.image_size": 32,
                  "clients.count": 2, "train.algorithm": "epsl", "train.phi": phi})
    server = ServerRole(cfg, (3, 32, 32), 10)
    part = server.parts[0]
    bn = next(m for m in part.server_part.modules() if isinstance(m, torch.nn.BatchNorm2d))
    b, m = cfg.train.batch_size, math.ceil(phi * cfg.train.batch_size)
    shape = activation_shape(split(model_for(cfg, (3, 32, 32), 10), 2)[0], (3, 32, 32))
    torch.manual_seed(0)
    for i in range(2):
        x = torch.randn(b, *shape) * 2 + 1
        server.step_epsl(Payload.from_tensor(x, "fp32", labels=torch.arange(b) % 10), i, 0, m)
    assert int(bn.num_batches_tracked) == 2
    before = [t.clone() for t in part.server_part.buffers()]
    server.step_aggregated()
    for t, saved in zip(part.server_part.buffers(), before, strict=True):
        assert torch.equal(t, saved)


@pytest.mark.parametrize(("phi", "codec"), [(0.5, "fp32"), (1.0, "fp32"), (1.0, "fp8_e5m2")])
def test_epsl_server_flops_and_downlink_bytes_follow_the_aggregation_formula(phi, codec):
    cfg = tiny(**{"train.algorithm": "epsl", "train.phi": phi, "compression.codec_down": codec})
    result = run_experiment(cfg, out_dir=None, engine="local", progress=False)
    prepared = prepare(cfg)
    part = ServerRole(cfg, prepared.input_shape, prepared.num_classes).parts[0]
    k, b = cfg.clients.count, cfg.train.batch_size
    m = math.ceil(phi * b)
    train_flops, forward_flops = part.flops_per_sample, part.forward_flops_per_sample
    channels, height, width = 16, 8, 8  # tiny_cnn at split 3 on 16 px

    def down_bytes(samples: int) -> int:
        return Payload.from_tensor(torch.zeros(samples, channels, height, width), codec).nbytes

    assert down_bytes(0) == 0  # phi = 1 leaves an empty unicast, which carries no scale either

    rounds = result.steps.groupby("round")
    assert (rounds.size() == k).all()
    # Forward + backward for (1 - phi) K b + phi b samples; the shared positions' forward per client.
    expected_flops = train_flops * (k * (b - m) + m) + forward_flops * k * m
    assert (rounds["server_flops"].sum() == expected_flops).all()
    # K unicasts of the own positions, and one broadcast of the shared ones.
    assert (rounds["bytes_down"].sum() == k * down_bytes(b - m) + down_bytes(m)).all()
    # The broadcast rides on the lowest client id's row.
    first = result.steps[result.steps["client_id"] == 0]["bytes_down"]
    assert (first == down_bytes(b - m) + down_bytes(m)).all()
    assert np.isfinite(result.steps["loss"]).all()
    # Every client waits for the broadcast: the round ends for all after the last server step.
    for _, r in rounds:
        server_done = (r["sim_start_s"] + r["sim_model_down_s"] + r["sim_client_compute_s"]
                       - r["sim_client_backward_s"] + r["sim_uplink_s"] + r["sim_server_wait_s"]
                       + r["sim_server_compute_s"])
        downlink_done = server_done + r["sim_downlink_s"]
        assert (downlink_done >= server_done.max() - 1e-9).all()


def test_epsl_on_own_links_counts_the_broadcast_on_every_link_it_crosses_and_the_pass_once():
    # Without a shared medium the "broadcast" is one transfer per client: each row carries it.
    cfg = tiny(**{"train.algorithm": "epsl", "train.phi": 0.5, "network.shared": "null",
                  "network.links": "[{kind: constant, up_bps: 1e7, down_bps: 1e6}]"})
    steps = run_experiment(cfg, out_dir=None, engine="local", progress=False).steps
    b, m = cfg.train.batch_size, math.ceil(0.5 * cfg.train.batch_size)
    unicast = Payload.from_tensor(torch.zeros(b - m, 16, 8, 8), "fp32").nbytes
    broadcast = Payload.from_tensor(torch.zeros(m, 16, 8, 8), "fp32").nbytes
    assert (steps["bytes_down"] == unicast + broadcast).all()
    # The server's aggregated pass runs once a round, on whatever network: one row carries it.
    rounds = steps.groupby("round")["server_flops"]
    assert (rounds.max() > rounds.min()).all()
    assert (rounds.apply(lambda f: (f == f.min()).sum()) == cfg.clients.count - 1).all()
    # The time each client's downlink took is what its bytes take at 1 Mbit/s.
    assert steps["sim_downlink_s"].to_numpy() == pytest.approx(
        8 * (unicast + broadcast) / 1e6, rel=1e-6)


@pytest.mark.parametrize("positions", ["by_class", "shuffled"])
def test_epsl_batches_hold_the_same_class_at_each_position_on_every_client(positions):
    cfg = tiny(**{"train.algorithm": "epsl", "train.phi": 1, "train.phi_positions": positions,
                  "data.num_classes": 4, "train.batch_size": 6})
    prepared = prepare(cfg)
    shards = prepared.shards()
    labels = []  # per client: the labels of each step's batch, steps x positions
    for i in range(cfg.clients.count):
        shard, test = shards.of(i)
        role = ClientRole(i, cfg, shard, test, prepared.num_classes)
        steps = role.begin_epoch(0, cfg.train.lr, None)
        labels.append(np.stack([shard.labels[role._batch_indices(t)].numpy()
                                for t in range(steps)]))
    _, j = np.indices(labels[0].shape)
    on_cycle = [lab == j % 4 for lab in labels]
    if positions == "by_class":
        # The shards hold 8 to 16 samples of a class and a batch takes 1 or 2 of each: for the
        # first 4 batches every position holds its class on every client, and later most still do.
        assert all(c[:4].all() and c.mean() > 0.75 for c in on_cycle)
    else:
        assert all(c.mean() < 0.5 for c in on_cycle)


def test_epsl_phi_needs_uncompressed_activations():
    with pytest.raises(ConfigError, match="train.phi: 0.5 is not allowed with compression.enabled"):
        tiny(**{"train.algorithm": "epsl", "train.phi": 0.5, "compression.enabled": "true"})
    with pytest.raises(ConfigError, match="train.phi: 0.5 is not allowed with train.algorithm"):
        tiny(**{"train.phi": 0.5})


EPSL_YAML = Path(__file__).resolve().parents[1] / "experiments" / "epsl.yaml"


def test_epsl_needs_every_batch_to_hold_the_shared_positions():
    # A skewed split of 512 samples leaves client 6 with 14, fewer than the 16 shared positions of
    # a 32-sample batch at phi 0.5: the server could not average position 15 over every client.
    epsl = ["train.phi=0.5", "data.partition=dirichlet", "data.dirichlet_alpha=0.1",
            "data.train_samples=512"]
    with pytest.raises(ConfigError, match=r"train.phi: 0.5 is not allowed with these shards; EPSL "
                                          r"aggregates the first 16 positions of every batch, "
                                          r"and client 6's batch holds only its 14 samples"):
        prepare(load_config(EPSL_YAML, epsl))
    prepare(load_config(EPSL_YAML, [*epsl, "train.phi=0.4"]))  # 13


@pytest.mark.parametrize("phi, server", [(0.0, "datacenter_gpu"), (0.5, "datacenter_gpu"),
                                         (1.0, "datacenter_gpu"),
                                         (0.5, "{name: slow, flops_per_s: 1e8}")])
def test_epsl_planned_cut_and_shares_give_the_predicted_round(phi, server):
    # A slow server: the unicasts overlap the later clients' server work and the aggregated
    # backward, and the broadcast waits for both.
    cfg = tiny(**{"train.algorithm": "epsl", "train.phi": phi, "server.device": server,
                  "network.shared": "{kind: shared, up_bps: 2e6, down_bps: 5e6, latency_s: 0.005, "
                                    "allocation: planned}"})
    predicted = plan(cfg, "epsl")
    steps = run_experiment(cfg, out_dir=None, engine="local", progress=False).steps
    assert set(steps["split_layer"]) == {predicted.clients[0].split_layer}
    rounds = steps.groupby("round").agg(start=("sim_start_s", "min"), end=("sim_time_s", "max"))
    assert float((rounds["end"] - rounds["start"]).mean()) == pytest.approx(predicted.round_s,
                                                                          rel=0.05)


@pytest.mark.parametrize("every_rounds", [0, 2])
def test_edgesplit_keeps_a_server_copy_trained_for_a_step_dropped_afterwards(monkeypatch,
                                                                              every_rounds):
    # Client 1's gradient is cut by the round deadline on its slow downlink after the server
    # trained its copy: that copy joins the server's average of its copies (each round), and
    # the whole models' average (every two rounds) takes it in first.
    averaged: list[list[int]] = []
    original = ServerRole.average_parts

    def spy(self, client_ids):
        averaged.append(list(client_ids))
        return original(self, client_ids)

    monkeypatch.setattr(ServerRole, "average_parts", spy)
    cfg = tiny(**{"train.algorithm": "edgesplit", "clients.count": 2,
                  "clients.split_layers": "[3, 3]", "edgesplit.every_rounds": every_rounds,
                  "network.shared": "null", "clients.round_deadline_s": 0.2,
                  "network.links": "[wifi5, {kind: constant, up_bps: 1e8, down_bps: 1e5, "
                                   "latency_s: 0.0}]", "schedule.phases": "[{epochs: 1}]"})
    steps = run_experiment(cfg, out_dir=None, engine="local", progress=False).steps
    cut = steps[steps["client_id"] == 1]
    assert (cut["dropped"] == "offline").all() and (cut["cut"] == "down").all()
    assert (cut["batch_size"] == cfg.train.batch_size).all()  # served before the cut
    rounds = steps["round"].nunique()
    assert averaged == [[0, 1]] * rounds  # each round: alone, or before the whole average
