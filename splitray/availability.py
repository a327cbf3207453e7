"""Client availability on the simulated clock: who is online when, and sampling among those online.

Each client is online during half-open intervals [start_s, end_s) of simulated seconds: online at start_s,
offline at end_s. Each round the orchestrator samples among `online_clients(round_start_s)`, and a client's
step is dropped if `offline_after(client_id, round_start_s)` falls before the step ends.

Build one with `Availability.always_online`, `Availability.synthetic` or `Availability.from_file`.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from os import PathLike

import numpy as np

_HEADER = ("client_id", "start_s", "end_s")
# Periods drawn per extension of a synthetic trace. Fixed, so a trace is the same whatever the queries were.
_CHUNK_PERIODS = 64


class _Trace:
    """One client's online intervals (sorted, disjoint, not touching), complete for times < known_until_s."""

    __slots__ = ("starts_s", "ends_s", "known_until_s")

    def __init__(self, known_until_s: float = math.inf) -> None:
        self.starts_s: list[float] = []
        self.ends_s: list[float] = []
        self.known_until_s = known_until_s

    def add(self, start_s: float, end_s: float) -> None:
        """Append an interval that starts at or after the last one, merging the two if they touch."""
        if end_s <= start_s:
            return
        if self.ends_s and start_s <= self.ends_s[-1]:
            self.ends_s[-1] = max(self.ends_s[-1], end_s)
        else:
            self.starts_s.append(start_s)
            self.ends_s.append(end_s)

    def extend(self, t_s: float) -> None:
        """Make the trace complete past t_s; a fixed trace already is."""

    def forget_before(self, t_s: float) -> None:
        """Let go of the intervals over before t_s; a fixed trace keeps them (its size is the file's)."""

    def index(self, t_s: float) -> int:
        """Index of the interval that contains t_s, or -1 if the client is offline at t_s."""
        if t_s >= self.known_until_s:
            self.extend(t_s)
        i = bisect_right(self.starts_s, t_s) - 1
        return i if i >= 0 and t_s < self.ends_s[i] else -1


class _SyntheticTrace(_Trace):
    """Alternating exponential online/offline periods, drawn lazily in fixed-size chunks from one rng.

    A long run forgets the periods over before its last epoch (`forget_before`), so the trace's
    memory does not grow with simulated time; a query before what was forgotten (a rollback to
    an earlier epoch) draws the trace again from its seed, which gives the same periods.
    """

    __slots__ = ("_seed", "_rng", "_mean_on_s", "_mean_off_s", "_next_online", "_forgotten_until_s")

    def __init__(self, seed: list[int], mean_on_s: float, mean_off_s: float) -> None:
        super().__init__()
        self._seed = seed
        self._mean_on_s = mean_on_s
        self._mean_off_s = mean_off_s
        self._rewind()

    def _rewind(self) -> None:
        """Back to time 0 with nothing drawn."""
        self.starts_s, self.ends_s, self.known_until_s = [], [], 0.0
        self._forgotten_until_s = 0.0
        self._rng = np.random.default_rng(self._seed)
        # Start in the stationary state; by memorylessness the first period's remainder is again exponential.
        self._next_online = bool(self._rng.random() < self._mean_on_s / (self._mean_on_s + self._mean_off_s))

    def forget_before(self, t_s: float) -> None:
        keep = bisect_right(self.ends_s, t_s)  # intervals [start, end) with end <= t_s are over
        if keep:
            del self.starts_s[:keep], self.ends_s[:keep]
        self._forgotten_until_s = max(self._forgotten_until_s, min(t_s, self.known_until_s))

    def index(self, t_s: float) -> int:
        if t_s < self._forgotten_until_s:
            self._rewind()
        return super().index(t_s)

    def extend(self, t_s: float) -> None:
        while self.known_until_s <= t_s:
            now_s = self.known_until_s
            for draw in self._rng.standard_exponential(_CHUNK_PERIODS).tolist():
                if self._next_online:
                    end_s = now_s + draw * self._mean_on_s
                    self.add(now_s, end_s)
                    now_s = end_s
                else:
                    now_s += draw * self._mean_off_s
                self._next_online = not self._next_online
            self.known_until_s = now_s


