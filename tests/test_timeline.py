"""Analytical checks of the discrete-event timeline: every simulated second traced to a formula."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from splitray.network import (
    ConstantLink,
    DeviceProfile,
    NetworkModel,
    SharedMedium,
    TraceLink,
    Transfer,
    load_mahimahi_trace,
)
from splitray.runtime.timeline import Broadcast, ServerWork, StepJob, Timeline

DEVICE = DeviceProfile("unit", 1e9, "1 GFLOP/s, for arithmetic by hand")
SERVER = DeviceProfile("unit_server", 1e10, "10 GFLOP/s")
TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "net-traces" / "cellular"
# A synthetic mahimahi trace in the repository (3 s period), so these tests need no shared data.
TRACE_FILE = Path(__file__).resolve().parent / "fixtures" / "three_second.trace"


def timeline(links: dict, devices=None, cpu_share: float = 1.0, seed: int = 0) -> Timeline:
    return Timeline(NetworkModel(links, seed=seed), devices or [DEVICE] * len(links), SERVER,
                    cpu_share=cpu_share)


def serve_fixed(server_s: float, bytes_down: int, backward_s: float):
    return lambda job: ServerWork(server_s, bytes_down, lambda: backward_s)


def one_round(tl: Timeline, forward_s, bytes_up, server_s, bytes_down, backward_s, ready_s=0.0):
    jobs = [StepJob(i, ready_s, forward_s=forward_s[i], bytes_up=bytes_up[i])
            for i in sorted(forward_s)]

    def serve(job):
        i = job.client_id
        return ServerWork(server_s[i], bytes_down[i], lambda: backward_s[i])

    return {job.client_id: t for job, t in tl.run(jobs, serve)}


def test_one_client_constant_link_step_is_sum_of_parts():
    up_bps, down_bps, latency_s = 8e6, 16e6, 0.01
    tl = timeline({0: ConstantLink(up_bps, down_bps, latency_s)}, cpu_share=0.5)
    fwd, srv, bwd = tl.client_compute_s(0, 2e8, 0), tl.server_compute_s(5e8, 0), 0.8
    t = one_round(tl, {0: fwd}, {0: 100_000}, {0: srv}, {0: 50_000}, {0: bwd})[0]
    assert fwd == pytest.approx(2e8 / (1e9 * 0.5)) and srv == pytest.approx(5e8 / 1e10)
    up = 100_000 * 8 / up_bps + latency_s
    down = 50_000 * 8 / down_bps + latency_s
    assert t.end_s == pytest.approx(fwd + up + srv + down + bwd, rel=1e-12)
    assert (t.uplink_s, t.downlink_s, t.server_wait_s) == pytest.approx((up, down, 0.0))
    assert t.client_compute_s == pytest.approx(fwd + bwd) and t.client_backward_s == bwd
    # The next step starts where this one ended.
    t2 = one_round(tl, {0: fwd}, {0: 100_000}, {0: srv}, {0: 50_000}, {0: bwd},
                   ready_s=tl.barrier([0]))[0]
    assert t2.start_s == pytest.approx(t.end_s)
    assert t2.end_s == pytest.approx(2 * t.end_s)


def test_shared_medium_n_clients_finish_at_n_s_over_c():
    n, nbytes, cap_bps, latency_s = 8, 250_000, 40e6, 0.002
    medium = SharedMedium(cap_bps, cap_bps, latency_s)
    tl = timeline(dict.fromkeys(range(n), medium))
    zero = dict.fromkeys(range(n), 0.0)
    times = one_round(tl, zero, dict.fromkeys(range(n), nbytes), zero, dict.fromkeys(range(n), 0),
                      zero)
    for i in range(n):
        assert times[i].uplink_s == pytest.approx(n * nbytes * 8 / cap_bps + latency_s, rel=1e-12)


def test_two_clients_on_a_shared_medium_starting_at_different_times():
    # 1 MB/s medium. Client 0 starts sending 3 MB at t=0; client 1 computes 1 s, then sends 1 MB.
    # 0-1: client 0 alone (1 MB). 1-3: 0.5 MB/s each, client 1 done at 3 (client 0 has sent 2 MB).
    # 3-4: client 0 alone sends its last 1 MB.
    medium = SharedMedium(8e6, 8e6, latency_s=0.1)
    tl = timeline({0: medium, 1: medium})
    times = one_round(tl, {0: 0.0, 1: 1.0}, {0: 3_000_000, 1: 1_000_000}, {0: 0.0, 1: 0.0},
                      {0: 0, 1: 0}, {0: 0.0, 1: 0.0})
    assert times[0].uplink_s == pytest.approx(4.1)
    assert times[1].uplink_s == pytest.approx(2.1)  # from 1.0 to 3.1
    # The downlinks are zero bytes: latency only, so each step ends 0.1 s after its arrival.
    assert times[1].end_s == pytest.approx(3.2) and times[0].end_s == pytest.approx(4.2)


def test_a_transfer_starting_mid_flight_slows_the_one_in_flight_on_the_same_medium():
    # The gradient of client 0 (down, 1 MB) shares the downlink with client 1's gradient, which
    # starts 0.5 s later because client 1 computed longer: both directions rate-split exactly.
    medium = SharedMedium(8e6, 8e6)
    tl = timeline({0: medium, 1: medium})
    times = one_round(tl, {0: 0.0, 1: 0.5}, {0: 0, 1: 0}, {0: 0.0, 1: 0.0},
                      {0: 1_000_000, 1: 1_000_000}, {0: 0.0, 1: 0.0})
    # 0-0.5: client 0 alone (0.5 MB); 0.5-1.5: shared (0.5 MB each) -> client 0 done at 1.5;
    # 1.5-2.0: client 1 alone sends its last 0.5 MB.
    assert times[0].end_s == pytest.approx(1.5) and times[1].end_s == pytest.approx(2.0)


def test_server_serves_in_arrival_order_ties_by_client_id():
    tl = timeline({i: ConstantLink(1e6, 1e6) for i in range(3)})
    # Client 2 computes least, so it arrives first; clients 0 and 1 tie.
    order = []

    def serve(job):
        order.append(job.client_id)
        return ServerWork(0.1, 0, lambda: 0.0)

    jobs = [StepJob(i, 0.0, forward_s=f, bytes_up=1000) for i, f in enumerate([0.2, 0.2, 0.1])]
    times = {j.client_id: t for j, t in tl.run(jobs, serve)}
    assert order == [2, 0, 1]
    assert times[2].server_wait_s == 0.0
    # 0 arrives 0.1 s after 2 and 2's service takes 0.1 s -> no wait; 1 waits for 0.
    assert times[0].server_wait_s == pytest.approx(0.0, abs=1e-12)
    assert times[1].server_wait_s == pytest.approx(0.1)


def test_a_straggler_delays_only_those_who_wait_for_it():
    # Three clients with their own links; client 2 computes 10x longer. Run 4 steps each.
    links = {i: ConstantLink(8e6, 8e6, latency_s=0.01) for i in range(3)}
    forward_s = [0.1, 0.1, 1.0]
    step_s = [f + 2 * (8 * 10_000 / 8e6 + 0.01) + 0.05 for f in forward_s]  # fwd, up, down, bwd

    def job(i, ready_s=0.0, k=0):
        return StepJob(i, ready_s, forward_s=forward_s[i], bytes_up=10_000, tag=k)

    serve = serve_fixed(0.0, 10_000, 0.05)
    # At its own pace: each client starts its next step when its last one ended.
    own = timeline(links)
    results = own.run([job(i) for i in range(3)], serve,
                      then=lambda j, t: [job(j.client_id, t.end_s, j.tag + 1)] if j.tag < 3 else [])
    ends = {(j.client_id, j.tag): t.end_s for j, t in results}
    for i in range(3):
        assert ends[(i, 3)] == pytest.approx(4 * step_s[i])
    # Synchronous rounds (parallel SL): every round waits for the straggler.
    sync = timeline(links)
    for _ in range(4):
        start = sync.barrier(range(3))
        last = {j.client_id: t for j, t in sync.run([job(i, start) for i in range(3)], serve)}
    assert last[0].start_s == pytest.approx(3 * step_s[2])
    assert last[0].end_s == pytest.approx(3 * step_s[2] + step_s[0])


def test_model_transfers_and_cache_steps_cost_what_they_say():
    tl = timeline({0: ConstantLink(8e6, 16e6, latency_s=0.0)})
    # Weights down (2 MB at 2 MB/s = 1 s), a state-C step (no client compute, nothing sent),
    # then weights up (1 MB at 1 MB/s = 1 s).
    [(_, t)] = tl.run([StepJob(0, 0.0, forward_s=0.0, bytes_up=None, learn=False,
                               bytes_model_down=2_000_000, bytes_model_up=1_000_000)],
                      serve_fixed(0.25, 999, 5.0))
    assert t.model_down_s == pytest.approx(1.0) and t.model_up_s == pytest.approx(1.0)
    assert (t.uplink_s, t.downlink_s, t.client_compute_s) == (0.0, 0.0, 0.0)
    assert t.server_compute_s == pytest.approx(0.25)
    assert t.end_s == pytest.approx(2.25)


@pytest.mark.skipif(not TRACES.is_dir(), reason="shared/data net-traces absent")
def test_trace_link_payload_drains_through_trace_packets():
    up = load_mahimahi_trace(TRACES / "Verizon-LTE-short.up")
    tl = timeline({0: TraceLink(up, up, latency_s=0.02)})
    nbytes = 1500 * 1000 + 1  # 1001 packets
    t = one_round(tl, {0: 0.5}, {0: nbytes}, {0: 0.0}, {0: 0}, {0: 0.0})[0]
    first = int(np.searchsorted(up, 500.0, side="left"))
    assert 0.5 + t.uplink_s == pytest.approx(up[first + 1000] / 1000 + 0.02, abs=1e-9)


def test_simulated_times_are_deterministic():
    def run():
        medium = SharedMedium(20e6, 20e6, 0.001, jitter_s=0.003)
        tl = timeline(dict.fromkeys(range(4), medium), seed=7)
        out = []
        for _ in range(3):
            start = tl.barrier(range(4))
            times = one_round(tl, {i: 0.1 * (i + 1) for i in range(4)},
                              dict.fromkeys(range(4), 40_000), dict.fromkeys(range(4), 0.01),
                              dict.fromkeys(range(4), 40_000), dict.fromkeys(range(4), 0.1),
                              ready_s=start)
            out.append([times[i].end_s for i in range(4)])
        return out

    assert run() == run()


def _prepared(**overrides):
    from splitray.config import load_config
    from splitray.runtime import prepare

    base = {"model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
            "data.train_samples": 64, "data.test_samples": 16, "clients.count": 3}
    base.update(overrides)
    return prepare(load_config(overrides=[f"{k}={v}" for k, v in base.items()]))


def test_config_trace_offsets_are_seeded_per_client():
    trace = {"network.links": f"[{{kind: trace, up: {TRACE_FILE}, down: {TRACE_FILE}}}]"}
    fixed = _prepared(**trace).network
    assert {fixed.link(i).offset_ms for i in range(3)} == {0}
    spread = _prepared(**trace, **{"network.trace_offset": "random"}).network
    offsets = [spread.link(i).offset_ms for i in range(3)]
    assert len(set(offsets)) == 3 and all(0 <= o < 3000 for o in offsets)
    again = _prepared(**trace, **{"network.trace_offset": "random"}).network
    assert [again.link(i).offset_ms for i in range(3)] == offsets


def test_config_shares_give_one_line_errors():
    from splitray.config import ConfigError

    shared = "{kind: shared, up_bps: 8e6, down_bps: 8e6, allocation: shares, shares: %s}"
    net = _prepared(**{"network.shared": shared % "[0.5, 0.25, 0.25]"}).network
    assert [net.share(i) for i in range(3)] == [0.5, 0.25, 0.25]
    with pytest.raises(ConfigError, match=r"^network.shared: shares: 2 given for the 3 clients"):
        _prepared(**{"network.shared": shared % "[0.5, 0.5]"})
    with pytest.raises(ConfigError, match=r"^network.shared: shares=\[0.9, 0.2, 0.1\] sum to 1.2"):
        _prepared(**{"network.shared": shared % "[0.9, 0.2, 0.1]"})


def test_server_tie_at_zero_latency_goes_to_the_lower_client_id():
    # Client 1 sends first on a slow link, client 0 later on a fast one: both arrive at 2.0 s.
    tl = timeline({0: ConstantLink(8e6, 8e6), 1: ConstantLink(4e6, 4e6)})
    order = []

    def serve(job):
        order.append(job.client_id)
        return ServerWork(0.1, 0, lambda: 0.0)

    jobs = [StepJob(0, 0.0, forward_s=1.0, bytes_up=1_000_000),
            StepJob(1, 0.0, forward_s=0.0, bytes_up=1_000_000)]
    times = {j.client_id: t for j, t in tl.run(jobs, serve)}
    assert order == [0, 1]
    assert times[1].server_wait_s == pytest.approx(0.1)


def test_a_broadcast_goes_down_once_on_a_shared_medium_and_the_backwards_wait_for_it():
    # Two clients on one medium (processor sharing), nothing up, server 1 s each, then 2 s of
    # aggregated work and a broadcast of B bytes: one transfer for both, alone on the medium.
    cap_bps, latency_s, nbytes = 8e6, 0.01, 1_000_000
    tl = timeline(dict.fromkeys(range(2), SharedMedium(cap_bps, cap_bps, latency_s)))
    jobs = [StepJob(i, 0.0, bytes_up=0) for i in range(2)]
    cast = []

    def broadcast():
        cast.append(tl.now_s)
        return Broadcast(2.0, nbytes)

    times = {job.client_id: t for job, t in tl.run(jobs, serve_fixed(1.0, 0, 0.5),
                                                    broadcast=broadcast)}
    # Payloads arrive at `latency`; the server serves 0 then 1; the broadcast work starts at 2 s.
    assert cast == [pytest.approx(latency_s + 2.0)]
    arrival_s = latency_s + 2.0 + 2.0 + nbytes * 8 / cap_bps + latency_s
    for i in range(2):
        assert times[i].end_s == pytest.approx(arrival_s + 0.5, rel=1e-12)
    # Client 0's own (empty) gradient came at 1 s + latency: it waited for the broadcast.
    assert times[0].downlink_s == pytest.approx(arrival_s - (latency_s + 1.0), rel=1e-12)
    # On own links the broadcast is one transfer per client, each at its own rate.
    tl = timeline({0: ConstantLink(cap_bps, cap_bps, 0.0), 1: ConstantLink(cap_bps, cap_bps / 2, 0.0)})
    times = {job.client_id: t for job, t in tl.run(
        [StepJob(i, 0.0, bytes_up=0) for i in range(2)], serve_fixed(1.0, 0, 0.0),
        broadcast=lambda: Broadcast(0.0, nbytes))}
    assert times[0].end_s == pytest.approx(2.0 + nbytes * 8 / cap_bps)
    assert times[1].end_s == pytest.approx(2.0 + nbytes * 8 / (cap_bps / 2))


def test_a_broadcast_on_fixed_shares_waits_for_the_unicasts_and_holds_the_whole_medium():
    # Shares of 1/2 each of 1 MB/s down: two 2 MB unicasts from 0 s drain at 4 s. A 1 MB
    # broadcast sent at 0 s takes both shares once they are idle: 4 s to 5 s, never more than
    # the medium's capacity in flight; a later unicast of client 0 queues behind it.
    medium = SharedMedium(8e6, 8e6, 0.0, allocation="shares", shares=[0.5, 0.5])
    traffic = NetworkModel(dict.fromkeys(range(2), medium)).traffic()
    for client_id in range(2):
        traffic.start("down", Transfer(client_id, 0.0, 2_000_000))
    cast = traffic.start("down", Transfer(0, 0.0, 1_000_000), to_all=True)
    later = traffic.start("down", Transfer(0, 4.5, 500_000))
    drained = {}
    while not traffic.idle():
        delivery = traffic.pop()
        drained[delivery.handle] = delivery.drained_s
    assert drained[cast] == pytest.approx(5.0)
    assert drained[later] == pytest.approx(6.0)
    assert sorted(drained.values())[:2] == [pytest.approx(4.0)] * 2


def test_the_clock_ends_where_the_last_step_ended_not_at_a_later_offline_time():
    # A step that finishes before its client would go offline leaves that time behind unused,
    # and so does a step dropped before its forward would have ended: the next round starts
    # when the last step ended.
    tl = timeline({0: ConstantLink(8e6, 8e6, 0.0)})
    [(_, kept)] = tl.run([StepJob(0, 0.0, forward_s=0.5, bytes_up=0, offline_s=5000.0)],
                         serve_fixed(0.25, 0, 0.25))
    assert kept.dropped == "" and kept.end_s == pytest.approx(1.0)
    assert tl.now_s == pytest.approx(1.0)
    tl = timeline({0: ConstantLink(8e6, 8e6, 0.0)})
    [(_, cut)] = tl.run([StepJob(0, 0.0, forward_s=100.0, bytes_up=0, offline_s=1.0)],
                        serve_fixed(0.25, 0, 0.25))
    assert cut.dropped == "offline" and cut.end_s == 1.0 and tl.now_s == 1.0


def test_going_offline_while_the_model_download_is_within_the_links_latency_drops_the_step():
    # 1,000 bytes at 8 kbit/s drain at 1 s, and arrive 1 s of latency later; offline at 1.5 s.
    tl = timeline({0: ConstantLink(8e3, 8e3, 1.0)})
    job = StepJob(0, 0.0, forward_s=0.5, bytes_up=0, bytes_model_down=1000, offline_s=1.5)
    [(_, t)] = tl.run([job], serve_fixed(0.0, 0, 0.0))
    assert (t.dropped, t.cut, t.cut_share) == ("offline", "model_down", 1.0)
    assert t.end_s == 1.5 and t.model_down_s == 1.5 and t.client_compute_s == 0.0


def test_going_offline_while_the_gradient_is_within_the_links_latency_drops_the_step():
    # Nothing goes up; 1,000 gradient bytes at 8 kbit/s drain at 1.5 s (0.5 s of latency up,
    # 0 s of server work, 1 s on the link) and would arrive at 2.0 s; offline at 1.75 s.
    tl = timeline({0: ConstantLink(8e3, 8e3, 0.5)})
    job = StepJob(0, 0.0, forward_s=0.0, bytes_up=0, offline_s=1.75)
    [(_, t)] = tl.run([job], serve_fixed(0.0, 1000, 0.5))
    assert (t.dropped, t.cut, t.cut_share) == ("offline", "down", 1.0)
    assert t.end_s == 1.75 and t.downlink_s == pytest.approx(1.25)
    assert t.client_backward_s == 0.0


def test_over_selection_takes_ties_by_client_id_and_ends_the_others_at_the_kth_arrival():
    # Clients 1 and 0 (listed in that order) arrive together at 1 s; client 2 still computes
    # and client 3 still uploads then. Keeping one: client 0 is served; 1 is refused, 2 and 3
    # end at 1 s, 3 with a quarter of its upload sent; the run ends when client 0's step does.
    tl = timeline({i: ConstantLink(8e3, 8e3, 0.0) for i in range(4)})
    jobs = [StepJob(1, 0.0, forward_s=0.5, bytes_up=500), StepJob(0, 0.0, forward_s=0.5,
                                                                  bytes_up=500),
            StepJob(2, 0.0, forward_s=5.0, bytes_up=500), StepJob(3, 0.0, forward_s=0.0,
                                                                  bytes_up=4000)]
    times = {job.client_id: t for job, t in tl.run(jobs, serve_fixed(0.25, 0, 0.25),
                                                    keep_first=1)}
    assert times[0].dropped == "" and times[0].end_s == pytest.approx(1.5)
    assert [(times[i].dropped, times[i].cut, times[i].end_s) for i in (1, 2, 3)] == [
        ("late", "", 1.0), ("late", "", 1.0), ("late", "up", 1.0)]
    assert times[3].cut_share == pytest.approx(0.25)
    assert times[2].client_compute_s == 1.0 and times[2].uplink_s == 0.0
    assert tl.now_s == pytest.approx(1.5)


def test_over_selection_ends_a_model_download_within_its_latency_as_cut():
    # Client 1's model (1,000 bytes at 8 kbit/s) drains at 1 s and would arrive at 3 s; client 0
    # delivers its payload at 1.5 s, the one kept: client 1 ends then, its model never arrived
    # (so the next step downloads it again).
    tl = timeline({0: ConstantLink(8e3, 8e3, 0.0), 1: ConstantLink(8e3, 8e3, 2.0)})
    jobs = [StepJob(0, 0.0, forward_s=1.5, bytes_up=0),
            StepJob(1, 0.0, forward_s=0.5, bytes_up=0, bytes_model_down=1000)]
    times = {job.client_id: t for job, t in tl.run(jobs, serve_fixed(0.0, 0, 0.0), keep_first=1)}
    late = times[1]
    assert times[0].dropped == "" and late.end_s == 1.5
    assert (late.dropped, late.cut, late.cut_share) == ("late", "model_down", 1.0)
    assert late.drained == ("model_down",)
    with pytest.raises(ValueError, match="keep_first closes a run of given jobs"):
        tl.run(jobs, serve_fixed(0.0, 0, 0.0), then=lambda job, times: [], keep_first=1)


def test_a_step_dropped_after_the_server_went_idle_still_lets_the_broadcast_go():
    # Client 0's payload (nothing) is served at once; client 1's is cut on the link at 0.5 s,
    # after the server went idle: the broadcast goes then, and client 0's backward follows it.
    tl = timeline({0: ConstantLink(8e3, 8e3, 0.0), 1: ConstantLink(8e3, 8e3, 0.0)})
    jobs = [StepJob(0, 0.0, bytes_up=0), StepJob(1, 0.0, bytes_up=1000, offline_s=0.5)]
    times = {job.client_id: t for job, t in tl.run(jobs, serve_fixed(0.1, 0, 0.2),
                                                    broadcast=lambda: Broadcast(0.3, 0))}
    assert sorted(times) == [0, 1]
    assert times[1].dropped == "offline" and times[1].end_s == 0.5
    assert times[0].dropped == "" and times[0].end_s == pytest.approx(0.5 + 0.3 + 0.2)


def test_a_step_without_a_gradient_cut_in_its_model_upload_spends_no_time_in_backward():
    # Async SL's kind of step: no gradient comes down, the model goes up after the server is done.
    tl = timeline({0: ConstantLink(8e3, 8e3, 0.0)})
    job = StepJob(0, 0.0, forward_s=0.5, bytes_up=0, learn=False, bytes_model_up=1000,
                  offline_s=1.0)
    [(_, t)] = tl.run([job], serve_fixed(0.25, 0, 0.0))
    assert (t.dropped, t.cut, t.cut_share) == ("offline", "model_up", pytest.approx(0.25))
    assert t.client_backward_s == 0.0 and t.downlink_s == 0.0
    assert t.model_up_s == pytest.approx(0.25) and t.client_compute_s == pytest.approx(0.5)
