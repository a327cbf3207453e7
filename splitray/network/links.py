"""Link types of the network model: constant-rate links, mahimahi trace links, shared media.

A link turns payload bytes into drain times on the simulated clock; `NetworkModel` decides
which transfers share which link. Rates are in bit/s, times in seconds, trace timestamps in ms.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAHIMAHI_PACKET_BYTES = 1500


def packets(nbytes: int) -> int:
    """Mahimahi delivery opportunities a payload of `nbytes` takes (any integer type: numpy's
    unsigned ones would wrap around in the negated floor division)."""
    return -(-int(nbytes) // MAHIMAHI_PACKET_BYTES)


# A start time within this many ms of a whole millisecond counts as that millisecond, so float
# round-off in start_s (e.g. 0.007 s) never skips the opportunity at that ms.
_START_TOLERANCE_MS = 1e-6


@dataclass(frozen=True)
class Transfer:
    """One payload a client sends (uplink) or receives (downlink) on the simulated clock."""

    client_id: int
    start_s: float  # simulated time the first byte may leave
    nbytes: int


def _check_rate(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive finite rate in bit/s")
    return value


def _check_delay(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} must be a finite number of seconds >= 0")
    return value


def _check_offset(offset_ms: int) -> int:
    if isinstance(offset_ms, bool) or not isinstance(offset_ms, (int, np.integer)) or offset_ms < 0:
        raise ValueError(f"offset_ms={offset_ms!r} must be an integer >= 0 ms")
    return int(offset_ms)


def _mbit(bps: float) -> str:
    return f"{bps / 1e6:.1f}"


def _delays_text(latency_s: float, jitter_s: float) -> str:
    text = f"{latency_s * 1e3:g} ms"
    if jitter_s > 0:
        text += f", jitter {jitter_s * 1e3:g} ms"
    return text


class _FixedRates:
    """Fixed up/down rates with a one-way latency and jitter, shared by the constant links."""

    def __init__(
        self, up_bps: float, down_bps: float, latency_s: float = 0.0, jitter_s: float = 0.0
    ) -> None:
        self.up_bps = _check_rate("up_bps", up_bps)
        self.down_bps = _check_rate("down_bps", down_bps)
        self.latency_s = _check_delay("latency_s", latency_s)
        self.jitter_s = _check_delay("jitter_s", jitter_s)

    def rate_bps(self, direction: str) -> float:
        """The rate in `direction` ("up" or "down"); a shared medium's total capacity."""
        return self.up_bps if direction == "up" else self.down_bps


class ConstantLink(_FixedRates):
    """A client's own link with fixed up/down rates: drain time = 8 * nbytes / rate."""

    def drain_one(self, direction: str, start_s: float, nbytes: int,
                  busy_until_s: float) -> tuple[float, float]:
        """Drain finish of a payload queued FIFO behind a link busy until `busy_until_s`;
        returns (finish, the link's new busy-until)."""
        begin_s = max(start_s, busy_until_s)
        finish_s = begin_s + 8.0 * nbytes / self.rate_bps(direction)
        return finish_s, finish_s

    def describe(self) -> str:
        """Short human-readable summary."""
        return (
            f"constant up/down {_mbit(self.up_bps)}/{_mbit(self.down_bps)} Mbit/s, "
            f"{_delays_text(self.latency_s, self.jitter_s)}"
        )


