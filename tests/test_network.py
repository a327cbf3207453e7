"""Tests of the network and device model: link formulas, processor sharing, traces, jitter."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from splitray.network import (
    DEVICE_PROFILES,
    LINK_PROFILES,
    MAHIMAHI_PACKET_BYTES,
    ConstantLink,
    DeviceProfile,
    NetworkModel,
    SharedMedium,
    TraceLink,
    Transfer,
    build_link,
    compute_time_s,
    get_device_profile,
    load_mahimahi_trace,
    trace_mean_bps,
)

DATA_ROOT = Path(
    os.environ.get("SPLITRAY_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data")
)
TRACES = DATA_ROOT / "net-traces" / "cellular"
needs_traces = pytest.mark.skipif(not TRACES.is_dir(), reason=f"no traces at {TRACES}")

TINY = np.array([1, 1, 2, 5])  # 4 packets per 5 ms period


def one(link, direction: str, start_s: float, nbytes: int) -> float:
    return NetworkModel({0: link}).schedule(direction, [Transfer(0, start_s, nbytes)])[0]


# ---------------------------------------------------------------- constant links


def test_constant_link_formula_both_directions():
    link = ConstantLink(up_bps=8e6, down_bps=40e6, latency_s=0.03)
    assert one(link, "up", 2.0, 1_000_000) == pytest.approx(2.0 + 8e6 / 8e6 + 0.03)
    assert one(link, "down", 2.0, 1_000_000) == pytest.approx(2.0 + 8e6 / 40e6 + 0.03)
    assert one(link, "up", 2.0, 0) == pytest.approx(2.03)


def test_constant_link_fifo_for_one_client_and_independent_clients():
    link = ConstantLink(8e6, 8e6, latency_s=0.01)
    model = NetworkModel({0: link, 1: link})  # same object, but each client has its own link
    finishes = model.schedule(
        "up",
        [Transfer(0, 0.5, 1_000_000), Transfer(0, 0.0, 1_000_000), Transfer(1, 0.0, 1_000_000)],
    )
    # Client 0: the transfer at 0.0 drains at 1.0, the one at 0.5 waits for it -> 2.0.
    assert finishes == pytest.approx([2.01, 1.01, 1.01])
    # A gap: the link is idle again when the second transfer starts.
    gap = model.schedule("up", [Transfer(0, 0.0, 1_000_000), Transfer(0, 5.0, 1_000_000)])
    assert gap == pytest.approx([1.01, 6.01])


def test_zero_bytes_cost_latency_only_and_do_not_occupy_the_link():
    link = ConstantLink(8e6, 8e6, latency_s=0.02)
    model = NetworkModel({0: link})
    finishes = model.schedule("up", [Transfer(0, 0.0, 1_000_000), Transfer(0, 0.1, 0)])
    assert finishes == pytest.approx([1.02, 0.12])
    shared = NetworkModel({0: SharedMedium(8e6, 8e6, 0.005), 1: ConstantLink(1, 1)})
    assert shared.schedule("down", [Transfer(0, 3.0, 0), Transfer(1, 1.0, 0)]) == [3.005, 1.0]


# ---------------------------------------------------------------- shared medium


@pytest.mark.parametrize("n_clients", [1, 2, 5, 8])
def test_shared_medium_simultaneous_transfers_split_capacity(n_clients):
    capacity_bps, size_bytes, latency_s = 54e6, 250_000, 0.002
    medium = SharedMedium(capacity_bps, 2 * capacity_bps, latency_s)
    model = NetworkModel(dict.fromkeys(range(n_clients), medium))
    transfers = [Transfer(c, 3.0, size_bytes) for c in range(n_clients)]
    expected = 3.0 + n_clients * size_bytes * 8 / capacity_bps + latency_s
    assert model.schedule("up", transfers) == pytest.approx([expected] * n_clients, rel=1e-12)
    expected_down = 3.0 + n_clients * size_bytes * 8 / (2 * capacity_bps) + latency_s
    assert model.schedule("down", transfers) == pytest.approx([expected_down] * n_clients)


def test_shared_medium_staggered_by_hand():
    # 1 MB/s medium. A: 3 MB at t=0; B: 1 MB at t=1.
    # 0-1: A alone, sends 1 MB. 1-3: 0.5 MB/s each, B done at 3 (A has sent 2 MB).
    # 3-4: A alone sends its last 1 MB -> 4.
    medium = SharedMedium(8e6, 8e6, latency_s=0.1)
    model = NetworkModel({0: medium, 1: medium})
    finishes = model.schedule("up", [Transfer(1, 1.0, 1_000_000), Transfer(0, 0.0, 3_000_000)])
    assert finishes == pytest.approx([3.1, 4.1])
    # Two equal transfers half a second apart: 0.5 MB alone, then share -> 1.5 and 2.0.
    staggered = model.schedule("up", [Transfer(0, 0.0, 1_000_000), Transfer(1, 0.5, 1_000_000)])
    assert staggered == pytest.approx([1.6, 2.1])


def test_shared_medium_serves_one_clients_transfers_fifo():
    # Client 0 has two 1 MB transfers, client 1 one; 1 MB/s. Clients get equal shares:
    # client 0's first and client 1's finish at 2, then client 0's second alone -> 3.
    medium = SharedMedium(8e6, 8e6)
    model = NetworkModel({0: medium, 1: medium})
    transfers = [Transfer(0, 0.0, 1_000_000), Transfer(0, 0.0, 1_000_000), Transfer(1, 0.0, 10**6)]
    assert model.schedule("up", transfers) == pytest.approx([2.0, 3.0, 2.0])


def test_separate_media_do_not_interact():
    a, b = SharedMedium(8e6, 8e6), SharedMedium(8e6, 8e6)
    model = NetworkModel({0: a, 1: a, 2: b})
    finishes = model.schedule("up", [Transfer(c, 0.0, 1_000_000) for c in range(3)])
    assert finishes == pytest.approx([2.0, 2.0, 1.0])


def reference_processor_sharing(capacity_bps, transfers):
    """Slow exact reference: track each active transfer's remaining bytes directly."""
    rate = capacity_bps / 8
    pending = sorted(range(len(transfers)), key=lambda i: (transfers[i].start_s, i))
    queues: dict[int, list[int]] = {}
    remaining: dict[int, float] = {}  # active transfer -> bytes left
    finish = [0.0] * len(transfers)
    now = 0.0
    while pending or remaining:
        next_arrival = transfers[pending[0]].start_s if pending else math.inf
        share = rate / len(remaining) if remaining else 0.0
        next_done = now + min(remaining.values()) / share if remaining else math.inf
        t = min(next_arrival, next_done)
        for i in remaining:
            remaining[i] -= (t - now) * share
        now = t
        for i in [i for i, left in remaining.items() if left <= 1e-6]:
            del remaining[i]
            finish[i] = now
            queue = queues[transfers[i].client_id]
            queue.pop(0)
            if queue:
                remaining[queue[0]] = transfers[queue[0]].nbytes
        while pending and transfers[pending[0]].start_s <= now:
            i = pending.pop(0)
            queue = queues.setdefault(transfers[i].client_id, [])
            queue.append(i)
            if len(queue) == 1:
                remaining[i] = transfers[i].nbytes
    return finish


