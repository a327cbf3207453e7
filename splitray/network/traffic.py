"""Transfers in flight on a network model's links, advanced one drain at a time.

The discrete-event timeline starts a transfer when a client or the server sends, and asks for the
next moment a transfer drains. Own links (constant, trace) serve one client's transfers FIFO, so
a drain time is fixed when the transfer starts. A shared medium splits its capacity equally among
the clients with a transfer in flight: every start and every drain changes the rate of the others,
so its next drain is recomputed (in virtual airtime, O(log n) per event); the shares are per
client and direction, so a client sending both ways on a half-duplex medium holds two. A medium
with fixed shares (`allocation: shares`) is instead a FIFO link per client at its share, and a
broadcast on it takes every share once the clients' queues are idle.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

from splitray.network.links import (
    MAHIMAHI_PACKET_BYTES,
    ConstantLink,
    SharedMedium,
    TraceLink,
    Transfer,
    packets,
)

if TYPE_CHECKING:
    from splitray.network.model import NetworkModel


@dataclass(frozen=True)
class Delivery:
    """A transfer whose last byte left the link at `drained_s` and arrived at `arrival_s`."""

    handle: int
    direction: str
    transfer: Transfer
    drained_s: float
    arrival_s: float  # drained_s + latency + jitter


class _SharedFlow:
    """One shared channel (a direction of a medium, or both when half-duplex): every transfer
    at the head of its queue gets an equal share of the time, at its direction's rate; queues
    (one per client and direction) are FIFO.

    Computed in virtual airtime, O(log n) per event: `airtime_s` is the channel time each head
    in flight has had so far (it grows at 1/n per second with n heads), and a head drains when
    `airtime_s` reaches its start value plus nbytes / rate.
    """

    def __init__(self) -> None:
        self.queues: dict[tuple[int, str], deque[tuple[int, int, float]]] = {}
        self.heads: list[tuple[float, int]] = []  # heap of (airtime at which it drains, handle)
        self.airtime_s = 0.0
        self.last_s = 0.0

    def advance(self, now_s: float) -> None:
        if self.heads:
            self.airtime_s += (now_s - self.last_s) / len(self.heads)
        self.last_s = now_s

    def _activate(self, handle: int, nbytes: int, bytes_per_s: float) -> None:
        heapq.heappush(self.heads, (self.airtime_s + nbytes / bytes_per_s, handle))

    def add(self, now_s: float, queue_key: tuple[int, str], handle: int, nbytes: int,
            bytes_per_s: float) -> None:
        self.advance(now_s)
        queue = self.queues.setdefault(queue_key, deque())
        queue.append((handle, nbytes, bytes_per_s))
        if len(queue) == 1:
            self._activate(handle, nbytes, bytes_per_s)

    def next_drain(self) -> tuple[float, int]:
        """(time, handle) of the next transfer to drain at today's rates; (inf, -1) when idle."""
        if not self.heads:
            return math.inf, -1
        target_s, handle = self.heads[0]
        return self.last_s + max(target_s - self.airtime_s, 0.0) * len(self.heads), handle

    def cancel(self, now_s: float, queue_key: tuple[int, str], handle: int) -> float:
        """Take a transfer off the channel now; returns the bytes it had left to send."""
        self.advance(now_s)
        queue = self.queues[queue_key]
        position = next(k for k, entry in enumerate(queue) if entry[0] == handle)
        _, nbytes, bytes_per_s = queue[position]
        del queue[position]
        if position:  # still waiting behind the client's earlier transfer
            return float(nbytes)
        k = next(k for k, (_, h) in enumerate(self.heads) if h == handle)
        left = max(self.heads[k][0] - self.airtime_s, 0.0) * bytes_per_s
        self.heads[k] = self.heads[-1]
        self.heads.pop()
        heapq.heapify(self.heads)
        if not self.heads:
            self.airtime_s = 0.0
        if queue:
            self._activate(*queue[0])
        return left

    def drain(self, now_s: float, queue_key: tuple[int, str], handle: int) -> None:
        self.advance(now_s)
        _, first = heapq.heappop(self.heads)
        assert first == handle, "only the next transfer to drain can drain"
        if not self.heads:
            self.airtime_s = 0.0  # idle: restart the virtual clock, so rounding cannot build up
        queue = self.queues[queue_key]
        queue.popleft()
        if queue:
            self._activate(*queue[0])


