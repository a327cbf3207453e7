"""Clients as state on a fixed pool of worker actors: thousands of clients on a few processes.

A client is data (weights, optimizer state, filter, generator, data order, budget) plus its shard
indices. Each client has a home worker (client id modulo the pool size). A worker keeps the
clients it ran since the last trim as live `ClientRole` objects; at round boundaries the driver
trims each worker to `engine.pool_capacity` clients, and within a round it evicts clients whose
step is over once a worker holds more (a batch at a time). The worker returns each evicted
client's state as numpy arrays, a return value the driver owns (so it outlives the worker), kept
in the object store until the client runs again. The dataset goes into the object store once;
a worker cuts a client's shard from it by index when the client arrives.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import ray
import torch

from splitray.config import ExperimentConfig, split_layer_of
from splitray.roles import ClientRole, client_generator, map_leaves
from splitray.runtime.actors import ActorProcess, shards_from_store


def as_arrays(tree: Any) -> Any:
    """A state tree with every tensor as a numpy array (what travels through the object store)."""
    return map_leaves(tree, torch.Tensor, lambda t: t.detach().cpu().numpy())


def as_tensors(tree: Any) -> Any:
    """The inverse of `as_arrays`; copies, since arrays from the object store are read-only."""
    return map_leaves(tree, np.ndarray, torch.tensor)


@ray.remote
class PoolWorker(ActorProcess):
    """Runs steps of whichever client it is handed, its torch threads capped at a client's CPUs."""

    def __init__(self, num_threads: int, cfg: ExperimentConfig, first_client: int) -> None:
        self._start_process(num_threads)
        self.cfg = cfg
        self.first_client = first_client
        self.live: dict[int, ClientRole] = {}
        self.free: dict[int, list[ClientRole]] = {}  # unused slots by split point
        self.initial: dict[int, dict] = {}  # a fresh client's state by split point
        self.templates: dict[int, ClientRole] = {}  # a slot to copy by split point

    def _take_data(self, train: tuple, test: tuple, parts: tuple) -> None:
        self.shards = shards_from_store(train, test, parts)
        # Built now, while the server actor starts too, not at the first step: the model, its
        # FLOP counts and torch's lazy imports (torch.optim imports torch._dynamo, about 2 s).
        self._template(self.first_client)

    def _template(self, client_id: int) -> ClientRole:
        """The slot to copy for client `client_id`'s split point, built the first time."""
        split_layer = split_layer_of(self.cfg, client_id)
        if split_layer not in self.templates:
            role = ClientRole(client_id, self.cfg, *self.shards.of(client_id),
                              self.shards.train.num_classes)
            self.initial[split_layer] = role.initial_state()
            self.templates[split_layer] = role
        return self.templates[split_layer]

    def _load(self, client_id: int, state: dict | None) -> ClientRole:
        split_layer = split_layer_of(self.cfg, client_id)
        shard, test_shard = self.shards.of(client_id)
        slots = self.free.get(split_layer)
        # A copy of the template costs far less than building the model.
        role = slots.pop() if slots else copy.deepcopy(self._template(client_id))
        if state is None:
            state = {**self.initial[split_layer],
                     "generator": client_generator(self.cfg, client_id).get_state()}
        else:
            state = as_tensors(state)
        role.rebind(client_id, shard, test_shard, state)
        self.live[client_id] = role
        return role

    def run(self, client_id: int, arrives: bool, state: dict | None, method: Callable,
            *args: Any) -> Any:
        """`method(client, *args)` for client `client_id`; `arrives`: the client is not live here
        and comes with `state` (None: as it starts)."""
        if arrives == (client_id in self.live):
            raise RuntimeError(f"client {client_id}: the driver and the worker disagree on "
                               "whether it is live here")
        role = self._load(client_id, state) if arrives else self.live[client_id]
        return method(role, *args)

    def release(self, client_ids: list[int]) -> dict | list[dict]:
        """Give the clients up: each one's state as numpy arrays (one return value each, so
        a single client's is not a list); their slots serve the next clients."""
        states = []
        for client_id in client_ids:
            role = self.live.pop(client_id)
            # Serialised when the task returns, before any other task can reuse the slot.
            states.append(as_arrays(role.checkpoint()))
            self.free.setdefault(role.split_layer, []).append(role)
        return states[0] if len(states) == 1 else states

    def node_id(self) -> str:
        """The Ray node this worker runs on."""
        return ray.get_runtime_context().get_node_id()

    def drop_all(self) -> int:
        """Forget every live client (a rollback restores them from the driver's states)."""
        for role in self.live.values():
            role.drop_step()
            self.free.setdefault(role.split_layer, []).append(role)
        dropped, self.live = len(self.live), {}
        return dropped


