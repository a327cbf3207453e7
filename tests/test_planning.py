"""The split-point and bandwidth planner (METHODS.md §5 EdgeSplit, §6 EPSL) against brute force,
the roles' own FLOP and byte counts, and the discrete-event timeline's round time."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.edge_comparison import by_device, curves, systems
from analysis.edgesplit_depth import device_mixes, speed_up_within_baseline_depth
from splitray.config import ConfigError, config_from_dict, load_config
from splitray.data.synthetic import make_synthetic
from splitray.models import build_model, split_points
from splitray.network import NetworkModel, build_link, get_device_profile
from splitray.planning import (
    ClientPlan,
    Plan,
    baseline_config,
    best_single_split,
    format_plan,
    grid_values,
    plan,
    plan_and_baseline,
    plan_grid,
    resolved_config,
    split_costs,
)
from splitray.roles import ClientRole, ServerRole
from splitray.runtime import run_experiment
from splitray.runtime.timeline import ServerWork, StepJob, Timeline

EDGESPLIT_YAML = Path(__file__).resolve().parents[1] / "experiments" / "edgesplit.yaml"
IMAGE_PX = 16
BATCH = 4
# A narrow medium, so that bytes and client FLOPs of tiny_cnn trade off at these device speeds.
MEDIUM = {"kind": "shared", "up_bps": 1e5, "down_bps": 2e5, "latency_s": 0.002}


def make_cfg(speeds: list[float], compress: bool = False, budget: int | None = None,
             shared=None, server=None, **sections):
    """tiny_cnn on 16 px synthetic images, one client per device speed (FLOP/s); `sections` add
    keys to config sections (e.g. model={"split_layer": 0})."""
    data = {"model": {"name": "tiny_cnn", "split_layer": 3}, "data": {"image_size": IMAGE_PX},
            "compression": {"enabled": compress}, "train": {"batch_size": BATCH},
            "schedule": {"phases": [{"budget": budget}]},
            "clients": {"count": len(speeds),
                        "devices": [{"name": f"dev{i}", "flops_per_s": s} for i, s in enumerate(speeds)]},
            "network": {"shared": MEDIUM if shared is None else shared}}
    if server is not None:
        data["server"] = {"device": server}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    if "plan" not in sections:
        # Every split point where the client trains something, unless a test says: raw input
        # (split 0, and 1 after the parameter-free normalisation) goes up with no gradient coming
        # back, so small images would make it every device's best choice.
        data["plan"] = {"split_layers": [c.split_layer for c in split_costs(config_from_dict(data))
                                         if c.client_trains or data["compression"]["enabled"]]}
    return config_from_dict(data)


def model_times(cfg) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """§5's T_i = fixed[i, s] + drain[i, s] / w_i, written out here independently of the planner."""
    costs = [c for c in split_costs(cfg) if c.split_layer in cfg.plan.split_layers]
    medium = build_link(cfg.network.shared)
    server = get_device_profile(cfg.server.device)
    b = cfg.train.batch_size
    fixed, drain = [], []
    for spec in cfg.clients.devices:
        speed = get_device_profile(spec).flops_per_s * cfg.clients.cpu_share
        fixed.append([b * c.client_flops_per_sample / speed + b * c.server_flops_per_sample
                      / server.flops_per_s + 2 * medium.latency_s for c in costs])
        drain.append([8 * c.up_bytes(b) / medium.up_bps + 8 * c.down_bytes(b) / medium.down_bps
                      for c in costs])
    return np.array(fixed), np.array(drain), [c.split_layer for c in costs]


def finish_s(p: Plan) -> np.ndarray:
    """Each client's predicted round without the server queue: the T_i that EdgeSplit balances."""
    return np.array([c.round_s - c.wait_s for c in p.clients])


# ------------------------------------------------------------------------------------ costs