def test_shared_medium_matches_slow_reference_on_random_workload():
    rng = np.random.default_rng(7)
    transfers = [
        Transfer(int(rng.integers(6)), float(rng.uniform(0, 5)), int(rng.integers(1, 2_000_000)))
        for _ in range(40)
    ]
    medium = SharedMedium(20e6, 20e6)
    model = NetworkModel(dict.fromkeys(range(6), medium))
    expected = reference_processor_sharing(20e6, transfers)
    assert model.schedule("up", transfers) == pytest.approx(expected, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------- traces


def test_tiny_trace_by_hand():
    link = TraceLink(TINY, TINY, latency_s=0.5)
    p = MAHIMAHI_PACKET_BYTES
    cases = [  # (start_s, nbytes, last opportunity used in ms)
        (0.0, 3 * p, 2),
        (0.0, 5 * p, 6),  # wraps: 1, 1, 2, 5 | 6
        (0.0, 3 * p + 1, 5),  # 4 packets
        (0.0, 1, 1),
        (0.001, 2 * p, 1),  # an opportunity in the start's millisecond counts
        (0.0015, p, 2),
        (0.005, 2 * p, 6),  # 5, then 5 + 1
        (0.007, 2 * p, 10),  # 7 and 10
        (0.1 + 0.007, p, 107),  # start_s * 1000 = 107.00000000000001 still counts 107
        (1000.0, p, 1_000_000),  # 200,000 periods later; the period's end is an opportunity
        (1000.0, 3 * p, 1_000_001),  # 1_000_000, then 1_000_001 twice
    ]
    for start_s, nbytes, last_ms in cases:
        assert one(link, "up", start_s, nbytes) == pytest.approx(last_ms / 1e3 + 0.5, abs=1e-9)


def test_trace_link_fifo_second_transfer_uses_later_opportunities():
    link = TraceLink(TINY, np.array([1]))
    model = NetworkModel({0: link})
    p = MAHIMAHI_PACKET_BYTES
    # First takes 1,1,2; second (start 0.001) takes 5,6,6,7,10.
    finishes = model.schedule("up", [Transfer(0, 0.001, 5 * p), Transfer(0, 0.0, 3 * p)])
    assert finishes == pytest.approx([0.010, 0.002], abs=1e-12)
    # The downlink trace "1" is one packet per ms (12 Mbit/s).
    assert one(link, "down", 0.0, 10 * p) == pytest.approx(0.010, abs=1e-12)
    assert trace_mean_bps(np.array([1])) == pytest.approx(12e6)


def reference_trace_finishes(timestamps_ms, requests):
    """Slow reference: walk the repeated trace one opportunity at a time (FIFO requests)."""
    period = int(timestamps_ms[-1])

    def opportunities():
        k = 0
        while True:
            for t in timestamps_ms:
                yield int(t) + k * period
            k += 1

    it = opportunities()
    current = next(it)
    finishes = []
    for start_s, nbytes in requests:
        start_ms = round(start_s * 1000, 6)
        while current < start_ms:
            current = next(it)
        for _ in range(math.ceil(nbytes / MAHIMAHI_PACKET_BYTES)):
            last = current
            current = next(it)
        finishes.append(last / 1000)
    return finishes


def test_trace_link_matches_slow_reference_on_tiny_random_trace():
    rng = np.random.default_rng(3)
    trace = np.sort(rng.integers(0, 40, size=25))
    trace[0], trace[-1] = 0, 41  # an opportunity at 0 coincides with the previous period's end
    requests = sorted(
        (float(rng.integers(0, 300)) / 1000, int(rng.integers(1, 40_000))) for _ in range(12)
    )
    link = TraceLink(trace, trace)
    transfers = [Transfer(0, s, n) for s, n in requests]
    got = NetworkModel({0: link}).schedule("up", transfers)
    assert got == pytest.approx(reference_trace_finishes(trace, requests), abs=1e-12)


@needs_traces
def test_real_trace_matches_slow_reference():
    path = TRACES / "Verizon-LTE-short.up"
    trace = load_mahimahi_trace(path)
    period_s = trace[-1] / 1000
    # From 0, across the wrap at the period's end, two periods later, and a FIFO pair.
    requests = [
        (0.0, 3_000_000),
        (period_s - 0.5, 2_000_000),
        (2.5 * period_s, 5_000_000),
        (2.5 * period_s + 0.1, 1_000_000),
    ]
    link = TraceLink(path, path)
    got = NetworkModel({0: link}).schedule("up", [Transfer(0, s, n) for s, n in requests])
    assert got == pytest.approx(reference_trace_finishes(trace, requests), abs=1e-12)


@needs_traces
@pytest.mark.parametrize("name", ["TMobile-LTE-short.up", "ATT-LTE-driving.down"])
def test_real_trace_long_run_rate_is_trace_mean(name):
    trace = load_mahimahi_trace(TRACES / name)
    link = TraceLink(trace, trace)
    nbytes = 100 * len(trace) * MAHIMAHI_PACKET_BYTES  # 100 periods' worth: GBs, O(1) to compute
    for start_s in (12.345, 1e6):
        began = time.perf_counter()
        finish_s = one(link, "up", start_s, nbytes)
        assert time.perf_counter() - began < 0.1
        rate_bps = nbytes * 8 / (finish_s - start_s)
        assert rate_bps == pytest.approx(trace_mean_bps(trace), rel=0.01)


def test_load_mahimahi_trace_and_bad_files(tmp_path):
    good = tmp_path / "good.up"
    good.write_text("1\n1\n\n2\n5\n")
    np.testing.assert_array_equal(load_mahimahi_trace(good), TINY)
    assert load_mahimahi_trace(good).dtype == np.int64
    assert trace_mean_bps(load_mahimahi_trace(good)) == pytest.approx(1500 * 8 * 4 / 0.005)
    for name, text in [
        ("empty", ""),
        ("decreasing", "3\n2\n"),
        ("float", "1.5\n"),
        ("zero_period", "0\n0\n"),
        ("text", "a\n"),
        ("too_large", "1\n99999999999999999999\n"),
    ]:
        bad = tmp_path / name
        bad.write_text(text)
        with pytest.raises(ValueError, match=name):
            load_mahimahi_trace(bad)
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe1\n")
    with pytest.raises(ValueError, match="binary: not a list of integer ms timestamps"):
        load_mahimahi_trace(binary)
    with pytest.raises(FileNotFoundError):
        load_mahimahi_trace(tmp_path / "missing.up")
    with pytest.raises(ValueError):
        TraceLink(np.array([3, 1]), TINY)
    with pytest.raises(ValueError):
        TraceLink(np.array([1.5, 2.0]), TINY)


@needs_traces
def test_real_trace_mean_rates_match_data_readme():
    assert trace_mean_bps(load_mahimahi_trace(TRACES / "ATT-LTE-driving.up")) == pytest.approx(
        0.83e6, rel=0.01
    )
    assert trace_mean_bps(load_mahimahi_trace(TRACES / "Verizon-LTE-short.down")) == pytest.approx(
        5.03e6, rel=0.01
    )


# ---------------------------------------------------------------- jitter and determinism


def jitter_model(seed: int, jitter: bool = True) -> NetworkModel:
    scale = 1.0 if jitter else 0.0
    medium = SharedMedium(50e6, 50e6, latency_s=0.002, jitter_s=0.004 * scale)
    links = dict.fromkeys(range(4), medium)
    links.update({c: ConstantLink(10e6, 20e6, 0.01, jitter_s=0.02 * scale) for c in range(4, 8)})
    links[8] = TraceLink(TINY, TINY, jitter_s=0.001 * scale)
    return NetworkModel(links, seed=seed)


def jitter_transfers() -> list[Transfer]:
    rng = np.random.default_rng(1)
    return [Transfer(c, float(rng.uniform(0, 1)), int(rng.integers(0, 300_000))) for c in range(9)]


def test_jitter_deterministic_by_seed_and_independent_of_list_order():
    transfers = jitter_transfers()
    a = jitter_model(0).schedule("up", transfers)
    assert jitter_model(0).schedule("up", transfers) == a
    assert jitter_model(1).schedule("up", transfers) != a
    order = [5, 2, 8, 0, 7, 1, 3, 6, 4]
    shuffled = jitter_model(0).schedule("up", [transfers[i] for i in order])
    assert shuffled == [a[i] for i in order]
    # Jitter is nonnegative: every finish is at least drain + latency.
    floor = jitter_model(0, jitter=False).schedule("up", transfers)
    assert all(x >= f for x, f in zip(a, floor, strict=True))
    assert all(x > f for x, f in zip(a, floor, strict=True))


def test_jitter_is_half_normal_with_scale_jitter_s():
    jitter_s = 0.01
    model = NetworkModel({c: ConstantLink(1e9, 1e9, 0.0, jitter_s) for c in range(4000)}, seed=5)
    finishes = np.array(model.schedule("up", [Transfer(c, 1.0, 0) for c in range(4000)]))
    extra = finishes - 1.0
    assert extra.min() >= 0
    assert extra.mean() == pytest.approx(jitter_s * math.sqrt(2 / math.pi), rel=0.05)


# ---------------------------------------------------------------- validation, describe


def test_schedule_rejects_bad_input():
    model = NetworkModel({0: ConstantLink(1e6, 1e6)})
    for direction, transfer in [
        ("sideways", Transfer(0, 0.0, 1)),
        ("up", Transfer(9, 0.0, 1)),
        ("up", Transfer(0, -1.0, 1)),
        ("up", Transfer(0, math.nan, 1)),
        ("up", Transfer(0, 0.0, -5)),
        ("up", Transfer(0, 0.0, 1.5)),
    ]:
        with pytest.raises(ValueError):
            model.schedule(direction, [transfer])
    with pytest.raises(ValueError):
        ConstantLink(0, 1e6)
    with pytest.raises(ValueError):
        SharedMedium(1e6, 1e6, latency_s=-1)
    with pytest.raises(ValueError):
        NetworkModel({0: "lte"})


def test_describe():
    medium = SharedMedium(54e6, 54e6, latency_s=0.002)
    model = NetworkModel({0: medium, 1: medium, 2: ConstantLink(8e6, 30e6, 0.025, 0.005)})
    assert model.describe(0) == "shared up/down 54.0/54.0 Mbit/s, 2 ms, 2 clients"
    assert model.describe(2) == "constant up/down 8.0/30.0 Mbit/s, 25 ms, jitter 5 ms"
    with pytest.raises(ValueError):
        model.describe(7)


# ---------------------------------------------------------------- profiles and build_link


@pytest.mark.parametrize("name", sorted(LINK_PROFILES))
def test_build_link_every_profile(name):
    spec = LINK_PROFILES[name]
    if spec["kind"] == "trace" and not TRACES.is_dir():
        pytest.skip(f"no traces at {TRACES}")
    link = build_link(name, traces_root=TRACES)
    expected = {"constant": ConstantLink, "shared": SharedMedium, "trace": TraceLink}[spec["kind"]]
    assert isinstance(link, expected)
    assert link.latency_s == spec.get("latency_s", 0.0)
    if spec["kind"] == "trace":
        assert link.rate_bps("up") == pytest.approx(
            trace_mean_bps(load_mahimahi_trace(TRACES / spec["up"]))
        )
    else:
        assert (link.up_bps, link.down_bps) == (spec["up_bps"], spec["down_bps"])


def test_build_link_from_dicts():
    link = build_link({"kind": "constant", "up_bps": 5e6, "down_bps": 7e6, "jitter_s": 0.001})
    assert isinstance(link, ConstantLink) and link.jitter_s == 0.001 and link.latency_s == 0.0
    assert isinstance(build_link({"kind": "shared", "up_bps": 1, "down_bps": 2}), SharedMedium)


def test_build_link_trace_paths(tmp_path, monkeypatch):
    (tmp_path / "net-traces" / "cellular").mkdir(parents=True)
    (tmp_path / "net-traces" / "cellular" / "t.up").write_text("1\n1\n2\n5\n")
    spec = {"kind": "trace", "up": "t.up", "down": "t.up", "latency_s": 0.01}
    monkeypatch.setenv("SPLITRAY_DATA", str(tmp_path))
    link = build_link(spec)  # relative to $SPLITRAY_DATA/net-traces/cellular
    assert one(link, "up", 0.0, 3 * MAHIMAHI_PACKET_BYTES) == pytest.approx(0.012)
    absolute_path = str(tmp_path / "net-traces" / "cellular" / "t.up")
    absolute = dict(spec, up=absolute_path, down=absolute_path)
    assert isinstance(build_link(absolute, traces_root="/nonexistent"), TraceLink)
    monkeypatch.delenv("SPLITRAY_DATA")
    with pytest.raises(FileNotFoundError, match="SPLITRAY_DATA"):
        build_link(spec, traces_root=tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "spec, key",
    [
        ("no_such_profile", "no_such_profile"),
        ({"up_bps": 1, "down_bps": 1}, "kind"),
        ({"kind": "radio", "up_bps": 1, "down_bps": 1}, "kind"),
        ({"kind": "constant", "up_bps": 1}, "down_bps"),
        ({"kind": "constant", "up_bps": 1, "down_bps": 1, "bandwidth": 3}, "bandwidth"),
        ({"kind": "shared", "up_bps": -1, "down_bps": 1}, "up_bps"),
        ({"kind": "constant", "up_bps": "fast", "down_bps": 1}, "up_bps"),
        ({"kind": "constant", "up_bps": 1, "down_bps": 1, "latency_s": -0.1}, "latency_s"),
        ({"kind": "trace", "up": "a.up"}, "down"),
        ({"kind": "trace", "up": "a", "down": "b", "up_bps": 1}, "up_bps"),
        (42, "42"),
    ],
)
def test_build_link_bad_specs_name_the_key(spec, key):
    with pytest.raises(ValueError, match=key):
        build_link(spec)


# ---------------------------------------------------------------- devices


def test_network_package_imports_neither_ray_nor_torch():
    code = "import sys, splitray.network; print('ray' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_device_profiles_present_and_ordered():
    required = [
        "raspberry_pi_4",
        "jetson_nano",
        "phone_midrange",
        "laptop_cpu",
        "server_cpu",
        "datacenter_gpu",
    ]
    for name in required:
        profile = DEVICE_PROFILES[name]
        assert profile.name == name and profile.flops_per_s > 0 and len(profile.description) > 40
    speed = {n: DEVICE_PROFILES[n].flops_per_s for n in required}
    assert speed["raspberry_pi_4"] < speed["laptop_cpu"] < speed["server_cpu"]
    assert speed["server_cpu"] < speed["datacenter_gpu"]
    assert speed["raspberry_pi_4"] < speed["jetson_nano"]


def test_compute_time_and_cpu_share():
    pi = get_device_profile("raspberry_pi_4")
    assert compute_time_s(3e9, pi) == pytest.approx(3e9 / pi.flops_per_s)
    assert compute_time_s(3e9, pi, cpu_share=0.4) == pytest.approx(3e9 / (0.4 * pi.flops_per_s))
    assert compute_time_s(0, pi) == 0.0
    for share in (0.0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="cpu_share"):
            compute_time_s(1e9, pi, cpu_share=share)
    with pytest.raises(ValueError, match="flops"):
        compute_time_s(-1.0, pi)


def test_get_device_profile_custom_and_bad():
    custom = get_device_profile({"name": "fpga", "flops_per_s": 2e11, "description": "mine"})
    assert custom == DeviceProfile("fpga", 2e11, "mine")
    assert get_device_profile({"name": "jetson_nano"}) is DEVICE_PROFILES["jetson_nano"]
    for spec, key in [
        ("abacus", "abacus"),
        ({"name": "x", "flops_per_s": 0}, "flops_per_s"),
        ({"name": "x", "flops_per_s": 1e9, "speed": 2}, "speed"),
        ({"flops_per_s": 1e9}, "name"),
    ]:
        with pytest.raises(ValueError, match=key):
            get_device_profile(spec)


# ---------------------------------------------------------------- half-duplex, shares, offsets


def both_directions(model: NetworkModel, up: Transfer, down: Transfer) -> tuple[float, float]:
    """Arrival of an upload and a download in flight together on one model's links."""
    traffic = model.traffic()
    handles = {traffic.start("up", up): "up", traffic.start("down", down): "down"}
    arrivals = {}
    while not traffic.idle():
        d = traffic.pop()
        arrivals[handles[d.handle]] = d.arrival_s
    return arrivals["up"], arrivals["down"]


def test_half_duplex_medium_shares_airtime_between_directions():
    # 1 MB/s up, 2 MB/s down. Full duplex: independent (1.0 s and 0.5 s). Half duplex: each
    # transfer gets half the airtime: the download (1 MB at 1 MB/s) ends at 1.0 s, having let
    # the upload send 0.5 MB; the upload's last 0.5 MB then goes alone at 1 MB/s -> 1.5 s.
    up, down = Transfer(0, 0.0, 1_000_000), Transfer(1, 0.0, 1_000_000)
    full = SharedMedium(8e6, 16e6)
    assert both_directions(NetworkModel({0: full, 1: full}), up, down) == pytest.approx((1.0, 0.5))
    half = SharedMedium(8e6, 16e6, half_duplex=True)
    assert both_directions(NetworkModel({0: half, 1: half}), up, down) == pytest.approx((1.5, 1.0))
    # One client's own upload and download also compete on a half-duplex channel.
    assert both_directions(NetworkModel({0: half}), up, Transfer(0, 0.0, 1_000_000)) == \
        pytest.approx((1.5, 1.0))


def test_fixed_shares_do_not_depend_on_who_else_is_busy():
    medium = SharedMedium(8e6, 8e6, allocation="shares", shares=[0.75, 0.25])
    model = NetworkModel({0: medium, 1: medium})
    both = model.schedule("up", [Transfer(0, 0.0, 1_000_000), Transfer(1, 0.0, 1_000_000)])
    assert both == pytest.approx([1 / 0.75, 1 / 0.25])
    alone = model.schedule("up", [Transfer(1, 0.0, 1_000_000)])
    assert alone == pytest.approx([4.0])  # an idle neighbour's share is not lent out
    # FIFO within a client's share.
    two = model.schedule("up", [Transfer(0, 0.0, 750_000), Transfer(0, 0.0, 750_000)])
    assert two == pytest.approx([1.0, 2.0])


@pytest.mark.parametrize("spec, message", [
    ({"allocation": "shares", "shares": [0.7, 0.6]}, "sum to 1.3"),
    ({"allocation": "shares", "shares": [0.5, -0.1]}, "fractions > 0"),
    ({"allocation": "shares"}, "fractions > 0"),
    ({"shares": [0.5, 0.5]}, "only allowed with allocation: shares"),
    ({"allocation": "fair"}, "allocation='fair' is not allowed"),
    ({"half_duplex": "yes"}, "half_duplex='yes' must be true or false"),
])
def test_bad_shared_medium_specs_fail_with_one_line(spec, message):
    with pytest.raises(ValueError, match=message):
        build_link({"kind": "shared", "up_bps": 1e6, "down_bps": 1e6, **spec})


def test_shares_need_one_share_per_client_of_the_medium():
    medium = SharedMedium(8e6, 8e6, allocation="shares", shares=[0.5, 0.5])
    with pytest.raises(ValueError, match="2 given for the 3 clients"):
        NetworkModel(dict.fromkeys(range(3), medium))


def test_trace_offset_replays_the_trace_from_later_on():
    link = TraceLink(TINY, TINY)  # opportunities at 1, 1, 2, 5 ms, period 5 ms
    shifted = link.shifted(2)     # time 0 is trace ms 2: opportunities at 0, 3, 4, 4, 5, 8, ...
    one_packet = [Transfer(0, 0.0, 1500)]
    assert NetworkModel({0: link}).schedule("up", one_packet) == pytest.approx([0.001])
    assert NetworkModel({0: shifted}).schedule("up", one_packet) == pytest.approx([0.0])
    four = [Transfer(0, 0.0, 4 * 1500)]
    assert NetworkModel({0: shifted}).schedule("up", four) == pytest.approx([0.004])
    assert "from 2 ms" in shifted.describe() and link.offset_ms == 0
    with pytest.raises(ValueError, match="offset_ms"):
        link.shifted(-1)
