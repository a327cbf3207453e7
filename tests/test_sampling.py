"""Client sampling, availability and dropped steps: who takes part, when, and what a drop costs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitray.availability import Availability
from splitray.config import ConfigError, load_config
from splitray.network import (
    MAHIMAHI_PACKET_BYTES,
    NetworkModel,
    TraceLink,
    Transfer,
    build_link,
)
from splitray.roles import ClientRole
from splitray.runtime import run_experiment

SLOW_UP_BPS = 2e5  # a 4 kB payload takes 0.16 s: steps long enough to cut


def _config(**overrides):
    settings = {
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.name": "synthetic",
        "data.image_size": 16, "data.train_samples": 96, "data.test_samples": 24,
        "train.batch_size": 4, "train.steps_per_epoch": 3, "clients.count": 6,
        "clients.devices": "[laptop_cpu]", "compression.enabled": "false",
        "network.links": f"[{{kind: constant, up_bps: {SLOW_UP_BPS}, down_bps: 1e6, "
                         "latency_s: 0.0}]",
        "schedule.phases": "[{epochs: 2}]",
    }
    settings.update(overrides)
    return load_config(overrides=[f"{k}={v}" for k, v in settings.items()])


def _run(**overrides):
    return run_experiment(_config(**overrides), out_dir=None, engine="local", progress=False)


def test_per_round_draws_that_many_distinct_clients_reproducibly():
    result = _run(**{"clients.per_round": 4})
    steps = result.steps
    per_round = steps.groupby("round")["client_id"].agg(list)
    # 6 clients x 3 steps = 18 steps an epoch, 4 a round: ceil(18 / 4) = 5 rounds an epoch.
    assert len(per_round) == 10
    assert all(len(ids) == 4 == len(set(ids)) for ids in per_round)
    assert len({tuple(ids) for ids in per_round}) > 1  # not the same four every round
    # A round starts when the one before ended.
    bounds = steps.groupby("round").agg(start=("sim_start_s", "min"), end=("sim_time_s", "max"))
    assert (bounds["start"].iloc[1:].to_numpy() >= bounds["end"].iloc[:-1].to_numpy()).all()
    again = _run(**{"clients.per_round": 4})
    assert again.steps["client_id"].tolist() == steps["client_id"].tolist()
    # Each client walks through its epoch's steps in order.
    for _, rows in steps[steps["epoch"] == 0].groupby("client_id"):
        assert rows["step"].tolist() == [k % 3 for k in range(len(rows))]


def test_a_run_forgets_availability_before_each_epochs_end(monkeypatch):
    """A long run's synthetic traces do not grow with simulated time: after every epoch the
    engine lets them forget what is over, and the run's answers stay those of a full trace."""
    forgotten_at_s: list[float] = []
    forget = Availability.forget_before

    def spy(self: Availability, t_s: float) -> None:
        forgotten_at_s.append(t_s)
        forget(self, t_s)

    overrides = {"clients.per_round": 3, "availability.kind": "synthetic",
                 "availability.mean_on_s": 0.3, "availability.mean_off_s": 0.2,
                 "schedule.phases": "[{epochs: 3}]"}
    monkeypatch.setattr(Availability, "forget_before", lambda self, t_s: None)
    remembered = _run(**overrides)  # every trace kept whole
    monkeypatch.setattr(Availability, "forget_before", spy)
    result = _run(**overrides)
    assert forgotten_at_s == result.evals["sim_time_s"].tolist()
    assert forgotten_at_s[-1] > 10 * 0.5  # the traces had periods to forget
    assert result.steps["client_id"].tolist() == remembered.steps["client_id"].tolist()
    assert result.steps["dropped"].tolist() == remembered.steps["dropped"].tolist()