@pytest.mark.parametrize("compression", [False, True])
def test_split_costs_are_what_the_roles_count(compression):
    shard = make_synthetic(2 * BATCH, train=True, image_size=IMAGE_PX, channels=3, num_classes=10,
                           seed=0)
    for split_layer in (0, 3, 5):
        cfg = make_cfg([1e9], compression, model={"split_layer": split_layer},
                       compression={"codec_up": "fp8_e4m3", "codec_down": "fp16"})
        costs = {c.split_layer: c for c in split_costs(cfg)}[split_layer]
        client = ClientRole(0, cfg, shard, shard, 10)
        server = ServerRole(cfg, (3, IMAGE_PX, IMAGE_PX), 10)
        client.begin_epoch(0, 0.01, None)
        payload, _ = client.forward(0)
        grad, _ = server.step(payload, 0, 0)
        assert costs.client_forward_flops_per_sample == client.fwd_flops_per_sample
        assert costs.client_backward_flops_per_sample == client.bwd_flops_per_sample
        assert costs.server_flops_per_sample == server.parts[0].flops_per_sample
        assert costs.up_bytes(BATCH) == payload.nbytes
        assert costs.down_bytes(BATCH) == grad.nbytes
        if split_layer == 0 and not compression:
            # Raw input and nothing to train on the client: no gradient at the cut, none sent,
            # and the server's FLOPs are the split table's (`splitray split-points`).
            assert grad.nbytes == 0
            shape = (3, IMAGE_PX, IMAGE_PX)
            table = split_points(build_model("tiny_cnn", 10, shape), shape)[0]
            assert server.parts[0].flops_per_sample == table.server_train_flops


def test_budget_is_the_first_phase_fraction_at_every_split_point():
    # 8 of the 16 channels at split 3: half of each split point's channels, rounded up.
    sent = {c.split_layer: c.wire_shape[0] for c in split_costs(make_cfg([1e9], True, 8))}
    assert sent == {0: 2, 1: 2, 2: 8, 3: 8, 4: 16, 5: 16}
    everything = {c.split_layer: c.wire_shape[0] for c in split_costs(make_cfg([1e9], True))}
    assert everything == {0: 3, 1: 3, 2: 16, 3: 16, 4: 32, 5: 32}
    # A fixed compressor width (compression.channels) is the same at every split point.
    fixed = make_cfg([1e9], True, 3, compression={"channels": 6})
    assert {c.wire_shape[0] for c in split_costs(fixed)} == {3}
    with pytest.raises(ConfigError, match=r"schedule.phases\[0\].budget"):
        split_costs(make_cfg([1e9], True, 17))


# ------------------------------------------------------------------------------------ edgesplit

def test_edgesplit_matches_brute_force_on_two_clients():
    cfg = make_cfg([1e6, 1e9])
    fixed, drain, splits = model_times(cfg)
    grid = np.arange(1, 4000) / 4000  # client 0's share; client 1 gets the rest
    best = np.inf
    for s0, s1 in itertools.product(range(len(splits)), repeat=2):
        rounds = np.maximum(fixed[0, s0] + drain[0, s0] / grid, fixed[1, s1] + drain[1, s1] / grid[::-1])
        best = min(best, float(rounds.min()))
    p = plan(cfg)
    planned = float(finish_s(p).max())
    assert [c.split_layer for c in p.clients] == [3, 5]  # the case is not trivial
    # The plan is the continuous optimum of the same model, so no grid point beats it; the grid's
    # best lies within its resolution (a share off by 1/4000 of about 0.5) of it.
    assert planned <= best * (1 + 1e-9)
    assert best <= planned * (1 + 1e-3)