class ClientPool:
    """The driver's side of the pool: where each client runs, which are live, their states."""

    def __init__(self, workers: list[Any], capacity: int) -> None:
        self.workers = workers
        self.capacity = capacity  # live clients a worker keeps from one round to the next
        self.release_batch = min(RELEASE_BATCH, capacity)  # finished clients evicted at once
        self.live: list[OrderedDict[int, None]] = [OrderedDict() for _ in workers]
        # Per worker, the live clients whose step of the round in progress is over.
        self.finished_live: list[OrderedDict[int, None]] = [OrderedDict() for _ in workers]
        self.stored: dict[int, Any] = {}  # client id -> ObjectRef of its state; absent: fresh

    def nodes(self) -> list[str]:
        """The Ray node of each worker."""
        return ray.get([w.node_id.remote() for w in self.workers])

    def home(self, client_id: int) -> int:
        return client_id % len(self.workers)

    def call(self, client_id: int, method: Callable, *args: Any, num_returns: int = 1) -> Any:
        w = self.home(client_id)
        live = self.live[w]
        arrives = client_id not in live
        live[client_id] = None
        live.move_to_end(client_id)
        self.finished_live[w].pop(client_id, None)  # busy again until it says otherwise
        state = self.stored.pop(client_id, None) if arrives else None
        return self.workers[w].run.options(num_returns=num_returns).remote(
            client_id, arrives, state, method, *args)

    def finished(self, client_id: int) -> None:
        """Client `client_id` is done with the round in progress. Once its worker holds
        `capacity` live clients and a batch more, the batch of finished ones leaves, so a round
        of many clients never has them all live at once."""
        w = self.home(client_id)
        done = self.finished_live[w]
        done[client_id] = None
        batch = self.release_batch
        if len(done) >= batch and len(self.live[w]) >= self.capacity + batch:
            self._release(w, [done.popitem(last=False)[0] for _ in range(batch)])

    def trim(self, keep: int | None = None) -> None:
        """Evict each worker's least recently used clients beyond `keep` (default: capacity);
        call it only when no client is between its forward and its backward."""
        keep = self.capacity if keep is None else keep
        for w, live in enumerate(self.live):
            self.finished_live[w] = OrderedDict()
            self._release(w, list(live)[:max(0, len(live) - keep)])

    def _release(self, w: int, client_ids: list[int]) -> None:
        """Worker `w` gives the clients up, in one task with an ObjectRef per client's state."""
        if not client_ids:
            return
        for client_id in client_ids:
            del self.live[w][client_id]
        refs = self.workers[w].release.options(num_returns=len(client_ids)).remote(client_ids)
        self.stored.update(zip(client_ids, refs if len(client_ids) > 1 else [refs], strict=True))

    def chunks(self, num_clients: int) -> Iterator[range]:
        """Client ids in runs that fit the pool's live clients, to trim between."""
        size = max(1, self.capacity * len(self.workers))
        for start in range(0, num_clients, size):
            yield range(start, min(start + size, num_clients))

    def states(self, num_clients: int) -> list[Any]:
        """Every client's state: an ObjectRef, or None for a client still as it started."""
        self.trim(keep=0)
        return [self.stored.get(i) for i in range(num_clients)]

    def restore(self, states: list[Any]) -> None:
        """Make `states` (ObjectRefs, state trees or None) the clients' states; no client live."""
        ray.get([w.drop_all.remote() for w in self.workers])
        self.live = [OrderedDict() for _ in self.workers]
        self.finished_live = [OrderedDict() for _ in self.workers]
        self.stored = {}
        for i, s in enumerate(states):
            if s is not None:
                self.stored[i] = s if isinstance(s, ray.ObjectRef) else ray.put(as_arrays(s))

    def saved(self, states: list[Any]) -> list[dict | None]:
        """`states` as tensor trees (None stays None), for a checkpoint file."""
        refs = [s for s in states if s is not None]
        values = iter(ray.get(refs))
        return [as_tensors(next(values)) if s is not None else None for s in states]


# Most clients a worker gives up at once in the middle of a round (one task for all of them).
RELEASE_BATCH = 16


def uses_pool(cfg: ExperimentConfig, cluster_cpus: float) -> bool:
    """Whether the Ray engine runs the clients on a worker pool: `engine.clients: pool`, or auto
    and an actor per client (at clients.num_cpus, next to the server) would not fit."""
    need = cfg.clients.count * cfg.clients.num_cpus + cfg.server.num_cpus
    return cfg.engine.clients == "pool" or (cfg.engine.clients == "auto"
                                            and need > cluster_cpus + 1e-9)


def pool_size(cfg: ExperimentConfig, cluster_cpus: float) -> int:
    """Workers in the pool: `engine.pool_workers`, or as many as the CPUs left after the server
    hold at `clients.num_cpus` each (at least one), never more than the clients."""
    if cfg.engine.pool_workers is not None:
        return min(cfg.engine.pool_workers, cfg.clients.count)
    free = max(cluster_cpus - cfg.server.num_cpus, cfg.clients.num_cpus)
    return max(1, min(math.floor(free / cfg.clients.num_cpus + 1e-9), cfg.clients.count))