def test_clients_offline_at_a_rounds_start_are_not_drawn(tmp_path):
    trace = tmp_path / "online.csv"
    # Client 1 leaves after 0.1 s; client 2 is online from 1 s on; the others always.
    trace.write_text("client_id,start_s,end_s\n1,0,0.1\n2,1.0,inf\n")
    result = _run(**{"availability.kind": "file", "availability.path": str(trace)})
    steps = result.steps[result.steps["dropped"] == ""]
    starts = result.steps.groupby("round")["sim_start_s"].min()
    for r, start_s in starts.items():
        ids = set(result.steps.loc[result.steps["round"] == r, "client_id"])
        assert (1 in ids) == (start_s < 0.1)
        assert (2 in ids) == (start_s >= 1.0)
        assert {0, 3, 4, 5} <= ids
    assert not steps.empty


def test_a_client_going_offline_mid_upload_drops_its_step(tmp_path, monkeypatch):
    backward_calls: list[int] = []
    original = ClientRole.backward

    def backward(self, *args):
        backward_calls.append(self.client_id)
        return original(self, *args)

    monkeypatch.setattr(ClientRole, "backward", backward)
    trace = tmp_path / "online.csv"
    trace.write_text("client_id,start_s,end_s\n0,0,0.1\n")  # client 0 leaves at 0.1 s
    result = _run(**{"availability.kind": "file", "availability.path": str(trace),
                     "clients.count": 2, "schedule.phases": "[{epochs: 1}]"})
    first = result.steps[result.steps["round"] == 0].set_index("client_id")
    dropped, kept = first.loc[0], first.loc[1]
    assert dropped["dropped"] == "offline" and kept["dropped"] == ""
    assert dropped["sim_time_s"] == pytest.approx(0.1)
    # The payload was on the link for sim_uplink_s at 200 kbit/s: those bytes were sent, no more.
    assert dropped["bytes_up"] == int(SLOW_UP_BPS / 8 * dropped["sim_uplink_s"])
    assert 0 < dropped["bytes_up"] < kept["bytes_up"]
    assert dropped["bytes_down"] == 0 and dropped["batch_size"] == 0
    assert math.isnan(dropped["loss"])
    assert backward_calls.count(0) == 0 and backward_calls.count(1) == 3
    # Offline for good: client 0 never takes part again; the epoch's loss is client 1's alone.
    assert set(result.steps.loc[result.steps["round"] > 0, "client_id"]) == {1}
    assert math.isfinite(result.evals["train_loss"].iloc[0])


def test_the_timeline_picture_marks_where_dropped_steps_ended(tmp_path):
    from splitray.analysis.timeline import dropped_marks, plot_timeline

    result = _run(**{"clients.count": 4, "clients.per_round": 2, "clients.over_selection": 2})
    marks = dropped_marks(result.steps)
    late = result.steps[result.steps["dropped"] == "late"]
    assert len(marks) == len(late) > 0 and set(marks["why"]) == {"late"}
    assert marks["end_s"].tolist() == late["sim_time_s"].tolist()
    assert (tmp_path / "t.png").name in plot_timeline(result.steps, str(tmp_path / "t.png"))


def test_over_selection_keeps_the_first_payloads_and_drops_the_late():
    # Two of the four links are 4x slower: their payloads arrive last in every round.
    links = (f"[{{kind: constant, up_bps: {SLOW_UP_BPS}, down_bps: 1e6, latency_s: 0.0}}, "
             f"{{kind: constant, up_bps: {SLOW_UP_BPS / 4}, down_bps: 1e6, latency_s: 0.0}}]")
    result = _run(**{"clients.count": 4, "clients.per_round": 2, "clients.over_selection": 2,
                     "network.links": links})
    for _, rows in result.steps.groupby("round"):
        assert len(rows) == 4  # ceil(2 x 2) drawn of 4
        late = rows[rows["dropped"] == "late"]
        kept = rows[rows["dropped"] == ""]
        assert len(kept) == 2 and len(late) == 2
        assert set(late["client_id"] % 2) == {1}  # the slow links
        assert (late["batch_size"] == 0).all() and (late["bytes_down"] == 0).all()
        # At the second arrival the slow uploads are cut, a quarter sent, and the round goes on
        # without them: it ends with the kept steps.
        arrival = (rows["sim_start_s"] + rows["sim_client_compute_s"]
                   - rows["sim_client_backward_s"] + rows["sim_uplink_s"])
        assert (late["cut"] == "up").all()
        assert late["bytes_up"].tolist() == pytest.approx([kept["bytes_up"].iloc[0] / 4] * 2,
                                                          abs=1)
        assert late["sim_time_s"].tolist() == pytest.approx([arrival[kept.index].max()] * 2)
        assert rows["sim_time_s"].max() == kept["sim_time_s"].max()


