"""How the driver talks to clients and the server: direct calls in-process, or Ray actor calls.

An algorithm is written once against `Peer.call` and `get`, naming the role's method itself
(`peer.call(ClientRole.forward, step)`), so a reader and an editor can follow it into the role;
with local peers it is the fused single-process reference trainer, with Ray peers the
distributed engine. Futures returned by one
call may be passed as arguments to another (Ray resolves ObjectRefs inside the receiving actor, so
payloads travel client -> server -> client without passing through the driver).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from splitray.roles import ClientRole


class Peer(Protocol):
    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any: ...


class ActorRestarted(RuntimeError):
    """An actor died between two calls and Ray restarted it: no call failed, but it holds its
    constructor's state and not yet the run's data, so the run must roll back as after any
    other actor fault."""


class LocalPeer:
    """Calls a method on a local object now; the 'future' is the value itself."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any:
        return method(self.obj, *args)


class RayPeer:
    """Calls a method on a Ray actor; the future is an ObjectRef (or a tuple of them)."""

    def __init__(self, handle: Any, name: str, data: tuple = ()) -> None:
        self.handle = handle
        self.name = name  # "server", "client 3", "pool worker 1": what a fault message names
        self.data = data  # the ObjectRefs `ActorProcess.ready` takes, kept for the whole run

    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any:
        actor_method = getattr(self.handle, method.__name__)
        return actor_method.options(num_returns=num_returns).remote(*args)

    def submit_ready(self) -> Any:
        """Submit `ActorProcess.ready`: the actor takes the run's data unless it has it."""
        return self.handle.ready.remote(*self.data)

    def wait_ready(self, submitted: Any = None, timeout_s: float = 300.0) -> str:
        """Block until the actor has its data and takes calls (after a death, Ray restarts it,
        rerunning its constructor, and calls made meanwhile fail as temporarily unavailable);
        returns the incarnation that answered. `submitted`: a `submit_ready()` on its way."""
        import ray
        from ray.exceptions import ActorUnavailableError, GetTimeoutError

        deadline = time.monotonic() + timeout_s
        answer = self.submit_ready() if submitted is None else submitted
        while True:
            try:
                return ray.get(answer, timeout=max(0.0, deadline - time.monotonic()))
            except GetTimeoutError:
                raise TimeoutError(f"{self.name} did not take the run's data within "
                                   f"{timeout_s:.0f} s (can Ray place it?)") from None
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                answer = self.submit_ready()


class PoolClient:
    """A client that is state on a worker pool (`splitray.runtime.pool`): calls go to the worker
    that runs it."""

    def __init__(self, pool: Any, client_id: int) -> None:
        self.pool = pool
        self.client_id = client_id

    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any:
        return self.pool.call(self.client_id, method, *args, num_returns=num_returns)


@dataclass
class Peers:
    """A run's clients and server, how to wait for their results, and the processes behind
    them: none (local), an actor each, or a worker pool that holds the clients as state."""

    clients: list[Peer]
    server: Peer
    get: Callable[[Any], Any]
    actors: list[RayPeer] = field(default_factory=list)  # every Ray actor of the run, once
    pool: Any = None  # a ClientPool when the clients are state on worker actors
    prefetch: int = 0  # client forwards to run ahead of the server (0: in-process, no gain)
    incarnations: list[str] = field(default_factory=list)  # each actor's, when last waited for

    def chunks(self) -> Iterator[range]:
        """Client ids in runs to submit together: all at once, or what the pool holds live."""
        n = len(self.clients)
        return self.pool.chunks(n) if self.pool is not None else iter([range(n)])

    def share(self, value: Any) -> Any:
        """`value` as an argument many calls take: put into the object store once on Ray."""
        if self.actors:
            import ray

            return ray.put(value)
        return value

    def finished(self, client_id: int) -> None:
        """The client's step of the round in progress is over (its backward done): the pool
        may evict it before the round ends."""
        if self.pool is not None:
            self.pool.finished(client_id)

    def between_rounds(self) -> None:
        """No client is between its forward and backward: the pool may evict clients now."""
        if self.pool is not None:
            self.pool.trim()

    def wait_ready(self) -> None:
        """Block until every actor has the run's data and takes calls (after a fault, Ray
        restarts them) and note which incarnation of each answered: what `check_restarts`
        compares against. The actors build their parts side by side."""
        submitted = [actor.submit_ready() for actor in self.actors]
        self.incarnations = [actor.wait_ready(answer)
                             for actor, answer in zip(self.actors, submitted, strict=True)]

    def check_restarts(self) -> None:
        """Raise ActorRestarted when an actor is not the incarnation `wait_ready` noted: it died
        between two calls and Ray restarted it, so calls since then may have run on fresh state.
        A dead actor not yet back raises Ray's actor error instead."""
        if not self.actors:
            return
        import ray

        now = ray.get([actor.handle.incarnation.remote() for actor in self.actors])
        restarted = [actor.name for actor, noted, answered
                     in zip(self.actors, self.incarnations, now, strict=True) if noted != answered]
        if restarted:
            raise ActorRestarted(f"{', '.join(restarted)} restarted by Ray since the last check, "
                                 "with its constructor's state and without the run's data")

    def client_states(self) -> list[Any]:
        """Every client's `ClientRole.checkpoint()` (on a pool: ObjectRefs, None if untouched)."""
        if self.pool is not None:
            return self.pool.states(len(self.clients))
        return self.get([c.call(ClientRole.checkpoint) for c in self.clients])

    def restore_clients(self, states: list[Any]) -> None:
        """Return every client to `client_states()` (or their tensors from a checkpoint file)."""
        if self.pool is not None:
            self.pool.restore(states)
            return
        self.get([c.call(ClientRole.restore, s) for c, s in zip(self.clients, states, strict=True)])

    def saved(self, states: list[Any]) -> list[Any]:
        """`client_states()` as tensors, for a checkpoint file."""
        return self.pool.saved(states) if self.pool is not None else states

    def stop(self) -> None:
        """End the run's actors (local peers need nothing)."""
        if self.actors:
            import ray

            for actor in self.actors:
                ray.kill(actor.handle)


def get_local(futures: Any) -> Any:
    return futures


def get_ray(futures: Any) -> Any:
    import ray

    return ray.get(futures)