def test_edgesplit_matches_brute_force_on_three_clients():
    cfg = make_cfg([5e6, 5e7, 1e9], True, 8)
    fixed, drain, splits = model_times(cfg)
    n = 600
    k = np.arange(1, n)
    a, b = (m.ravel() for m in np.meshgrid(k, k, indexing="ij"))
    keep = a + b < n
    a, b = a[keep], b[keep]
    c = n - a - b
    per_share = fixed[:, :, None] + drain[:, :, None] * n / np.arange(n)[None, None, :].clip(1)
    best = np.inf
    for s in itertools.product(range(len(splits)), repeat=3):
        rounds = np.maximum(np.maximum(per_share[0, s[0], a], per_share[1, s[1], b]),
                            per_share[2, s[2], c])
        best = min(best, float(rounds.min()))
    p = plan(cfg)
    planned = float(finish_s(p).max())
    assert len({c.split_layer for c in p.clients}) > 1
    assert planned <= best * (1 + 1e-9)
    # Flooring two of the plan's shares to the grid (the third takes the rest) costs client i at
    # most transfer_i * (w_i / (w_i - 1/n) - 1): the grid's best is within that of the plan.
    bound = max(planned - c.transfer_s + c.transfer_s * c.share / (c.share - 1 / n) for c in p.clients)
    assert best <= bound * (1 + 1e-9)
    assert best <= planned * 1.01


def test_edgesplit_alternation_reaches_the_best_split_combination():
    # Equal shares first put the slow device at the deepest split; with the shares rebalanced it
    # moves to the raw input: two alternations.
    cfg = make_cfg([8e6, 1e9, 1e9, 1e9], True, 8)
    fixed, drain, splits = model_times(cfg)
    p = plan(cfg)
    assert p.iterations == 2
    # Every split combination with its exact best shares: T such that sum drain / (T - fixed) = 1,
    # by bisection over all combinations at once.
    combos = np.array(list(itertools.product(range(len(splits)), repeat=4)))
    rows = np.arange(4)
    f, d = fixed[rows, combos], drain[rows, combos]
    lo, hi = f.max(axis=1), f.max(axis=1) + d.sum(axis=1)
    for _ in range(200):
        mid = (lo + hi) / 2
        ok = (d / np.maximum(mid[:, None] - f, 1e-300)).sum(axis=1) <= 1
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    best = int(np.argmin(hi))
    assert float(finish_s(p).max()) == pytest.approx(hi[best], rel=1e-9)
    assert [c.split_layer for c in p.clients] == [splits[s] for s in combos[best]]


def test_shares_sum_to_one_and_clients_finish_together():
    for speeds in ([5e6, 1e9], [5e6, 5e7, 1e9], [2e6, 2e7, 2e8, 2e9, 2e6]):
        p = plan(make_cfg(speeds))
        shares = [c.share for c in p.clients]
        assert all(s > 0 for s in shares)
        assert sum(shares) <= 1 + 1e-12 and sum(shares) == pytest.approx(1, abs=1e-9)
        done = finish_s(p)
        assert done.max() - done.min() <= 1e-9 * done.max()
        assert p.round_s == max(c.round_s for c in p.clients)
        for c in p.clients:
            assert c.round_s == pytest.approx(c.compute_s + c.transfer_s + c.latency_s + c.wait_s)


def test_faster_device_splits_deeper():
    p = plan(make_cfg([1e6, 1e9]))
    slow, fast = p.clients
    assert fast.split_layer > slow.split_layer
    # And in order along a range of speeds.
    splits = [c.split_layer for c in plan(make_cfg([2e6, 2e7, 2e8, 2e9])).clients]
    assert splits == sorted(splits) and splits[0] < splits[-1]


