"""Ray actors for the client devices and the server: the shared roles, with real threads capped."""

from __future__ import annotations

import uuid

import ray
import torch

from splitray.roles import ClientRole, ServerRole


class ActorProcess:
    """What every actor of a run does first: cap torch's threads, and name this incarnation of
    the actor. Ray reruns the constructor when it restarts a dead actor, so a new name tells the
    driver that the actor's state is its constructor's even when no call failed."""

    def _start_process(self, num_threads: int) -> None:
        """Call first in the constructor."""
        torch.set_num_threads(num_threads)
        self.incarnation_id = uuid.uuid4().hex

    def incarnation(self) -> str:
        """This process's id for the actor, new after every restart."""
        return self.incarnation_id


@ray.remote
class ClientActor(ActorProcess, ClientRole):
    """A client device as a Ray actor; its torch threads match its logical CPUs."""

    def __init__(self, num_threads: int, *args) -> None:
        self._start_process(num_threads)
        super().__init__(*args)


@ray.remote
class ServerActor(ActorProcess, ServerRole):
    """The server as a Ray actor (on the GPU when it is given one)."""

    def __init__(self, num_threads: int, *args) -> None:
        self._start_process(num_threads)
        super().__init__(*args)
