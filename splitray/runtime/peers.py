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
from collections.abc import Callable
from typing import Any, Protocol


class Peer(Protocol):
    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any: ...

    def wait_ready(self) -> None: ...


class LocalPeer:
    """Calls a method on a local object now; the 'future' is the value itself."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any:
        return method(self.obj, *args)

    def wait_ready(self) -> None:
        """A local object never dies: always ready."""


class RayPeer:
    """Calls a method on a Ray actor; the future is an ObjectRef (or a tuple of them)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def call(self, method: Callable, *args: Any, num_returns: int = 1) -> Any:
        actor_method = getattr(self.handle, method.__name__)
        return actor_method.options(num_returns=num_returns).remote(*args)

    def wait_ready(self, timeout_s: float = 300.0) -> None:
        """Block until the actor takes calls again: after a death, Ray restarts it (rerunning
        its constructor) and calls made meanwhile fail as temporarily unavailable."""
        import ray
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(self.handle.__ray_ready__.remote())
                return
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def get_local(futures: Any) -> Any:
    return futures


def get_ray(futures: Any) -> Any:
    import ray

    return ray.get(futures)