def test_plan_round_is_what_the_timeline_simulates():
    """One round from idle on the simulator's timeline, with the resolved shares and the plan's
    split points: the same end time for every client, server queue included."""
    # A slow server and equal devices, so payloads arrive together and the server queue matters.
    cfg = make_cfg([2e7, 2e7, 5e8], server={"name": "slow_server", "flops_per_s": 2e8})
    p = plan(cfg)
    resolved = config_from_dict(resolved_config(cfg, p))
    medium = build_link(resolved.network.shared)
    network = NetworkModel(dict.fromkeys(range(3), medium))
    devices = [get_device_profile(d) for d in resolved.clients.devices]
    timeline = Timeline(network, devices, get_device_profile(resolved.server.device))
    costs = {c.split_layer: c for c in split_costs(cfg)}
    split_of = dict(enumerate(resolved.clients.split_layers))
    jobs = [StepJob(i, 0.0, forward_s=timeline.client_compute_s(
                i, BATCH * costs[s].client_forward_flops_per_sample, 0.0),
                bytes_up=costs[s].up_bytes(BATCH)) for i, s in split_of.items()]

    def serve(job: StepJob) -> ServerWork:
        c = costs[split_of[job.client_id]]
        backward_s = timeline.client_compute_s(job.client_id, BATCH * c.client_backward_flops_per_sample,
                                               0.0)
        return ServerWork(timeline.server_compute_s(BATCH * c.server_flops_per_sample, 0.0),
                          c.down_bytes(BATCH), lambda: backward_s)

    times = [t for _, t in timeline.run(jobs, serve)]
    ends, waits = [t.end_s for t in times], [t.server_wait_s for t in times]
    assert ends == pytest.approx([c.round_s for c in p.clients], rel=1e-9)
    assert waits == pytest.approx([c.wait_s for c in p.clients], rel=1e-9, abs=1e-12)
    assert max(waits) > 0  # the queue is part of the prediction


# ------------------------------------------------------------------------------------ epsl

def test_epsl_one_cut_beats_every_cut_with_equal_shares():
    cfg = make_cfg([5e6, 5e7, 1e9])
    costs = [c for c in split_costs(cfg) if c.split_layer in cfg.plan.split_layers]
    medium = build_link(cfg.network.shared)
    server = get_device_profile(cfg.server.device)
    speeds = np.array([get_device_profile(d).flops_per_s for d in cfg.clients.devices])
    lat = medium.latency_s

    def round_s(c, shares):
        """§6: max_k(forward + up) + server for all + max_k(down + backward), latencies included."""
        up = 8 * c.up_bytes(BATCH) / (shares * medium.up_bps)
        down = 8 * c.down_bytes(BATCH) / (shares * medium.down_bps)
        forward = BATCH * c.client_forward_flops_per_sample / speeds
        backward = BATCH * c.client_backward_flops_per_sample / speeds
        serve = len(speeds) * BATCH * c.server_flops_per_sample / server.flops_per_s
        return float(np.max(forward + lat + up) + serve + np.max(down + lat + backward))

    p = plan(cfg, "epsl")
    cut = {c.split_layer for c in p.clients}
    assert len(cut) == 1
    planned = {c.split_layer: c for c in costs}[cut.pop()]
    shares = np.array([c.share for c in p.clients])
    assert shares.sum() == pytest.approx(1)
    assert p.round_s == pytest.approx(round_s(planned, shares), rel=1e-9)
    equal = np.full(len(speeds), 1 / len(speeds))
    for c in costs:
        assert p.round_s <= round_s(c, equal) * (1 + 1e-9)
    assert p.round_s < min(round_s(c, equal) for c in costs)  # the shares help here
    # No grid of shares does better at the planned cut.
    grid = [np.array([a, b, 120 - a - b]) / 120 for a in range(1, 119) for b in range(1, 120 - a)]
    assert p.round_s <= min(round_s(planned, w) for w in grid) * (1 + 1e-9)


# ------------------------------------------------------------------------------------ output

def test_resolved_config_round_trips():
    cfg = make_cfg([5e6, 5e7, 1e9], shared="wifi6_shared")
    p = plan(cfg)
    data = resolved_config(cfg, p)
    loaded = config_from_dict(data)
    assert loaded.clients.split_layers == [c.split_layer for c in p.clients]
    spec = loaded.network.shared
    assert spec["kind"] == "shared" and spec["allocation"] == "shares"
    assert spec["up_bps"] == 400e6 and spec["shares"] == [c.share for c in p.clients]
    network = NetworkModel(dict.fromkeys(range(3), build_link(spec)))
    assert [network.share(i) for i in range(3)] == spec["shares"]
    assert loaded.to_dict() == data
    # Everything else is the config as it was.
    data["clients"]["split_layers"] = None
    data["network"]["shared"] = "wifi6_shared"
    assert data == cfg.to_dict()


