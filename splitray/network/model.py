"""The network model: which link each client uses, and batch scheduling of transfers on them."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import numpy as np

from splitray.network.links import ConstantLink, Link, SharedMedium, TraceLink, Transfer

_DIRECTIONS = ("up", "down")


class NetworkModel:
    """Maps each client to its link (its own ConstantLink/TraceLink, or a SharedMedium several
    clients share) and turns batches of transfers into finish times on the simulated clock.

    A ConstantLink or TraceLink object given to several clients is still one link per client;
    only a SharedMedium is shared. Each `schedule` call starts from idle links: transfers that
    may overlap in time must be scheduled in the same call. Jitter comes from one numpy
    Generator seeded by `seed`, so the same sequence of calls gives the same times.
    """

    def __init__(self, links: Mapping[int, Link], seed: int = 0) -> None:
        for client_id, link in links.items():
            if not isinstance(link, (ConstantLink, TraceLink, SharedMedium)):
                raise ValueError(
                    f"link of client {client_id} is {type(link).__name__}; "
                    "allowed: ConstantLink, TraceLink, SharedMedium"
                )
        self.links = dict(links)
        self._rng = np.random.default_rng(seed)

    def link(self, client_id: int) -> Link:
        """The link of `client_id`; ValueError if the client has none."""
        try:
            return self.links[client_id]
        except KeyError:
            raise ValueError(f"client_id={client_id!r} has no link in the network model") from None

    def schedule(self, direction: str, transfers: list[Transfer]) -> list[float]:
        """Finish time (last byte arrives, seconds) of each transfer, in the order given.

        finish = drain finish + latency_s + |normal(0, jitter_s)|. Own links serve a client's
        transfers FIFO; a SharedMedium splits its capacity equally among its active clients.
        """
        if direction not in _DIRECTIONS:
            raise ValueError(f"direction={direction!r} is not allowed; use 'up' or 'down'")
        for transfer in transfers:
            self._check(transfer)
        drained_s = [0.0] * len(transfers)

        # FIFO order within one link: by start time, ties by position in the list.
        by_link: dict[int, list[int]] = {}
        for i in sorted(range(len(transfers)), key=lambda i: (transfers[i].start_s, i)):
            by_link.setdefault(id(self.links[transfers[i].client_id]), []).append(i)
        for group in by_link.values():
            link = self.links[transfers[group[0]].client_id]
            if isinstance(link, SharedMedium):
                requests = [
                    (transfers[i].client_id, float(transfers[i].start_s), int(transfers[i].nbytes))
                    for i in group
                ]
                finishes = link.drain(direction, requests)
                for i, finish_s in zip(group, finishes, strict=True):
                    drained_s[i] = finish_s
            else:
                # An own link: per client (a link object given to two clients is not shared).
                per_client: dict[int, list[int]] = {}
                for i in group:
                    per_client.setdefault(transfers[i].client_id, []).append(i)
                for indices in per_client.values():
                    requests = [
                        (float(transfers[i].start_s), int(transfers[i].nbytes)) for i in indices
                    ]
                    finishes = link.drain(direction, requests)
                    for i, finish_s in zip(indices, finishes, strict=True):
                        drained_s[i] = finish_s

        # One draw per transfer, in an order that does not depend on the list order.
        draw_order = sorted(
            range(len(transfers)),
            key=lambda i: (transfers[i].start_s, transfers[i].client_id, i),
        )
        normals = self._rng.standard_normal(len(transfers))
        finishes_s = [0.0] * len(transfers)
        for rank, i in enumerate(draw_order):
            link = self.links[transfers[i].client_id]
            jitter_s = abs(float(normals[rank])) * link.jitter_s
            finishes_s[i] = drained_s[i] + link.latency_s + jitter_s
        return finishes_s

    def describe(self, client_id: int) -> str:
        """Short text naming the client's link, e.g. "shared up/down 54.0/54.0 Mbit/s, 2 ms"."""
        link = self.link(client_id)
        if isinstance(link, SharedMedium):
            sharing = sum(other is link for other in self.links.values())
            return f"{link.describe()}, {sharing} clients"
        return link.describe()

    def _check(self, transfer: Transfer) -> None:
        if not isinstance(transfer, Transfer):
            raise ValueError(f"expected a Transfer, got {transfer!r}")
        self.link(transfer.client_id)
        start_s = transfer.start_s
        if not isinstance(start_s, numbers.Real) or not math.isfinite(start_s) or start_s < 0:
            raise ValueError(f"start_s={start_s!r} must be a finite time >= 0 s ({transfer})")
        nbytes = transfer.nbytes
        if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)) or nbytes < 0:
            raise ValueError(f"nbytes={nbytes!r} must be an integer >= 0 ({transfer})")