class SharedMedium(_FixedRates):
    """An access point whose capacity its clients share.

    `allocation="processor_sharing"` (default): the capacity is split equally among the
    clients with a transfer in flight, recomputed whenever one starts or ends (computed by
    `splitray.network.traffic.Traffic`). `allocation="shares"`: client k of the medium (in
    client-id order) always gets `shares[k]` of the capacity, busy or not, as an access point
    with fixed per-station allocations does; shares sum to at most 1.
    `half_duplex=False`: up and down are separate capacities; `True`: one channel carries both
    directions (as Wi-Fi does), each transfer in flight getting an equal share of airtime at
    its direction's rate.
    """

    def __init__(self, up_bps: float, down_bps: float, latency_s: float = 0.0,
                 jitter_s: float = 0.0, half_duplex: bool = False,
                 allocation: str = "processor_sharing",
                 shares: list[float] | None = None) -> None:
        super().__init__(up_bps, down_bps, latency_s, jitter_s)
        if allocation not in ("processor_sharing", "shares"):
            raise ValueError(f"allocation={allocation!r} is not allowed; use processor_sharing "
                             "or shares")
        if allocation == "shares":
            shares = [float(x) for x in shares or []]
            if not shares or any(not math.isfinite(x) or x <= 0 for x in shares):
                raise ValueError(f"shares={shares!r} must be a list of fractions > 0 when "
                                 "allocation is shares")
            if sum(shares) > 1 + 1e-9:
                raise ValueError(f"shares={shares!r} sum to {sum(shares):g}; they must sum to "
                                 "at most 1")
        elif shares is not None:
            raise ValueError("shares are only allowed with allocation: shares")
        self.half_duplex = bool(half_duplex)
        self.allocation = allocation
        self.shares = shares

    def drain_share(self, direction: str, start_s: float, nbytes: int, busy_until_s: float,
                    share: float) -> tuple[float, float]:
        """Drain finish of a payload on a fixed `share` of the capacity, FIFO behind the
        client's earlier payloads; returns (finish, the new busy-until)."""
        begin_s = max(start_s, busy_until_s)
        finish_s = begin_s + 8.0 * nbytes / (share * self.rate_bps(direction))
        return finish_s, finish_s

    def describe(self) -> str:
        """Short human-readable summary."""
        mode = " half-duplex" if self.half_duplex else ""
        if self.allocation == "shares":
            mode += f", shares {'/'.join(f'{x:g}' for x in self.shares)}"
        return (
            f"shared up/down {_mbit(self.up_bps)}/{_mbit(self.down_bps)} Mbit/s{mode}, "
            f"{_delays_text(self.latency_s, self.jitter_s)}"
        )


@functools.lru_cache(maxsize=32)
def _load_trace_cached(path: str, mtime_ns: int, size: int) -> np.ndarray:
    try:
        timestamps_ms = np.array(Path(path).read_text().split(), dtype=np.int64)
    except (ValueError, OverflowError) as err:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"mahimahi trace {path}: not a list of integer ms timestamps") from err
    _check_timestamps(timestamps_ms, f"mahimahi trace {path}")
    timestamps_ms.setflags(write=False)
    return timestamps_ms


def _check_timestamps(timestamps_ms: np.ndarray, what: str) -> None:
    if timestamps_ms.ndim != 1 or timestamps_ms.size == 0:
        raise ValueError(f"{what}: needs at least one timestamp (got shape {timestamps_ms.shape})")
    if timestamps_ms[0] < 0:
        raise ValueError(f"{what}: timestamps must be >= 0 ms (first is {timestamps_ms[0]})")
    if np.any(np.diff(timestamps_ms) < 0):
        raise ValueError(f"{what}: timestamps must be nondecreasing")
    if timestamps_ms[-1] <= 0:
        raise ValueError(f"{what}: the last timestamp (the period) must be > 0 ms")


