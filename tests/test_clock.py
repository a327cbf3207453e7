"""Analytical checks of the virtual clock: every simulated second traced to a formula."""

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
    load_mahimahi_trace,
)
from splitray.runtime.clock import VirtualClock

DEVICE = DeviceProfile("unit", 1e9, "1 GFLOP/s, for arithmetic by hand")
SERVER = DeviceProfile("unit_server", 1e10, "10 GFLOP/s")
TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "net-traces" / "cellular"


def _round(clock: VirtualClock, fwd_flops, bytes_up, server_flops, bytes_down, bwd_flops):
    ids = sorted(fwd_flops)
    fwd_s = {i: clock.client_compute_s(i, fwd_flops[i], 0.0) for i in ids}
    arrivals = clock.uplink(fwd_s, bytes_up)
    server_s = {i: clock.server_compute_s(server_flops[i], 0.0) for i in ids}
    bwd_s = {i: clock.client_compute_s(i, bwd_flops[i], 0.0) for i in ids}
    return arrivals, clock.finish_round(fwd_s, arrivals, server_s, bytes_down, bwd_s)


def test_one_client_constant_link_step_is_sum_of_parts():
    up_bps, down_bps, latency_s = 8e6, 16e6, 0.01
    net = NetworkModel({0: ConstantLink(up_bps, down_bps, latency_s)})
    clock = VirtualClock(net, [DEVICE], SERVER, cpu_share=0.5)
    _, times = _round(clock, {0: 2e8}, {0: 100_000}, {0: 5e8}, {0: 50_000}, {0: 4e8})
    t = times[0]
    fwd = 2e8 / (1e9 * 0.5)
    up = 100_000 * 8 / up_bps + latency_s
    srv = 5e8 / 1e10
    down = 50_000 * 8 / down_bps + latency_s
    bwd = 4e8 / (1e9 * 0.5)
    assert t.end_s == pytest.approx(fwd + up + srv + down + bwd, rel=1e-12)
    assert t.uplink_s == pytest.approx(up)
    assert t.downlink_s == pytest.approx(down)
    assert t.server_wait_s == 0.0
    # The next round starts where this one ended.
    _, times2 = _round(clock, {0: 2e8}, {0: 100_000}, {0: 5e8}, {0: 50_000}, {0: 4e8})
    assert times2[0].start_s == pytest.approx(t.end_s)
    assert times2[0].end_s == pytest.approx(2 * t.end_s)


def test_shared_medium_n_clients_finish_at_n_s_over_c():
    n, nbytes, cap_bps, latency_s = 8, 250_000, 40e6, 0.002
    medium = SharedMedium(cap_bps, cap_bps, latency_s)
    net = NetworkModel(dict.fromkeys(range(n), medium))
    clock = VirtualClock(net, [DEVICE] * n, SERVER)
    zero = dict.fromkeys(range(n), 0.0)
    arrivals, times = _round(clock, zero, dict.fromkeys(range(n), nbytes), zero,
                             dict.fromkeys(range(n), 0), zero)
    for i in range(n):
        assert arrivals[i] == pytest.approx(n * nbytes * 8 / cap_bps + latency_s, rel=1e-12)
        assert times[i].uplink_s == pytest.approx(n * nbytes * 8 / cap_bps + latency_s)


def test_server_serves_in_arrival_order_ties_by_client_id():
    net = NetworkModel({i: ConstantLink(1e6, 1e6) for i in range(3)})
    clock = VirtualClock(net, [DEVICE] * 3, SERVER)
    # Client 2 computes least, so it arrives first; clients 0 and 1 tie.
    fwd = {0: 2e8, 1: 2e8, 2: 1e8}
    arrivals, times = _round(clock, fwd, dict.fromkeys(range(3), 1000), dict.fromkeys(range(3), 1e9),
                             dict.fromkeys(range(3), 0), dict.fromkeys(range(3), 0.0))
    assert clock.server_order(arrivals) == [2, 0, 1]
    assert times[2].server_wait_s == 0.0
    # 0 waits for 2's server time (0.1 s) minus the head start 2 had (0.1 s) -> 0; 1 waits for 0.
    assert times[1].server_wait_s == pytest.approx(times[0].server_wait_s + 0.1)


@pytest.mark.skipif(not TRACES.is_dir(), reason="shared/data net-traces absent")
def test_trace_link_payload_drains_through_trace_packets():
    up = load_mahimahi_trace(TRACES / "Verizon-LTE-short.up")
    net = NetworkModel({0: TraceLink(up, up, latency_s=0.02)})
    clock = VirtualClock(net, [DEVICE], SERVER)
    nbytes = 1500 * 1000 + 1  # 1001 packets
    arrivals, _ = _round(clock, {0: 5e8}, {0: nbytes}, {0: 0.0}, {0: 0}, {0: 0.0})
    start_ms = 500.0
    first = int(np.searchsorted(up, start_ms, side="left"))
    last_ms = up[first + 1000]
    assert arrivals[0] == pytest.approx(last_ms / 1000 + 0.02, abs=1e-9)


def test_simulated_times_are_deterministic():
    def run():
        medium = SharedMedium(20e6, 20e6, 0.001, jitter_s=0.003)
        net = NetworkModel(dict.fromkeys(range(4), medium), seed=7)
        clock = VirtualClock(net, [DEVICE] * 4, SERVER)
        out = []
        for _ in range(3):
            _, times = _round(clock, {i: 1e8 * (i + 1) for i in range(4)},
                              dict.fromkeys(range(4), 40_000), dict.fromkeys(range(4), 1e8),
                              dict.fromkeys(range(4), 40_000), dict.fromkeys(range(4), 1e8))
            out.append([times[i].end_s for i in range(4)])
        return out

    assert run() == run()
