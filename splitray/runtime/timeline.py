"""The discrete-event timeline: when each client step's compute, transfers and server work happen.

An algorithm decides what each client does next and hands the timeline `StepJob`s; the timeline
decides when, with a priority queue of events (time, priority, sequence number, kind, job): a
client's step begins, its forward is done, a transfer drains, the server takes the next payload,
the server is done, the backward is done. Transfers are a `Traffic` on the network model, so
shared media re-split their capacity whenever a transfer starts or ends. The one server serves
payloads in arrival order, ties by client id. Pure Python: no Ray, no torch.

A step, in order: model download (if the job receives weights first), forward compute, upload,
server queue, server compute, gradient download, backward compute, model upload (if the job
sends weights after). A job that sends nothing (`bytes_up=None`) asks the server to work from
its cache; a job that does not learn (`learn=False`) ends when the server is done.

Dropped steps. A client that goes offline (`offline_s`) loses its link, not its processor: at
that moment a step still computing its forward ends, dropped, as does one whose model download
or gradient has left the link but not yet arrived (within the link's latency), and a transfer of
the step still on the link is cut (`Traffic.cancel`: the share of its bytes sent counts, the
link is free again); a step whose payload is at the server goes on until it needs the link
again and ends there. A payload that never arrives is not served; a gradient that never arrives
is not applied (the server's own update stands). With `keep_first` k (over-selection), the
server takes the first k payloads to arrive (ties by client id), and at the k-th every other
step that has not delivered its payload ends, dropped as late, where it stands (its upload cut),
so the round does not wait for them; a payload arriving with the k-th but after it in that
order is dropped as late too.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from splitray.network import DeviceProfile, NetworkModel, SharedMedium, Transfer, compute_time_s


@dataclass
class StepJob:
    """One client step: what the timeline must know when the step is handed to it."""

    client_id: int
    ready_s: float                 # earliest simulated start (client free, or a barrier)
    forward_s: float = 0.0         # client compute before the upload
    bytes_up: int | None = 0       # activation bytes sent; None: nothing sent, server uses its cache
    learn: bool = True             # a gradient comes down and the client runs its backward
    bytes_model_down: int = 0      # model bytes the client receives before it computes
    bytes_model_up: int = 0        # model bytes the client sends after its step
    tag: Any = None                # the caller's own handle for the step
    offline_s: float = math.inf    # when the client goes offline (its link is gone)


@dataclass(frozen=True)
class ServerWork:
    """What serving one job cost, known once the server has run it."""

    server_s: float
    bytes_down: int
    backward_s: Callable[[], float]  # asked for only when the gradient reaches the client


@dataclass(frozen=True)
class Broadcast:
    """Server work after every job of a run is served, whose result goes down once to all."""

    server_s: float
    nbytes: int


@dataclass(frozen=True)
class StepTimes:
    """One client step on the timeline, in seconds; durations add up to end_s - start_s."""

    start_s: float
    model_down_s: float
    client_compute_s: float   # forward + backward
    client_backward_s: float
    uplink_s: float
    server_wait_s: float
    server_compute_s: float
    downlink_s: float
    model_up_s: float
    end_s: float
    dropped: str = ""         # "offline" or "late" when the step was dropped
    cut: str = ""             # the transfer a dropped step cut short (model_down, up: the
    cut_share: float = 1.0    # payload, down: the gradient, model_up) and the share of it sent
    drained: tuple[str, ...] = ()  # a dropped step's transfers that left the link whole


# The phases of a step in order, each ending at a mark (`_Progress.marks`).
_PHASES = ("model_down_s", "forward_s", "uplink_s", "server_wait_s", "server_compute_s",
           "downlink_s", "backward_s", "model_up_s")


@dataclass
class _Progress:
    job: StepJob
    rank: int = 0  # position among the jobs of the run, for the order of the results
    start_s: float = 0.0
    model_down_s: float = 0.0
    forward_done_s: float = 0.0
    arrival_s: float = 0.0
    server_begin_s: float = 0.0
    server_done_s: float = 0.0
    downlink_done_s: float = 0.0
    backward_s: float = 0.0
    work: ServerWork | None = None
    model_up_start_s: float = 0.0
    arrived: bool = False          # its payload reached the server
    drained: list[str] | None = None  # its transfers that left the link whole (`_CUT` names)
    gradient_here: bool = False    # its own gradient arrived
    broadcast_here: bool = False   # the run's broadcast arrived (or there is none)
    marks: list[float] | None = None  # the times its phases ended so far (for a dropped step)
    sending: int | None = None     # the handle of its transfer on the link, if one is
    offline: bool = False          # its client went offline while it was at the server
    begun: bool = False            # its begin event has come (a model download may be under way)
    ended: bool = False


def _dropped_times(p: _Progress, end_s: float, dropped: str, cut: str = "",
                   cut_share: float = 1.0) -> StepTimes:
    """A step that ended at `end_s` in the phase after its last mark: that phase ends there,
    the later ones take no time."""
    bounds = [p.start_s, *p.marks, end_s]
    spans = dict.fromkeys(_PHASES, 0.0)
    for phase, a, b in zip(_PHASES, bounds, bounds[1:], strict=False):
        spans[phase] = b - a
    return StepTimes(
        start_s=p.start_s, model_down_s=spans["model_down_s"],
        client_compute_s=spans["forward_s"] + spans["backward_s"],
        client_backward_s=spans["backward_s"], uplink_s=spans["uplink_s"],
        server_wait_s=spans["server_wait_s"], server_compute_s=spans["server_compute_s"],
        downlink_s=spans["downlink_s"], model_up_s=spans["model_up_s"], end_s=end_s,
        dropped=dropped, cut=cut, cut_share=cut_share, drained=tuple(p.drained))

# A transfer's delivery event, by the name `StepTimes.cut` gives it.
_CUT = {"model_down": "model_down", "arrived": "up", "gradient": "down", "model_up": "model_up"}

# Same-time order: deliveries and compute first, then the server picks among all that arrived.
_FIRST, _ADMIT, _SERVER = 0, 1, 2  # at one time: arrivals, then over-selection, then the server


class Timeline:
    """Simulated time of every client and the server; deterministic for a given config."""

    def __init__(self, network: NetworkModel, client_devices: list[DeviceProfile],
                 server_device: DeviceProfile, cpu_share: float = 1.0,
                 compute_time: str = "flops", measured_scale: float = 1.0) -> None:
        self.network = network
        self.client_devices = client_devices
        self.server_device = server_device
        self.cpu_share = cpu_share
        self.compute_time = compute_time
        self.measured_scale = measured_scale
        self.traffic = network.traffic()
        self.now_s = 0.0          # the latest event processed
        self.server_free_s = 0.0
        self.client_free_s = [0.0] * len(client_devices)

    def checkpoint(self) -> dict:
        """The timeline between steps, as plain values (clocks, links, jitter generators)."""
        return {"now_s": self.now_s, "server_free_s": self.server_free_s,
                "client_free_s": list(self.client_free_s), "traffic": self.traffic.checkpoint(),
                "jitter": self.network.jitter_state()}

    def restore(self, state: dict) -> None:
        """Return to a `checkpoint()`."""
        self.now_s, self.server_free_s = state["now_s"], state["server_free_s"]
        self.client_free_s = list(state["client_free_s"])
        self.traffic.restore(state["traffic"])
        self.network.restore_jitter(state["jitter"])

    # ---------------------------------------------------------------- compute time
    def _compute_s(self, flops: float, host_s: float, device: DeviceProfile, share: float) -> float:
        if self.compute_time == "measured":
            return host_s * self.measured_scale
        return compute_time_s(flops, device, share)

    def broadcast_groups(self, client_ids: Iterable[int]) -> list[list[int]]:
        """The clients a broadcast reaches with one transfer each, each group in id order: all
        those on one shared medium together, a client on its own link alone."""
        groups: dict[int, list[int]] = {}
        for i in sorted(client_ids):
            link = self.network.link(i)
            groups.setdefault(id(link) if isinstance(link, SharedMedium) else -1 - i, []).append(i)
        return list(groups.values())

    def client_compute_s(self, client_id: int, flops: float, host_s: float) -> float:
        return self._compute_s(flops, host_s, self.client_devices[client_id], self.cpu_share)

    def server_compute_s(self, flops: float, host_s: float) -> float:
        return self._compute_s(flops, host_s, self.server_device, 1.0)

    # ---------------------------------------------------------------- clients
    def barrier(self, client_ids: Iterable[int], not_before_s: float = 0.0) -> float:
        """The time all of `client_ids` are free (they wait for the slowest), and not before
        `not_before_s`; sets them to it."""
        ids = list(client_ids)
        t = max(max((self.client_free_s[i] for i in ids), default=self.now_s), not_before_s)
        for i in ids:
            self.client_free_s[i] = t
        return t

    # ---------------------------------------------------------------- steps
    def run(self, jobs: Iterable[StepJob], serve: Callable[[StepJob], ServerWork],
            then: Callable[[StepJob, StepTimes], Iterable[StepJob]] | None = None,
            broadcast: Callable[[], Broadcast] | None = None,
            keep_first: int | None = None) -> list[tuple[StepJob, StepTimes]]:
        """Run `jobs` (and the jobs `then` hands back as each step ends) until all have ended.

        `serve(job)` is called when the server takes the job's payload, in simulated order, and
        returns what that cost. `broadcast()` is called once the server has served every job:
        it works `server_s` more, then sends `nbytes` once per shared medium (once per own link)
        to every learning job, whose backward waits for it and its own gradient (EPSL's
        aggregated gradient). `keep_first`: the server takes only the first k payloads to
        arrive (over-selection). Returns (job, times) for every job in the order given.
        """
        jobs = list(jobs)
        if (broadcast is not None or keep_first is not None) and then is not None:
            raise ValueError("a broadcast or keep_first closes a run of given jobs; it does not "
                             "take `then`")
        events: list[tuple[float, int, int, str, _Progress]] = []
        seq = itertools.count()
        done: list[tuple[int, StepJob, StepTimes]] = []
        order = itertools.count()
        queue: list[tuple[float, int, int, _Progress]] = []  # server queue: arrival, client, seq
        in_flight: dict[int, tuple[Any, str]] = {}
        served: list[_Progress] = []
        accepted = 0  # payloads the server took (or will take) in
        unserved = 0  # jobs dropped before the server took them
        live: list[_Progress] = []  # every job submitted (over-selection ends the unfinished)
        arriving: list[tuple[float, int, int, _Progress]] = []  # awaiting admission (keep_first)

        def push(t: float, kind: str, p: _Progress, priority: int = _FIRST) -> None:
            heapq.heappush(events, (t, priority, next(seq), kind, p))

        def submit(job: StepJob) -> None:
            p = _Progress(job, next(order), marks=[], drained=[])
            live.append(p)
            if not math.isinf(job.offline_s):
                push(job.offline_s, "offline", p)
            # Never in the past: a job handed back by `then` starts no earlier than now.
            push(max(job.ready_s, self.client_free_s[job.client_id], self.now_s), "begin", p)

        def send(p: _Progress, direction: str, nbytes: int, what: str) -> bool:
            """Start a transfer of the step, or drop the step if its client is offline."""
            if p.offline:
                drop(p, "offline", _CUT[what], 0.0)
                return False
            handle = self.traffic.start(direction, Transfer(p.job.client_id, self.now_s, nbytes))
            in_flight[handle] = (p, what)
            p.sending = handle
            return True

        def mark(p: _Progress) -> None:
            p.marks.append(self.now_s)

        def drop(p: _Progress, dropped: str, cut: str = "", cut_share: float = 1.0) -> None:
            """End the step now, dropped: its client went offline (cutting the transfer `cut`,
            of which `cut_share` was sent) or its payload came late."""
            nonlocal unserved
            if p.work is None:
                unserved += 1
                push(self.now_s, "server", p, _SERVER)  # the last one out may start a broadcast
            p.ended = True
            self.client_free_s[p.job.client_id] = self.now_s
            done.append((p.rank, p.job, _dropped_times(p, self.now_s, dropped, cut, cut_share)))

        def accept(p: _Progress) -> None:
            nonlocal accepted
            accepted += 1
            heapq.heappush(queue, (p.arrival_s, p.job.client_id, next(seq), p))
            push(self.now_s, "server", p, _SERVER)

        def admit() -> None:
            """Over-selection: take the arrivals at this time in (arrival, client id) order while
            fewer than k are in; at the k-th, end every step still short of the server."""
            while arriving:
                p = heapq.heappop(arriving)[3]
                if accepted < keep_first:
                    accept(p)
                    if accepted == keep_first:
                        for q in live:
                            if not q.ended and not q.arrived:
                                end_late(q)
                elif not p.ended:
                    drop(p, "late")

        def end_late(p: _Progress) -> None:
            if p.sending is not None:  # its upload (or model download) on the link: cut it
                handle, p.sending = p.sending, None
                _, what = in_flight.pop(handle)
                drop(p, "late", _CUT[what], self.traffic.cancel(handle, self.now_s))
            elif p.begun and not p.marks:  # its model download within the link's latency
                drop(p, "late", "model_down")
            else:  # computing, or its payload within the link's latency (sent whole)
                if not p.begun:
                    p.start_s, p.begun = self.now_s, True
                drop(p, "late")

        def go_offline(p: _Progress) -> None:
            if p.ended:
                return
            if p.sending is not None:  # a transfer on the link: cut it
                handle, p.sending = p.sending, None
                _, what = in_flight.pop(handle)
                drop(p, "offline", _CUT[what], self.traffic.cancel(handle, self.now_s))
            elif len(p.marks) == 1:
                drop(p, "offline")  # still computing its forward
            elif "down" in p.drained and not p.gradient_here:  # within the link's latency
                drop(p, "offline", "down")
            elif p.marks:
                p.offline = True  # at the server or in its backward: ends at its next send
            elif p.begun:  # its model download has drained and is within the link's latency
                drop(p, "offline", "model_down")
            # not begun: it begins offline and drops then

        def finish(p: _Progress) -> None:
            p.ended = True
            job, end_s = p.job, self.now_s
            self.client_free_s[job.client_id] = end_s
            forward_s = p.forward_done_s - p.start_s - p.model_down_s
            times = StepTimes(
                start_s=p.start_s, model_down_s=p.model_down_s,
                client_compute_s=forward_s + p.backward_s, client_backward_s=p.backward_s,
                uplink_s=p.arrival_s - p.forward_done_s,
                server_wait_s=p.server_begin_s - p.arrival_s,
                server_compute_s=p.server_done_s - p.server_begin_s,
                downlink_s=p.downlink_done_s - p.server_done_s if job.learn else 0.0,
                model_up_s=end_s - p.model_up_start_s if job.bytes_model_up else 0.0,
                end_s=end_s)
            done.append((p.rank, job, times))
            if then is not None:
                for nxt in then(job, times):
                    submit(nxt)

        def backward(p: _Progress) -> None:
            p.downlink_done_s = self.now_s
            mark(p)
            p.backward_s = p.work.backward_s()
            push(self.now_s + p.backward_s, "backward_done", p)

        def send_broadcast(nbytes: int) -> None:
            learners = {p.job.client_id: p for p in served if p.job.learn}
            for ids in self.broadcast_groups(learners):
                to_all = isinstance(self.network.link(ids[0]), SharedMedium)
                handle = self.traffic.start("down", Transfer(ids[0], self.now_s, nbytes),
                                            to_all=to_all)
                in_flight[handle] = ([learners[i] for i in ids], "broadcast")

        def after_backward(p: _Progress) -> None:
            mark(p)
            if p.job.bytes_model_up:
                p.model_up_start_s = self.now_s
                send(p, "up", p.job.bytes_model_up, "model_up")
            else:
                finish(p)

        for job in jobs:
            submit(job)
        pending_broadcast = broadcast is not None
        while events or not self.traffic.idle():
            # A transfer that drains at t is delivered before the events at t, so a payload
            # arriving at t with no latency is in the server's queue when it picks at t.
            if not events or self.traffic.next_drain_s() <= events[0][0]:
                delivery = self.traffic.pop()
                self.now_s = max(self.now_s, delivery.drained_s)
                p, what = in_flight.pop(delivery.handle)
                if isinstance(p, _Progress):
                    p.sending = None  # off the link: going offline no longer cuts it
                    p.drained.append(_CUT[what])
                push(delivery.arrival_s, what, p)
                continue
            t, _, _, kind, p = heapq.heappop(events)
            if kind != "server" and isinstance(p, _Progress) and p.ended:
                # A dropped step's later events, or the time a finished step's client would
                # have gone offline: neither moves the clock, which says when the last step ended.
                continue
            self.now_s = max(self.now_s, t)
            job = p.job if isinstance(p, _Progress) else None
            if kind == "offline":
                go_offline(p)
            elif kind == "begin":
                p.start_s, p.begun = t, True
                if t >= job.offline_s:
                    drop(p, "offline")
                elif job.bytes_model_down:
                    send(p, "down", job.bytes_model_down, "model_down")
                else:
                    mark(p)
                    push(t + job.forward_s, "forward_done", p)
            elif kind == "model_down":
                p.model_down_s = t - p.start_s
                mark(p)
                push(t + job.forward_s, "forward_done", p)
            elif kind == "forward_done":
                p.forward_done_s = t
                mark(p)
                if job.bytes_up is None:
                    push(t, "arrived", p)
                else:
                    send(p, "up", job.bytes_up, "arrived")
            elif kind == "arrived":
                p.arrival_s, p.arrived = t, True
                mark(p)
                if keep_first is None:
                    accept(p)
                else:
                    heapq.heappush(arriving, (t, job.client_id, next(seq), p))
                    push(t, "admit", p, _ADMIT)
            elif kind == "admit":
                admit()
            elif kind == "server":
                if queue and self.server_free_s <= t:
                    _, _, _, q = heapq.heappop(queue)
                    q.server_begin_s = t
                    mark(q)
                    q.work = serve(q.job)
                    served.append(q)
                    self.server_free_s = t + q.work.server_s
                    push(self.server_free_s, "server_done", q)
                elif pending_broadcast and not queue and len(served) + unserved == len(jobs) and \
                        self.server_free_s <= t:
                    pending_broadcast = False
                    cast = broadcast()
                    self.server_free_s = t + cast.server_s
                    push(self.server_free_s, "broadcast_send", cast)
            elif kind == "server_done":
                p.server_done_s = t
                mark(p)
                push(t, "server", p, _SERVER)
                if job.learn:
                    send(p, "down", p.work.bytes_down, "gradient")
                else:
                    mark(p)  # no gradient download: that phase ends here
                    after_backward(p)
            elif kind == "gradient":
                p.gradient_here = True
                if p.broadcast_here or broadcast is None:
                    backward(p)
            elif kind == "broadcast_send":
                send_broadcast(p.nbytes)
            elif kind == "broadcast":
                for q in p:
                    q.broadcast_here = True
                    if q.gradient_here:
                        backward(q)
            elif kind == "backward_done":
                after_backward(p)
            elif kind == "model_up":
                finish(p)
        return [(job, times) for _, job, times in sorted(done, key=lambda d: d[0])]