def load_mahimahi_trace(path: str | Path) -> np.ndarray:
    """Read a mahimahi trace: one ms timestamp per line, one 1500-byte packet opportunity each.

    Returns a read-only sorted int64 array (cached per file). Raises ValueError for an empty or
    malformed trace, FileNotFoundError for a missing file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mahimahi trace {path} not found")
    stat = os.stat(path)
    return _load_trace_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def trace_mean_bps(timestamps_ms: np.ndarray) -> float:
    """Mean rate of a trace in bit/s: one packet per timestamp over one period (its last one)."""
    timestamps_ms = np.asarray(timestamps_ms)
    _check_timestamps(timestamps_ms, "trace")
    return MAHIMAHI_PACKET_BYTES * 8 * len(timestamps_ms) / (int(timestamps_ms[-1]) / 1e3)


class _PacketSchedule:
    """The infinite sequence of delivery opportunities of a trace repeated every period.

    Opportunity g (0, 1, 2, ...) is at timestamps[g % n] + (g // n) * period ms, as mm-link
    replays a trace. All lookups are O(log n), whatever the payload size or start time.
    """

    def __init__(self, timestamps_ms: np.ndarray, name: str) -> None:
        timestamps_ms = np.asarray(timestamps_ms)
        if timestamps_ms.dtype.kind == "f":
            if not np.all(np.isfinite(timestamps_ms)) or np.any(
                timestamps_ms != np.round(timestamps_ms)
            ):
                raise ValueError(f"trace {name}: timestamps must be whole milliseconds")
        elif timestamps_ms.dtype.kind not in "iu":
            raise ValueError(
                f"trace {name}: timestamps must be integers, got dtype {timestamps_ms.dtype}"
            )
        timestamps_ms = timestamps_ms.astype(np.int64)
        _check_timestamps(timestamps_ms, f"trace {name}")
        self.timestamps_ms = timestamps_ms
        self.name = name
        self.count = len(timestamps_ms)
        self.period_ms = int(timestamps_ms[-1])
        self.mean_bps = trace_mean_bps(timestamps_ms)

    def first_at_or_after(self, t_ms: int) -> int:
        """Index of the first opportunity at time >= t_ms."""
        if t_ms <= 0:
            return int(np.searchsorted(self.timestamps_ms, t_ms, side="left"))
        # The first period whose last opportunity (at its end) is >= t_ms.
        period = (t_ms - 1) // self.period_ms
        offset_ms = t_ms - period * self.period_ms  # in (0, period_ms]
        return period * self.count + int(
            np.searchsorted(self.timestamps_ms, offset_ms, side="left")
        )

    def time_ms(self, index: int) -> int:
        """Time of opportunity `index` in ms."""
        period, within = divmod(index, self.count)
        return int(self.timestamps_ms[within]) + period * self.period_ms


class TraceLink:
    """A client's own link replaying mahimahi up/down traces from simulated time 0.

    A payload needs ceil(nbytes / 1500) opportunities at or after its start (one at the start's
    own millisecond counts when the start is a whole millisecond); it drains at the last one. A
    client's transfers queue FIFO.
    """

    def __init__(
        self,
        up_trace: str | Path | np.ndarray,
        down_trace: str | Path | np.ndarray,
        latency_s: float = 0.0,
        jitter_s: float = 0.0,
        offset_ms: int = 0,
    ) -> None:
        self.up = self._schedule(up_trace, "up_trace")
        self.down = self._schedule(down_trace, "down_trace")
        self.latency_s = _check_delay("latency_s", latency_s)
        self.jitter_s = _check_delay("jitter_s", jitter_s)
        self.offset_ms = _check_offset(offset_ms)  # simulated time 0 is this far into the traces

    def shifted(self, offset_ms: int) -> TraceLink:
        """The same traces, replayed from `offset_ms` into them."""
        link = copy.copy(self)
        link.offset_ms = _check_offset(offset_ms)
        return link

    @staticmethod
    def _schedule(trace: str | Path | np.ndarray, arg: str) -> _PacketSchedule:
        if isinstance(trace, (str, Path)):
            return _PacketSchedule(load_mahimahi_trace(trace), Path(trace).name)
        if isinstance(trace, np.ndarray):
            return _PacketSchedule(trace, f"<array of {trace.size}>")
        raise ValueError(f"{arg} must be a trace path or an array of ms timestamps, got {trace!r}")

    def rate_bps(self, direction: str) -> float:
        """Mean rate of the trace in `direction` ("up" or "down")."""
        return (self.up if direction == "up" else self.down).mean_bps

    def drain_one(self, direction: str, start_s: float, nbytes: int,
                  next_free: int) -> tuple[float, int]:
        """Drain finish of a payload that may use opportunities from index `next_free` on (the
        ones before belong to earlier payloads); returns (finish, the new next free index)."""
        schedule = self.up if direction == "up" else self.down
        start_ms = math.ceil(start_s * 1e3 - _START_TOLERANCE_MS) + self.offset_ms
        first = max(schedule.first_at_or_after(start_ms), next_free)
        last = first + packets(nbytes) - 1
        return (schedule.time_ms(last) - self.offset_ms) / 1e3, last + 1

    def cut(self, direction: str, now_s: float, first: int, end: int) -> int:
        """The opportunities [first, end) of a payload cut at `now_s`: the index of the first
        one after `now_s`, so those before it were used and the rest are free again."""
        schedule = self.up if direction == "up" else self.down
        after = schedule.first_at_or_after(math.floor(now_s * 1e3 + _START_TOLERANCE_MS) + 1
                                           + self.offset_ms)
        return min(max(after, first), end)

    def describe(self) -> str:
        """Short human-readable summary."""
        return (
            f"trace {self.up.name}/{self.down.name} mean up/down "
            f"{self.up.mean_bps / 1e6:.3g}/{self.down.mean_bps / 1e6:.3g} Mbit/s, "
            + (f"from {self.offset_ms} ms, " if self.offset_ms else "")
            + f"{_delays_text(self.latency_s, self.jitter_s)}"
        )


Link = ConstantLink | TraceLink | SharedMedium