def test_format_plan_lists_every_client_and_the_round():
    p = plan(make_cfg([5e6, 1e9]))
    text = format_plan(p)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["client", "device", "split", "share"]
    assert lines[1].split()[:3] == ["0", "dev0", str(p.clients[0].split_layer)]
    assert lines[2].split()[:3] == ["1", "dev1", str(p.clients[1].split_layer)]
    assert f"{p.round_s:.4f} s" in lines[-1] and "edgesplit" in lines[-1]
    assert isinstance(p.clients[0], ClientPlan)


def test_grid_values_split_at_top_level_commas():
    assert grid_values("network.shared.up_bps=5e6, 2e7") == ("network.shared.up_bps",
                                                             ["5e6", "2e7"])
    assert grid_values("clients.devices=[a, b],[c]") == ("clients.devices", ["[a, b]", "[c]"])
    assert grid_values("network.shared={kind: shared, up_bps: 1e6},wifi6_shared")[1] == [
        "{kind: shared, up_bps: 1e6}", "wifi6_shared"]
    for bad in ("clients.cpu_share", "=1,2", "clients.cpu_share=1,,2", "clients.devices=[a,b"):
        with pytest.raises(ConfigError, match="--grid"):
            grid_values(bad)


def test_plan_grid_plans_every_combination_last_axis_fastest():
    cfg = make_cfg([5e6, 1e9])
    axes = [("network.shared.up_bps", ["1e5", "1e7"]), ("clients.cpu_share", ["0.5", "1"])]
    points = list(plan_grid(cfg.to_dict(), axes))
    assert [p.values for p in points] == [("1e5", "0.5"), ("1e5", "1"), ("1e7", "0.5"),
                                          ("1e7", "1")]
    for p in points:
        data = cfg.to_dict()
        data["network"]["shared"]["up_bps"] = float(p.values[0])
        data["clients"]["cpu_share"] = float(p.values[1])
        best, baseline = plan_and_baseline(config_from_dict(data))
        assert p.plan == best and p.baseline == baseline
        assert p.speedup == baseline.round_s / best.round_s
    # A bad value anywhere is an error before the first point is planned.
    bad = plan_grid(cfg.to_dict(), [("clients.cpu_share", ["0.5", "2"])])
    with pytest.raises(ConfigError, match="clients.cpu_share"):
        next(bad)


# ------------------------------------------------------------------------------------ errors

def test_bad_objective_and_missing_medium_are_config_errors():
    cfg = make_cfg([1e9])
    with pytest.raises(ConfigError, match=r"objective: 'fastest' is not allowed; choose one of "
                                          r"edgesplit, epsl"):
        plan(cfg, "fastest")
    own_links = config_from_dict({**cfg.to_dict(), "network": {"links": ["lte"]}})
    with pytest.raises(ConfigError, match=r"^network\.shared: None"):
        plan(own_links)
    with pytest.raises(ConfigError, match=r"^network\.shared: 'lte' is not allowed; it is a link "
                                          r"of kind 'constant'"):
        config_from_dict({**cfg.to_dict(), "network": {"shared": "lte"}})


def test_by_default_the_planner_keeps_the_raw_input_on_the_device():
    # Fast network, slow devices: sending the input would be cheapest, but split learning's point
    # is that raw data stays home, so only split points after a layer with weights are chosen.
    everything = make_cfg([5e6, 5e6], shared={**MEDIUM, "up_bps": 1e9, "down_bps": 1e9},
                          plan={"split_layers": [c.split_layer for c in split_costs(make_cfg([1]))]})
    assert {c.split_layer for c in plan(everything).clients} == {0}
    default = make_cfg([5e6, 5e6], shared={**MEDIUM, "up_bps": 1e9, "down_bps": 1e9},
                       plan={"split_layers": None})
    trains = {c.split_layer for c in split_costs(default) if c.client_trains}
    assert 0 not in trains and {c.split_layer for c in plan(default).clients} <= trains
    with pytest.raises(ConfigError, match="plan.split_layers"):
        plan(make_cfg([5e6], plan={"split_layers": [99]}))
    # One split point the model lacks is refused too, not dropped beside valid ones.
    with pytest.raises(ConfigError, match=r"plan.split_layers: \[1, 99\] is not allowed"):
        plan(make_cfg([5e6], plan={"split_layers": [1, 99]}))