class Availability:
    """Per-client online intervals on the simulated clock; clients without a trace are always online."""

    def __init__(self, num_clients: int, traces: dict[int, _Trace] | None = None) -> None:
        if num_clients < 0:
            raise ValueError(f"num_clients must be >= 0, got {num_clients}")
        self._num_clients = num_clients
        self._traces: list[_Trace | None] = [None] * num_clients
        for client_id, trace in (traces or {}).items():
            self._traces[client_id] = trace

    @classmethod
    def always_online(cls, num_clients: int) -> Availability:
        """Every client online at every time (the default when availability is not modelled)."""
        return cls(num_clients)

    @classmethod
    def synthetic(cls, num_clients: int, mean_on_s: float, mean_off_s: float, seed: int) -> Availability:
        """Each client alternates exponential online/offline periods with these means, starting stationary.

        Client c draws from `np.random.default_rng([seed, c])`, so its trace depends only on (seed, c).
        """
        for name, value in (("mean_on_s", mean_on_s), ("mean_off_s", mean_off_s)):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be positive and finite, got {value}")
        traces: dict[int, _Trace] = {
            c: _SyntheticTrace([seed, c], mean_on_s, mean_off_s) for c in range(num_clients)
        }
        return cls(num_clients, traces)

    @classmethod
    def from_file(cls, path: str | PathLike[str], num_clients: int) -> Availability:
        """Read online intervals from a CSV with header `client_id,start_s,end_s` (end_s may be `inf`).

        Clients listed are online exactly in their intervals; clients not listed are always online.
        Raises ValueError naming the file and line of the first problem.
        """
        traces: dict[int, _Trace] = {}
        for client_id, rows in _read_interval_rows(path, num_clients).items():
            rows.sort()
            trace = _Trace()
            for i, (start_s, end_s, line_no) in enumerate(rows):
                if i and start_s < rows[i - 1][1]:
                    prev_start_s, prev_end_s, prev_line_no = rows[i - 1]
                    raise ValueError(
                        f"{path}:{max(line_no, prev_line_no)}: client {client_id}'s intervals "
                        f"[{prev_start_s:g}, {prev_end_s:g}) (line {prev_line_no}) and "
                        f"[{start_s:g}, {end_s:g}) (line {line_no}) overlap")
                trace.add(start_s, end_s)
            traces[client_id] = trace
        return cls(num_clients, traces)

    @property
    def num_clients(self) -> int:
        """How many clients there are (ids 0..num_clients-1)."""
        return self._num_clients

    def online(self, client_id: int, t_s: float) -> bool:
        """Whether the client is online at simulated time t_s."""
        trace = self._trace(client_id, t_s)
        return trace is None or trace.index(t_s) >= 0

    def offline_after(self, client_id: int, t_s: float) -> float:
        """The first time >= t_s at which the client is offline: t_s if offline now, `math.inf` if never."""
        trace = self._trace(client_id, t_s)
        if trace is None:
            return math.inf
        i = trace.index(t_s)
        return t_s if i < 0 else trace.ends_s[i]

    def online_after(self, client_id: int, t_s: float) -> float:
        """The first time >= t_s at which the client is online; `math.inf` if never again."""
        trace = self._trace(client_id, t_s)
        if trace is None or trace.index(t_s) >= 0:
            return t_s
        while True:
            k = bisect_right(trace.starts_s, t_s)
            if k < len(trace.starts_s):
                return trace.starts_s[k]
            if math.isinf(trace.known_until_s):
                return math.inf
            trace.extend(trace.known_until_s)  # a synthetic trace: draw the next periods

    def next_online_s(self, t_s: float) -> float:
        """The first time >= t_s at which some client is online; `math.inf` if none ever is."""
        return min((self.online_after(c, t_s) for c in range(self._num_clients)), default=math.inf)

    def online_clients(self, t_s: float) -> list[int]:
        """Sorted ids of the clients online at t_s."""
        _check_time(t_s)
        return [c for c, trace in enumerate(self._traces) if trace is None or trace.index(t_s) >= 0]

    def intervals(self, client_id: int, until_s: float) -> list[tuple[float, float]]:
        """The client's online intervals (start_s, end_s) that start before until_s, for plots and checks."""
        trace = self._trace(client_id, until_s)
        if trace is None:
            return [(0.0, math.inf)] if until_s > 0 else []
        trace.index(0.0)  # a synthetic trace that forgot its start draws it again
        trace.extend(until_s)
        n = bisect_left(trace.starts_s, until_s)
        return list(zip(trace.starts_s[:n], trace.ends_s[:n], strict=True))

    def forget_before(self, t_s: float) -> None:
        """Let every synthetic trace drop its intervals over before t_s, so memory does not grow
        with simulated time; a later query before t_s still answers, drawing that trace again."""
        _check_time(t_s)
        for trace in self._traces:
            if trace is not None:
                trace.forget_before(t_s)

    def _trace(self, client_id: int, t_s: float) -> _Trace | None:
        """The client's trace (None: always online), after checking the id and the time."""
        if not 0 <= client_id < self._num_clients:
            raise ValueError(f"client_id {client_id} is outside 0..{self._num_clients - 1}")
        _check_time(t_s)
        return self._traces[client_id]


