"""Client availability: interval files, synthetic exponential traces, lazy extension and client sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitray.availability import Availability, sample_clients

HAND_WRITTEN = """client_id,start_s,end_s
0,30,inf
0,10,20
2,50,60
2,5,7

3,0,10
3,10,15
"""


def _write(tmp_path, text: str):
    path = tmp_path / "availability.csv"
    path.write_text(text)
    return path


@pytest.fixture
def from_hand_written(tmp_path) -> Availability:
    return Availability.from_file(_write(tmp_path, HAND_WRITTEN), num_clients=5)


def test_file_intervals_start_inclusive_end_exclusive(from_hand_written):
    av = from_hand_written
    expected = {(0, 0.0): False, (0, 9.999): False, (0, 10.0): True, (0, 19.999): True, (0, 20.0): False,
                (0, 29.0): False, (0, 30.0): True, (0, 1e12): True,
                (2, 4.0): False, (2, 5.0): True, (2, 7.0): False, (2, 50.0): True, (2, 60.0): False,
                (3, 0.0): True, (3, 10.0): True, (3, 15.0): False}
    assert {key: av.online(*key) for key in expected} == expected


def test_file_offline_after(from_hand_written):
    av = from_hand_written
    assert av.offline_after(0, 10.0) == 20.0
    assert av.offline_after(0, 15.0) == 20.0
    assert av.offline_after(0, 20.0) == 20.0  # offline at t: t itself
    assert av.offline_after(0, 25.0) == 25.0
    assert av.offline_after(0, 30.0) == math.inf
    assert av.offline_after(2, 5.0) == 7.0
    assert av.offline_after(3, 0.0) == 15.0  # touching intervals [0, 10) and [10, 15) are one


def test_clients_not_in_file_are_always_online(from_hand_written):
    av = from_hand_written
    assert av.online(1, 0.0) and av.online(4, 1e9)
    assert av.offline_after(1, 123.0) == math.inf
    assert av.online_clients(8.0) == [1, 3, 4]
    assert av.online_clients(12.0) == [0, 1, 3, 4]


@pytest.mark.parametrize("body, line_no", [
    ("", 1),                                              # no header at all
    ("client,start,end\n0,1,2\n", 1),                     # bad header
    ("client_id,start_s,end_s\n0,1,2\n0,abc,5\n", 3),     # non-numeric start_s
    ("client_id,start_s,end_s\n0,1,nan\n", 2),            # NaN end_s
    ("client_id,start_s,end_s\nx,1,2\n", 2),              # non-integer client_id
    ("client_id,start_s,end_s\n0,1\n", 2),                # missing field
    ("client_id,start_s,end_s\n5,0,1\n", 2),              # client_id too large
    ("client_id,start_s,end_s\n-1,0,1\n", 2),             # negative client_id
    ("client_id,start_s,end_s\n0,5,5\n", 2),              # end_s == start_s
    ("client_id,start_s,end_s\n0,5,4\n", 2),              # end_s < start_s
    ("client_id,start_s,end_s\n0,-1,5\n", 2),             # negative start_s
    ("client_id,start_s,end_s\n0,0,10\n1,0,1\n0,5,15\n", 4),  # overlap, later line in file order
    ("client_id,start_s,end_s\n0,5,15\n0,0,10\n", 3),     # overlap, lines out of time order
])
def test_file_errors_name_file_and_line(tmp_path, body, line_no):
    path = _write(tmp_path, body)
    with pytest.raises(ValueError) as err:
        Availability.from_file(path, num_clients=5)
    message = str(err.value)
    assert message.startswith(f"{path}:{line_no}: ")
    assert "\n" not in message


def test_always_online():
    av = Availability.always_online(4)
    assert av.num_clients == 4
    assert av.online_clients(0.0) == av.online_clients(1e9) == [0, 1, 2, 3]
    assert av.online(3, 5.0) and av.offline_after(3, 5.0) == math.inf


def test_bad_arguments_raise():
    av = Availability.always_online(3)
    with pytest.raises(ValueError):
        av.online(3, 0.0)
    with pytest.raises(ValueError):
        av.offline_after(0, -1.0)
    with pytest.raises(ValueError):
        av.online_clients(math.nan)
    with pytest.raises(ValueError):
        Availability.synthetic(3, mean_on_s=0.0, mean_off_s=1.0, seed=0)
    with pytest.raises(ValueError):
        sample_clients([1, 2], -1, np.random.default_rng(0))


def test_synthetic_same_seed_same_traces_different_seed_different():
    a, b, c = (Availability.synthetic(4, 50.0, 50.0, seed) for seed in (7, 7, 8))
    for client in range(4):
        assert a.intervals(client, 5000.0) == b.intervals(client, 5000.0)
    assert [a.intervals(k, 5000.0) for k in range(4)] != [c.intervals(k, 5000.0) for k in range(4)]


def test_synthetic_trace_unchanged_when_clients_added():
    few, many = Availability.synthetic(3, 20.0, 40.0, 1), Availability.synthetic(300, 20.0, 40.0, 1)
    for client in range(3):
        assert few.intervals(client, 2000.0) == many.intervals(client, 2000.0)


def test_synthetic_long_run_online_fraction_and_period_means():
    mean_on_s, mean_off_s, horizon_s, n = 30.0, 70.0, 20_000.0, 200
    av = Availability.synthetic(n, mean_on_s, mean_off_s, seed=3)
    on_lengths_s, off_lengths_s, online_s = [], [], 0.0
    for client in range(n):
        spans = av.intervals(client, horizon_s)
        on_lengths_s += [end - start for start, end in spans]
        off_lengths_s += [nxt[0] - cur[1] for cur, nxt in zip(spans[:-1], spans[1:], strict=True)]
        online_s += sum(min(end, horizon_s) - start for start, end in spans)
    assert online_s / (n * horizon_s) == pytest.approx(mean_on_s / (mean_on_s + mean_off_s), abs=0.01)
    assert np.mean(on_lengths_s) == pytest.approx(mean_on_s, rel=0.03)
    assert np.mean(off_lengths_s) == pytest.approx(mean_off_s, rel=0.03)


def test_synthetic_starts_in_the_stationary_share():
    av = Availability.synthetic(2000, 30.0, 70.0, seed=4)
    for t_s in (0.0, 5000.0):
        assert len(av.online_clients(t_s)) / 2000 == pytest.approx(0.3, abs=0.04)


def test_synthetic_offline_after_is_the_first_offline_time():
    av = Availability.synthetic(20, 10.0, 10.0, seed=5)
    for client in range(20):
        for t_s in (0.0, 3.5, 40.0, 900.0):
            end_s = av.offline_after(client, t_s)
            if av.online(client, t_s):
                assert end_s > t_s and not av.online(client, end_s)
                assert av.online(client, math.nextafter(end_s, 0.0))
            else:
                assert end_s == t_s


def test_lazy_extension_far_future_then_back_in_time():
    times_s = [0.0, 1.0, 77.7, 500.0, 4321.0, 2e5, 1e6]
    far_first = Availability.synthetic(3, 100.0, 100.0, seed=9)
    in_order = Availability.synthetic(3, 100.0, 100.0, seed=9)

    def answers(av: Availability, t_s: float) -> dict:
        return {c: (av.online(c, t_s), av.offline_after(c, t_s)) for c in range(3)}

    far_answers = answers(far_first, 1e6)  # the first query of far_first is far in the future
    back = [answers(far_first, t_s) for t_s in times_s]
    forward = [answers(in_order, t_s) for t_s in times_s]
    assert back == forward
    assert far_answers == forward[-1]


def test_synthetic_generates_only_as_far_as_queried():
    av = Availability.synthetic(2, 10.0, 10.0, seed=2)
    av.online(0, 50.0)
    assert av._traces[0].known_until_s < 10_000.0  # a chunk of 64 periods is ~640 s here
    assert av._traces[1].known_until_s == 0.0        # an unqueried client has drawn no periods


def test_forgetting_the_past_keeps_memory_bounded_and_answers_unchanged():
    kept = Availability.synthetic(2, 10.0, 5.0, seed=4)
    forgetful = Availability.synthetic(2, 10.0, 5.0, seed=4)
    times_s = [float(t) for t in range(0, 20_000, 7)]
    held = []
    for t_s in times_s:
        assert forgetful.offline_after(0, t_s) == kept.offline_after(0, t_s)
        assert forgetful.online_after(1, t_s) == kept.online_after(1, t_s)
        forgetful.forget_before(t_s)
        held.append(len(forgetful._traces[0].starts_s))
    assert len(kept._traces[0].starts_s) > 1000   # ~1,300 periods in 20,000 s
    assert max(held) <= 64 + 1                     # never more than one chunk's worth
    # A rollback asks about the forgotten past: the trace is drawn again, the same.
    assert [forgetful.online(0, t_s) for t_s in times_s[:50]] == [kept.online(0, t_s) for t_s in times_s[:50]]
    assert forgetful.intervals(1, 3000.0) == kept.intervals(1, 3000.0)


@pytest.mark.parametrize("t_s", [0.0, 55.0, 3000.0])
def test_online_clients_matches_online(from_hand_written, t_s):
    for av in (Availability.synthetic(300, 20.0, 30.0, seed=6), from_hand_written):
        assert av.online_clients(t_s) == [c for c in range(av.num_clients) if av.online(c, t_s)]


def test_sample_clients_distinct_sorted_subset():
    online = [1, 4, 5, 9, 12, 20]
    picked = sample_clients(online, 3, np.random.default_rng(0))
    assert len(picked) == len(set(picked)) == 3
    assert picked == sorted(picked) and set(picked) <= set(online)


def test_sample_clients_returns_all_when_fewer_online():
    assert sample_clients([7, 2, 5], 10, np.random.default_rng(0)) == [2, 5, 7]
    assert sample_clients([], 4, np.random.default_rng(0)) == []


def test_sample_clients_reproducible_and_uniform():
    online = list(range(0, 12, 2))
    assert sample_clients(online, 3, np.random.default_rng(11)) == sample_clients(
        online, 3, np.random.default_rng(11))
    rng = np.random.default_rng(12)
    counts = np.zeros(12)
    for _ in range(3000):
        counts[sample_clients(online, 2, rng)] += 1
    assert counts[online] == pytest.approx(np.full(6, 3000 * 2 / 6), rel=0.1)
