"""The network model: which link each client uses, its delays, and the transfers on the links."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from splitray.network.links import ConstantLink, Link, SharedMedium, TraceLink, Transfer
from splitray.network.traffic import Traffic

_DIRECTIONS = ("up", "down")


class NetworkModel:
    """Maps each client to its link (its own ConstantLink/TraceLink, or a SharedMedium several
    clients share) and turns transfers into arrival times on the simulated clock.

    A ConstantLink or TraceLink object given to several clients is still one link per client;
    only a SharedMedium is shared. Transfers in flight live in a `Traffic` (see `traffic()`); the
    timeline keeps one for the whole run. Jitter comes from one numpy Generator per client and
    direction, seeded by (`seed`, client, direction), so a client's delays do not depend on what
    the other clients send or in which order events are processed.
    """

    def __init__(self, links: Mapping[int, Link], seed: int = 0) -> None:
        for client_id, link in links.items():
            if not isinstance(link, (ConstantLink, TraceLink, SharedMedium)):
                raise ValueError(
                    f"link of client {client_id} is {type(link).__name__}; "
                    "allowed: ConstantLink, TraceLink, SharedMedium"
                )
        self.links = dict(links)
        self.seed = seed
        self._shares: dict[int, float] = {}  # client -> its fixed share of a medium's capacity
        for medium in {id(m): m for m in self.links.values() if isinstance(m, SharedMedium)
                       and m.allocation == "shares"}.values():
            clients = sorted(c for c, m in self.links.items() if m is medium)
            if len(medium.shares) != len(clients):
                raise ValueError(f"shares: {len(medium.shares)} given for the {len(clients)} "
                                 f"clients of the medium; give one share per client")
            self._shares.update(zip(clients, medium.shares, strict=True))
        self._jitter_rngs: dict[tuple[int, str], np.random.Generator] = {}

    def link(self, client_id: int) -> Link:
        """The link of `client_id`; ValueError if the client has none."""
        try:
            return self.links[client_id]
        except KeyError:
            raise ValueError(f"client_id={client_id!r} has no link in the network model") from None

    def share(self, client_id: int) -> float:
        """The fixed share of its medium's capacity `client_id` gets (allocation: shares)."""
        return self._shares[client_id]

    def delay_s(self, client_id: int, direction: str) -> float:
        """Propagation delay of one transfer after its last byte drains: latency + |N(0, jitter)|."""
        link = self.link(client_id)
        if link.jitter_s == 0:
            return link.latency_s
        key = (client_id, direction)
        if key not in self._jitter_rngs:
            stream = _DIRECTIONS.index(direction)
            self._jitter_rngs[key] = np.random.default_rng([self.seed, client_id, stream])
        return link.latency_s + abs(float(self._jitter_rngs[key].standard_normal())) * link.jitter_s

    def jitter_state(self) -> list:
        """The jitter generators' states, as plain values (for a checkpoint)."""
        return [[c, d, rng.bit_generator.state] for (c, d), rng in self._jitter_rngs.items()]

    def restore_jitter(self, state: list) -> None:
        """Return the jitter generators to a `jitter_state()`."""
        self._jitter_rngs = {}
        for client_id, direction, saved in state:
            rng = np.random.default_rng()
            rng.bit_generator.state = saved
            self._jitter_rngs[(client_id, direction)] = rng

    def traffic(self) -> Traffic:
        """An empty set of transfers in flight on these links (every link idle)."""
        return Traffic(self)

    def schedule(self, direction: str, transfers: list[Transfer]) -> list[float]:
        """Arrival time (last byte arrives, seconds) of each transfer, in the order given, on
        idle links: what the timeline computes for transfers that start at these times.

        finish = drain finish + latency_s + |normal(0, jitter_s)|. Own links serve a client's
        transfers FIFO (by start, ties by list position); a SharedMedium splits its capacity as
        its allocation says (see SharedMedium).
        """
        return self.traffic().send_all(direction, transfers)

    def describe(self, client_id: int) -> str:
        """Short text naming the client's link, e.g. "shared up/down 54.0/54.0 Mbit/s, 2 ms"."""
        link = self.link(client_id)
        if isinstance(link, SharedMedium):
            sharing = sum(other is link for other in self.links.values())
            return f"{link.describe()}, {sharing} clients"
        return link.describe()

    def check(self, direction: str, transfer: Transfer) -> None:
        """ValueError unless `transfer` can go `direction` on this model's links."""
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction={direction!r} is not allowed; use 'up' or 'down'")
        if not isinstance(transfer, Transfer):
            raise ValueError(f"expected a Transfer, got {transfer!r}")
        self.link(transfer.client_id)
        start_s = transfer.start_s
        if not isinstance(start_s, numbers.Real) or not math.isfinite(start_s) or start_s < 0:
            raise ValueError(f"start_s={start_s!r} must be a finite time >= 0 s ({transfer})")
        nbytes = transfer.nbytes
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
            raise ValueError(f"nbytes={nbytes!r} must be an integer >= 0 ({transfer})")