def sample_clients(online_ids: list[int], k: int, rng: np.random.Generator) -> list[int]:
    """Pick min(k, len(online_ids)) distinct ids uniformly at random, sorted; the caller's rng keeps runs
    reproducible."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = min(k, len(online_ids))
    picked = rng.choice(len(online_ids), size=n, replace=False)
    return sorted(int(online_ids[i]) for i in picked)


def _check_time(t_s: float) -> None:
    """Reject times the simulated clock never shows: negative, infinite or NaN."""
    if not 0 <= t_s < math.inf:
        raise ValueError(f"simulated time must be finite and >= 0, got {t_s}")


def _read_interval_rows(
    path: str | PathLike[str], num_clients: int
) -> dict[int, list[tuple[float, float, int]]]:
    """Parse the CSV into (start_s, end_s, line_no) rows per client, checking each line on its own."""
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    if not lines or tuple(field.strip() for field in lines[0].split(",")) != _HEADER:
        raise ValueError(f"{path}:1: header must be '{','.join(_HEADER)}'")
    rows: dict[int, list[tuple[float, float, int]]] = {}
    for line_no, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 3:
            raise ValueError(f"{path}:{line_no}: expected 3 fields, got {len(fields)}: {line.strip()!r}")
        try:
            client_id = int(fields[0])
        except ValueError:
            raise ValueError(f"{path}:{line_no}: client_id {fields[0]!r} is not an integer") from None
        start_s = _parse_seconds(fields[1], "start_s", path, line_no)
        end_s = _parse_seconds(fields[2], "end_s", path, line_no)
        if not 0 <= client_id < num_clients:
            raise ValueError(f"{path}:{line_no}: client_id {client_id} is outside 0..{num_clients - 1}")
        if start_s < 0 or start_s == math.inf:
            raise ValueError(f"{path}:{line_no}: start_s must be finite and >= 0, got {fields[1]}")
        if end_s <= start_s:
            raise ValueError(f"{path}:{line_no}: end_s {fields[2]} must be after start_s {fields[1]}")
        rows.setdefault(client_id, []).append((start_s, end_s, line_no))
    return rows


def _parse_seconds(text: str, name: str, path: str | PathLike[str], line_no: int) -> float:
    """A time field as float (`inf` allowed), or ValueError naming the file and line."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if math.isnan(value):
        raise ValueError(f"{path}:{line_no}: {name} {text!r} is not a number")
    return value
