"""Ray actors for the client devices and the server: the shared roles, with real threads capped."""

from __future__ import annotations

import ray
import torch

from splitray.roles import ClientRole, ServerRole


@ray.remote
class ClientActor(ClientRole):
    """A client device as a Ray actor; its torch threads match its logical CPUs."""

    def __init__(self, num_threads: int, *args) -> None:
        torch.set_num_threads(num_threads)
        super().__init__(*args)


@ray.remote
class ServerActor(ServerRole):
    """The server as a Ray actor (on the GPU when it is given one)."""

    def __init__(self, num_threads: int, *args) -> None:
        torch.set_num_threads(num_threads)
        super().__init__(*args)