def test_edgesplit_experiment_plans_at_least_half_the_best_single_split_round():
    """experiments/edgesplit.yaml's 8-device mix: the planned round is at most half of parallel
    SL's at its best single split point with equal shares (issue 9's round-time target; the runs
    match the plan by test_plan_round_is_what_the_timeline_simulates)."""
    cfg = load_config(EDGESPLIT_YAML)
    planned, baseline = plan_and_baseline(cfg)
    assert baseline.round_s / planned.round_s >= 2.0
    assert len({c.split_layer for c in planned.clients}) > 1  # devices split at different points


def test_edge_comparison_runs_epsl_uncompressed_next_to_a_compressed_config():
    """analysis/edge_comparison.py on a config with a channel budget: EdgeSplit keeps it, the
    baseline sends the same fraction (1/16) at its split point, EPSL (compression off, METHODS.md
    section 6) sends all channels in every phase."""
    cfg = load_config(EDGESPLIT_YAML,
                      ["compression.enabled=true", "schedule.phases=[{epochs: 1, budget: 8}]"])
    baseline, edge, epsl = systems(cfg, [1.0])
    assert baseline.cfg.compression.enabled and edge.cfg.compression.enabled
    assert [p.budget for p in edge.cfg.schedule.phases] == [8]
    channels = {c.split_layer: c.shape[0] for c in split_costs(cfg)}
    assert [p.budget for p in baseline.cfg.schedule.phases] == [
        channels[baseline.cfg.model.split_layer] // 16]
    assert not epsl.cfg.compression.enabled
    assert [p.budget for p in epsl.cfg.schedule.phases] == [None]
    assert epsl.cfg.train.phi == 1.0


def test_edge_comparison_curves_average_each_epoch_over_seeds():
    """The accuracy-against-time curves: per system and epoch, the mean over its seeds' runs of
    the simulated time and the test accuracy, systems in the order they ran."""
    runs = pd.DataFrame({"system": ["(a) base", "(b) edge", "(a) base", "(b) edge"]})

    def evals(times, accuracies):
        return pd.DataFrame({"epoch": [1, 2], "sim_time_s": times, "test_accuracy": accuracies,
                             "test_loss": [2.0, 1.0]})

    out = curves(runs, [evals([10, 20], [0.2, 0.4]), evals([5, 10], [0.3, 0.5]),
                        evals([12, 24], [0.4, 0.6]), evals([5, 10], [0.1, 0.3])])
    assert list(out.columns) == ["system", "epoch", "sim_time_s", "test_accuracy"]
    assert list(out["system"]) == ["(a) base", "(a) base", "(b) edge", "(b) edge"]
    np.testing.assert_allclose(out["sim_time_s"], [11, 22, 5, 10])
    np.testing.assert_allclose(out["test_accuracy"], [0.3, 0.5, 0.2, 0.4])


def test_edge_comparison_averages_each_devices_accuracy_over_seeds():
    """by_device.csv: per system, device and split point, the mean over seeds of the pooled
    accuracy of those clients, systems and devices in the order they ran."""
    per_run = pd.DataFrame({
        "run_id": ["r0", "r0", "r1", "r1", "r2"],
        "system": ["(b) edge", "(b) edge", "(b) edge", "(b) edge", "(a) base"],
        "device": ["pi", "phone", "pi", "phone", "pi"], "split_layer": [5, 14, 5, 14, 8],
        "clients": [2, 5, 2, 5, 8], "test_samples": [250, 625, 250, 625, 1000],
        "test_accuracy": [0.30, 0.20, 0.26, 0.24, 0.28]})
    out = by_device(per_run)
    assert out[["system", "device", "split_layer", "clients", "seeds"]].values.tolist() == [
        ["(b) edge", "pi", 5, 2, 2], ["(b) edge", "phone", 14, 5, 2], ["(a) base", "pi", 8, 8, 1]]
    np.testing.assert_allclose(out["test_accuracy"], [0.28, 0.22, 0.28])


def test_the_baseline_sends_the_plans_fraction_of_the_channels_at_every_split_point():
    # Budget 8 is 1/16 of split 5's 128 channels; at split 3 (64 channels) the plan sends 4, and
    # so must the baseline split there, or the comparison would favour the plan.
    cfg = load_config(str(EDGESPLIT_YAML), ["compression.enabled=true",
                                            "schedule.phases=[{epochs: 2, budget: 8}]"])
    plan_sent = {c.split_layer: c.wire_shape for c in split_costs(cfg)}
    for split_layer in (3, 5, 14):
        baseline = baseline_config(cfg, split_layer)
        sent = {c.split_layer: c.wire_shape for c in split_costs(baseline)}
        assert sent[split_layer] == plan_sent[split_layer]
    assert baseline_config(cfg, 3).schedule.phases[0].budget == 4
    # The quickstart deprunes to 128 channels, all of split 5's: at splits 1-2 (64 channels)
    # the baseline sends all 64, as the plan would.
    quick = load_config(str(EDGESPLIT_YAML.parent / "quickstart.yaml"))
    at_2 = baseline_config(quick, 2)
    assert [p.budget for p in at_2.schedule.phases][-1] == 64
    # Before, the schedule's 128 channels did not fit there and no baseline could be planned.
    only_shallow = best_single_split(load_config(str(EDGESPLIT_YAML.parent / "quickstart.yaml"),
                                                 ["plan.split_layers=[1, 2]"]))
    assert only_shallow.clients[0].split_layer in (1, 2)


def test_an_epochs_rounds_between_averages_follow_the_datasets_own_size():
    from splitray.planning import rounds_per_average

    # edgesplit.yaml: 8 clients at batch 32; synthetic data has 2,048 training samples unless
    # data.train_samples says otherwise: 8 steps a client, 8 rounds an epoch.
    every_epoch = ["edgesplit.every_rounds=null"]
    assert rounds_per_average(load_config(str(EDGESPLIT_YAML), every_epoch)) == 8
    unset = load_config(str(EDGESPLIT_YAML), [*every_epoch, "data.train_samples=null"])
    assert rounds_per_average(unset) == 8
    cifar = load_config(str(EDGESPLIT_YAML), [*every_epoch, "data.train_samples=null",
                                              "data.name=cifar10"])
    assert rounds_per_average(cifar) == 50_000 // 8 // 32
    # The planner's round holds every client: sampling does not change its count.
    sampled = load_config(str(EDGESPLIT_YAML), [*every_epoch, "clients.per_round=4"])
    assert rounds_per_average(sampled) == 8


def test_planned_shares_keep_a_non_edgesplit_runs_own_split_point():
    from splitray.planning import planned_config

    cfg = load_config(str(EDGESPLIT_YAML), [
        "train.algorithm=parallel_sl", "model.split_layer=5", "clients.split_layers=[3]",
        "network.shared={kind: shared, up_bps: 5e6, down_bps: 12.5e6, latency_s: 0.003, "
        "allocation: planned}"])
    planned = planned_config(cfg)
    assert planned.clients.split_layers == [3] * 8
    assert planned.network.shared["allocation"] == "shares"


def test_planned_shares_price_splitfeds_weight_transfers_and_refuse_vanilla_sl():
    from splitray.planning import planned_config, predict, rounds_per_average

    medium = ("network.shared={kind: shared, up_bps: 5e6, down_bps: 12.5e6, latency_s: 0.003, "
              "allocation: planned}")

    def planned(algorithm: str, *more: str):
        return planned_config(load_config(str(EDGESPLIT_YAML), [
            medium, "model.split_layer=5", f"train.algorithm={algorithm}", *more]))

    parallel, splitfed = predict(planned("parallel_sl")), predict(planned("splitfed"))
    # SplitFed's client parts go up and come down once an epoch (8 rounds here): its mean round
    # carries an eighth of those transfers, which parallel SL never sends.
    assert rounds_per_average(planned("splitfed")) == 8
    assert rounds_per_average(planned("splitfed", "splitfed.every_rounds=2")) == 2
    assert splitfed.round_s > parallel.round_s
    assert predict(planned("splitfed", "splitfed.every_rounds=2")).round_s > splitfed.round_s
    with pytest.raises(ConfigError, match="allocation 'planned' is not allowed with "
                                          "train.algorithm vanilla_sl"):
        planned("vanilla_sl")


def test_only_a_plan_that_prices_averages_needs_the_datasets_size():
    from splitray.planning import planned_config

    medium = ("network.shared={kind: shared, up_bps: 5e6, down_bps: 12.5e6, latency_s: 0.003, "
              "allocation: planned}")
    folder = ["data.name=imagefolder", "data.train_samples=null", "data.image_size=32", medium]
    # Parallel SL moves no weights: an ImageFolder of unknown size plans as any other data.
    planned = planned_config(load_config(str(EDGESPLIT_YAML), [*folder, "train.algorithm=parallel_sl"]))
    assert planned.network.shared["allocation"] == "shares"
    with pytest.raises(ConfigError, match="data.train_samples: None is not allowed when the "
                                          "planner prices an average every epoch on imagefolder"):
        planned_config(load_config(str(EDGESPLIT_YAML), [*folder, "train.algorithm=splitfed"]))


def test_edgesplit_depth_caps_every_split_point_at_the_baselines():
    mixes = device_mixes(2, 10.0)
    # Pairs of the six client profiles at least 10x apart in speed, slowest first.
    assert ("raspberry_pi_4", "jetson_nano") in mixes and ("phone_midrange", "laptop_cpu") not in mixes
    assert all(len(m) == 2 for m in mixes)
    data = load_config(EDGESPLIT_YAML).to_dict()
    devices = ("raspberry_pi_4", "jetson_xavier_nx") * 4
    speed_up, split, splits = speed_up_within_baseline_depth(data, devices, 5e6)
    assert split == 8 and max(splits) <= split and 1.0 <= speed_up < 2.0
    # A mix of another size than the config's clients.count plans one client per device.
    assert len(speed_up_within_baseline_depth(data, devices[:3], 5e6)[2]) == 3


def test_plan_round_counts_the_slowest_clients_jitter():
    """Every transfer's delay draws its jitter: a round ends with the slowest client's draw, later
    than the mean delay. The planned round is the simulated rounds' mean."""
    cfg = make_cfg([2e8] * 8, shared={**MEDIUM, "up_bps": 2e6, "down_bps": 4e6, "jitter_s": 0.05},
                   train={"algorithm": "edgesplit", "steps_per_epoch": 40},
                   data={"train_samples": 8 * 40 * BATCH, "test_samples": 16},
                   edgesplit={"every_rounds": 0})
    p = plan(cfg)
    steps = run_experiment(config_from_dict(resolved_config(cfg, p)), out_dir=None, engine="local",
                           progress=False).steps
    rounds = steps.groupby("round").agg(end=("sim_time_s", "max"), start=("sim_start_s", "min"))
    mean_round_s = float((rounds["end"] - rounds["start"]).mean())
    assert mean_round_s == pytest.approx(p.round_s, rel=0.03)
    no_jitter = max(c.round_s for c in p.clients)  # each client's round at the mean delay
    assert p.round_s > no_jitter * 1.03