def test_a_round_deadline_cuts_the_steps_that_would_end_after_it():
    slow = _run(**{"clients.count": 2})
    step_s = (slow.steps["sim_time_s"] - slow.steps["sim_start_s"]).iloc[0]
    cut = _run(**{"clients.count": 2, "clients.round_deadline_s": step_s / 2})
    assert (cut.steps["dropped"] == "offline").all()
    duration = cut.steps["sim_time_s"] - cut.steps["sim_start_s"]
    assert duration.to_numpy() == pytest.approx(step_s / 2)


def test_per_round_above_the_client_count_draws_everyone_and_keeps_every_step():
    steps = _run(**{"clients.count": 2, "clients.per_round": 5}).steps
    assert len(steps) == 2 * 3 * 2  # clients x steps_per_epoch x epochs
    assert (steps.groupby("round")["client_id"].nunique() == 2).all()


def test_a_splitfed_average_cut_in_the_links_latency_comes_down_again(tmp_path):
    # Averages every 2 rounds on links with 1 s of latency. Client 0 goes offline (for 1 ms)
    # after the round-2 download of the average has left the link but before it arrived: it
    # never got the average, so its next step downloads it again.
    overrides = {"train.algorithm": "splitfed", "splitfed.every_rounds": 2,
                 "clients.per_round": 2, "clients.count": 2, "train.steps_per_epoch": 4,
                 "schedule.phases": "[{epochs: 1}]",
                 "network.links": "[{kind: constant, up_bps: 8e6, down_bps: 8e6, latency_s: 1.0}]"}
    steps = _run(**overrides).steps
    row = steps[(steps["round"] == 2) & (steps["client_id"] == 0)].iloc[0]
    assert row["bytes_model_down"] > 0
    leave_s = row["sim_start_s"] + row["bytes_model_down"] * 8 / 8e6 + 0.5
    trace = tmp_path / "online.csv"
    trace.write_text(f"client_id,start_s,end_s\n0,0,{leave_s}\n0,{leave_s + 0.001},1e9\n"
                     "1,0,1e9\n")
    steps = _run(**overrides, **{"availability.kind": "file", "availability.path": trace}).steps
    client = steps[steps["client_id"] == 0].set_index("round")
    assert (client.loc[2, "dropped"], client.loc[2, "cut"]) == ("offline", "model_down")
    assert client.loc[3, "bytes_model_down"] == row["bytes_model_down"]


def test_cancelling_a_transfer_gives_its_share_of_a_shared_medium_back():
    network = NetworkModel(dict.fromkeys(range(2), build_link(
        {"kind": "shared", "up_bps": 8e3, "down_bps": 8e3, "latency_s": 0.0})))
    traffic = network.traffic()
    # Two 1 kB uploads at once on 1 kB/s: each at half rate. Cut one at 1 s: 500 B sent, and the
    # other, with 500 B left, gets the whole medium: it drains at 1.5 s, not 2 s.
    a = traffic.start("up", Transfer(0, 0.0, 1000))
    traffic.start("up", Transfer(1, 0.0, 1000))
    assert traffic.cancel(a, 1.0) == pytest.approx(0.5)
    delivery = traffic.pop()
    assert delivery.transfer.client_id == 1 and delivery.drained_s == pytest.approx(1.5)
    assert traffic.idle()


def test_cancelling_a_transfer_on_a_trace_link_counts_its_packets_and_frees_the_rest():
    # Opportunities at 1-10 ms and at 1,000 ms, every 1,000 ms. A 25-packet upload from 0 s
    # would take the opportunities up to 2,003 ms; cut at 0.5 s it has sent 10 packets (not the
    # 0.5 / 2.003 of its time), and the link's later opportunities are free again: a one-packet
    # upload at 2 s drains at the opportunity at 2,000 ms, not behind the unsent packets.
    timestamps_ms = np.array([*range(1, 11), 1000])
    network = NetworkModel({0: TraceLink(timestamps_ms, timestamps_ms)})
    traffic = network.traffic()
    cut = traffic.start("up", Transfer(0, 0.0, 25 * MAHIMAHI_PACKET_BYTES))
    assert traffic.cancel(cut, 0.5) == pytest.approx(10 / 25)
    traffic.start("up", Transfer(0, 2.0, MAHIMAHI_PACKET_BYTES))
    assert traffic.pop().drained_s == pytest.approx(2.0)
    assert traffic.idle()