BROADCAST = -1  # the queue of a medium's broadcasts, next to its clients' own queues


class Traffic:
    """The transfers in flight on `network`'s links; starts must come in time order."""

    def __init__(self, network: NetworkModel) -> None:
        self.network = network
        self._own: list[tuple[float, int]] = []  # heap of (drain time, handle) on own links
        self._own_state: dict[tuple[int, str], float | int] = {}  # busy-until s / next trace index
        self._flows: dict[tuple[int, str], _SharedFlow] = {}
        self._started: dict[int, tuple[str, Transfer, int]] = {}  # direction, transfer, queue
        self._trace_slots: dict[int, tuple[int, int]] = {}  # [first, end) opportunities in use
        self._next_handle = 0

    def start(self, direction: str, transfer: Transfer, to_all: bool = False) -> int:
        """Begin `transfer` at its start_s; returns a handle its Delivery will carry.

        `to_all`: a broadcast on the shared medium of `transfer.client_id`, sent once for every
        client on it: a flow of its own (processor sharing), or all the medium's shares together
        once every client's transfers before it have drained (fixed shares).
        """
        self.network.check(direction, transfer)
        handle = self._next_handle
        self._next_handle += 1
        link = self.network.link(transfer.client_id)
        if to_all and not isinstance(link, SharedMedium):
            raise ValueError(f"client {transfer.client_id} has no shared medium to broadcast on")
        client = BROADCAST if to_all else transfer.client_id
        self._started[handle] = (direction, transfer, client)
        if transfer.nbytes == 0:  # nothing to send: latency only, the link stays free
            heapq.heappush(self._own, (transfer.start_s, handle))
        elif isinstance(link, SharedMedium) and link.allocation == "processor_sharing":
            key = (id(link), "both" if link.half_duplex else direction)
            if key not in self._flows:
                self._flows[key] = _SharedFlow()
            self._flows[key].add(transfer.start_s, (client, direction), handle, transfer.nbytes,
                                 link.rate_bps(direction) / 8.0)
        else:  # FIFO per client: an own link, or a fixed share of a medium
            key = (client, "both" if isinstance(link, SharedMedium) and link.half_duplex
                   else direction)
            if isinstance(link, SharedMedium) and to_all:
                # Every share at once, so it waits until each client's queue on the medium is
                # idle and holds them all until it drains.
                keys = [(c, key[1]) for c, other in self.network.links.items() if other is link]
                drained_s, _ = link.drain_share(
                    direction, transfer.start_s, transfer.nbytes,
                    max(self._own_state.get(k, -math.inf) for k in keys),
                    sum(self.network.share(c) for c, _ in keys))
                self._own_state.update(dict.fromkeys(keys, drained_s))
            elif isinstance(link, SharedMedium):
                drained_s, self._own_state[key] = link.drain_share(
                    direction, transfer.start_s, transfer.nbytes,
                    self._own_state.get(key, -math.inf), self.network.share(client))
            else:
                idle = -math.inf if isinstance(link, ConstantLink) else 0
                drained_s, self._own_state[key] = link.drain_one(
                    direction, transfer.start_s, transfer.nbytes, self._own_state.get(key, idle))
                if isinstance(link, TraceLink):
                    end = int(self._own_state[key])
                    self._trace_slots[handle] = (
                        end - packets(transfer.nbytes), end)
            heapq.heappush(self._own, (drained_s, handle))
        return handle

    def _next(self) -> tuple[float, int, _SharedFlow | None]:
        best: tuple[float, int, _SharedFlow | None] = (math.inf, -1, None)
        if self._own:
            best = (*self._own[0], None)
        for flow in self._flows.values():
            drained_s, handle = flow.next_drain()
            if (drained_s, handle) < best[:2]:
                best = (drained_s, handle, flow)
        return best

    def next_drain_s(self) -> float:
        """When the next transfer in flight drains; inf when nothing is in flight."""
        return self._next()[0]

    def pop(self) -> Delivery:
        """Drain the next transfer (the earliest; ties by handle) and deliver it."""
        drained_s, handle, flow = self._next()
        if handle < 0:
            raise RuntimeError("no transfer in flight")
        direction, transfer, queue_client = self._started.pop(handle)
        self._trace_slots.pop(handle, None)
        if flow is None:
            heapq.heappop(self._own)
        else:
            flow.drain(drained_s, (queue_client, direction), handle)
        arrival_s = drained_s + self.network.delay_s(transfer.client_id, direction)
        return Delivery(handle, direction, transfer, drained_s, arrival_s)

    def cancel(self, handle: int, now_s: float) -> float:
        """Stop a transfer in flight at `now_s` (its sender went offline); returns the share of
        its bytes sent by then (on a trace link, the packets at its opportunities up to
        `now_s`). A shared channel re-splits at once; an own link or a fixed share whose last
        transfer this was is free from now, a trace link from its next opportunity."""
        direction, transfer, queue_client = self._started.pop(handle)
        link = self.network.link(transfer.client_id)
        if transfer.nbytes and isinstance(link, SharedMedium) \
                and link.allocation == "processor_sharing":
            flow = self._flows[(id(link), "both" if link.half_duplex else direction)]
            left = flow.cancel(now_s, (queue_client, direction), handle)
            return 1.0 - left / transfer.nbytes
        k = next(k for k, (_, h) in enumerate(self._own) if h == handle)
        drained_s = self._own[k][0]
        self._own[k] = self._own[-1]
        self._own.pop()
        heapq.heapify(self._own)
        key = (queue_client, "both" if isinstance(link, SharedMedium) and link.half_duplex
               else direction)
        if isinstance(link, TraceLink):
            if not transfer.nbytes:
                return 1.0
            first, end = self._trace_slots.pop(handle)
            sent_end = link.cut(direction, now_s, first, end)
            if self._own_state.get(key) == end:  # the link's last transfer
                self._own_state[key] = sent_end
            return min((sent_end - first) * MAHIMAHI_PACKET_BYTES / transfer.nbytes, 1.0)
        if self._own_state.get(key) == drained_s:
            self._own_state[key] = now_s  # the link's last transfer: free from now
        span_s = drained_s - transfer.start_s
        return 1.0 if span_s <= 0 else min(max((now_s - transfer.start_s) / span_s, 0.0), 1.0)

    def idle(self) -> bool:
        return not self._started

    def checkpoint(self) -> dict:
        """The links' state between transfers, as plain values: FIFO positions of own links and
        each shared channel's clock (keyed by the medium's lowest client id)."""
        if not self.idle():
            raise RuntimeError("a checkpoint needs idle links")
        first_client = {id(link): min(c for c, other in self.network.links.items() if other is link)
                        for link in self.network.links.values()}
        return {"own": [[c, d, v] for (c, d), v in self._own_state.items()],
                "flows": [[first_client[link_id], d, f.airtime_s, f.last_s]
                          for (link_id, d), f in self._flows.items()]}

    def restore(self, state: dict) -> None:
        """Return the links to a `checkpoint()`, idle: transfers in flight (of steps a fault
        cut short) are dropped."""
        self._own, self._started, self._trace_slots = [], {}, {}
        self._own_state = {(c, d): v for c, d, v in state["own"]}
        self._flows = {}
        for client_id, direction, airtime_s, last_s in state["flows"]:
            flow = _SharedFlow()
            flow.airtime_s, flow.last_s = airtime_s, last_s
            self._flows[(id(self.network.link(client_id)), direction)] = flow

    def send_all(self, direction: str, transfers: list[Transfer]) -> list[float]:
        """Start `transfers` at their start times on idle links, run them to the end and return
        each one's arrival time, in the order given."""
        if not self.idle():
            raise RuntimeError("send_all needs idle links")
        for transfer in transfers:
            self.network.check(direction, transfer)
        handles: dict[int, int] = {}
        arrivals: dict[int, float] = {}
        for i in sorted(range(len(transfers)), key=lambda i: (transfers[i].start_s, i)):
            while self.next_drain_s() <= transfers[i].start_s:
                delivery = self.pop()
                arrivals[delivery.handle] = delivery.arrival_s
            handles[i] = self.start(direction, transfers[i])
        while not self.idle():
            delivery = self.pop()
            arrivals[delivery.handle] = delivery.arrival_s
        return [arrivals[handles[i]] for i in range(len(transfers))]