@pytest.mark.parametrize("overrides, message", [
    ({"train.algorithm": "vanilla_sl", "clients.per_round": 2}, "vanilla_sl"),
    ({"clients.over_selection": 1.5}, "without clients.per_round"),
    ({"availability.kind": "file"}, "availability.path"),
])
def test_sampling_settings_that_cannot_work_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        _config(**overrides)


def test_a_nan_loss_stops_the_run_even_when_its_step_is_dropped_after_the_server_trained(
        tmp_path, monkeypatch):
    import dataclasses

    from splitray.roles import ServerRole
    from splitray.runtime import RunDiverged

    # A gradient of 4 kB at 20 kbit/s is 1.6 s on the link: client 0 leaves half-way through,
    # after the server has trained on its payload (and its update stands).
    links = ("[{kind: constant, up_bps: 1e6, down_bps: 2e4, latency_s: 0.0}]")
    first = _run(**{"clients.count": 2, "network.links": links})
    row = first.steps[(first.steps["client_id"] == 0) & (first.steps["round"] == 0)].iloc[0]
    leave_s = row["sim_time_s"] - row["sim_client_backward_s"] - row["sim_downlink_s"] / 2
    trace = tmp_path / "online.csv"
    trace.write_text(f"client_id,start_s,end_s\n0,0,{leave_s}\n1,0,1e9\n")
    original = ServerRole.step

    def step(self, payload, client_id, step):
        grad, info = original(self, payload, client_id, step)
        return grad, dataclasses.replace(info, loss=math.nan) if client_id == 0 else info

    monkeypatch.setattr(ServerRole, "step", step)
    with pytest.raises(RunDiverged, match=r"epoch 0 step 0 \(client 0\)"):
        _run(**{"clients.count": 2, "network.links": links, "availability.kind": "file",
                "availability.path": str(trace)})


def test_a_dropped_steps_bytes_are_the_transfers_that_left_whole_and_the_cut_share():
    from splitray.runtime.context import _bytes_sent
    from splitray.runtime.timeline import StepTimes

    zero = dict.fromkeys(["start_s", "model_down_s", "client_compute_s", "client_backward_s",
                          "uplink_s", "server_wait_s", "server_compute_s", "downlink_s",
                          "model_up_s", "end_s"], 0.0)
    planned = [100, 4000, 3000, 100]
    # Refused at a tie, its upload drained within the millisecond it began (a trace link).
    refused = StepTimes(**zero, dropped="late", drained=("model_down", "up"))
    assert _bytes_sent(refused, planned) == [100, 4000, 0, 0]
    cut = StepTimes(**zero, dropped="offline", cut="down", cut_share=0.5,
                    drained=("model_down", "up"))
    assert _bytes_sent(cut, planned) == [100, 4000, 1500, 0]
    assert _bytes_sent(StepTimes(**zero, dropped="late"), planned) == [0, 0, 0, 0]
    assert _bytes_sent(StepTimes(**zero), planned) == planned


def test_progress_counts_the_steps_the_rounds_draw_late_ones_included(monkeypatch):
    from splitray.runtime.context import Progress

    seen: list[tuple[int, int]] = []
    monkeypatch.setattr(Progress, "round",
                        lambda self, epoch, done, total, sim_s: seen.append((done, total)))
    _run(**{"clients.count": 4, "clients.per_round": 2, "clients.over_selection": 2})
    # 4 clients x 3 steps, 2 a round: 6 rounds an epoch, each drawing all 4.
    assert seen[:6] == [(4 * k, 24) for k in range(1, 7)] and seen[6:] == seen[:6]
