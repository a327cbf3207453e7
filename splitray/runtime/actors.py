"""Ray actors for the client devices and the server: the shared roles, with real threads capped.

An actor takes the run's data in `ready`, a call, not in its constructor: Ray cannot promise a
restarted actor the object-store arguments of its constructor (ray-project/ray#53727, and an
error line on every run), while the driver keeps the data's ObjectRefs for the whole run and hands
them again whenever it waits for a restarted actor.
"""

from __future__ import annotations

import uuid
import warnings
from typing import Any

import numpy as np
import ray
import torch

from splitray.config import ExperimentConfig
from splitray.data import ArrayDataset, ClientShards
from splitray.roles import ClientRole, ServerRole

# The runtime environment of every actor of a run (clients, pool workers, server).
# The actors share the machine's cores. An idle OpenMP thread spins a short while, then
# sleeps: long spinning (OMP_WAIT_POLICY=ACTIVE) eats the compute of the actor that runs
# next (2.4x slower steps on 2 cores), no spinning (PASSIVE) wakes threads between every
# two ops (the engine at 0.85 of the fused trainer with one client instead of 0.93).
# GOMP_SPINCOUNT is libgomp's (Linux wheels of torch), KMP_BLOCKTIME (ms) LLVM libomp's.
# Ray starts its workers at niceness 15, below its own daemons and the driver: any process
# that wakes takes a core from a client or server step at once (next to a 2-thread torch
# load, a bare actor call took 26 ms at 15, 1.7 ms at 0). The actors run at the driver's
# priority instead, as the fused trainer does.
# glibc gives freed memory at the top of a heap back to the kernel once it exceeds twice the
# largest block mapped so far, and the next step's activations fault those pages in and
# zero them again: with 8 client actors the server and clients took 1.7 million minor faults
# an epoch and 18 % more CPU than the fused trainer (2026-12-04). Fixed thresholds keep up to
# 256 MiB of freed memory for reuse and serve blocks up to 32 MiB (glibc's most) from it.
ACTOR_RUNTIME_ENV = {"env_vars": {"GOMP_SPINCOUNT": "100000", "KMP_BLOCKTIME": "1",
                                  "RAY_worker_niceness": "0",
                                  "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
                                  "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}}


def put_shards(shards: ClientShards) -> tuple[Any, ...]:
    """The run's data in the object store once, as numpy arrays that every actor on a node maps
    without copies: the ObjectRefs `ActorProcess.ready` takes."""
    def arrays(data: ArrayDataset) -> tuple[np.ndarray, np.ndarray, int]:
        return data.images.numpy(), data.labels.numpy(), data.num_classes

    return (ray.put(arrays(shards.train)), ray.put(arrays(shards.test)),
            ray.put((shards.train_parts, shards.test_parts)))


def shards_from_store(train: tuple, test: tuple, parts: tuple) -> ClientShards:
    """The inverse of `put_shards`, on the actor's side."""
    def dataset(arrays: tuple[np.ndarray, np.ndarray, int]) -> ArrayDataset:
        images, labels, num_classes = arrays
        with warnings.catch_warnings():  # read-only store pages: batches index (copy), never write
            warnings.simplefilter("ignore", UserWarning)
            return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), num_classes)

    return ClientShards(dataset(train), dataset(test), *parts)


class ActorProcess:
    """What every actor of a run does: cap torch's threads, name this incarnation of the actor,
    and take the run's data once per incarnation. Ray reruns the constructor when it restarts a
    dead actor, so a new name tells the driver that the actor's state is its constructor's even
    when no call failed."""

    def _start_process(self, num_threads: int) -> None:
        """Call first in the constructor."""
        torch.set_num_threads(num_threads)
        self.incarnation_id = uuid.uuid4().hex
        self._has_data = False

    def ready(self, *data: Any) -> str:
        """Take the run's data (what `put_shards` stored; none for the server) unless this
        incarnation has it; returns the incarnation."""
        if not self._has_data:
            self._take_data(*data)
            self._has_data = True
        return self.incarnation_id

    def _take_data(self, *data: Any) -> None:
        """Build what needs the run's data."""

    def __getattr__(self, name: str) -> Any:
        # Called only for attributes not found: name the cause when it is a missing `ready`.
        if not self.__dict__.get("_has_data", True):
            raise AttributeError(f"{type(self).__name__} has no {name!r}: this incarnation has "
                                 "not been given the run's data yet (a restarted actor gets it "
                                 "from the driver's `ready` call)")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def incarnation(self) -> str:
        """This process's id for the actor, new after every restart."""
        return self.incarnation_id


@ray.remote
class ClientActor(ActorProcess, ClientRole):
    """A client device as a Ray actor; its torch threads match its logical CPUs. It becomes the
    client (its model, shard and optimizer) when `ready` hands it the run's data."""

    def __init__(self, num_threads: int, client_id: int, cfg: ExperimentConfig) -> None:
        self._start_process(num_threads)
        self._init_args = (client_id, cfg)

    def _take_data(self, train: tuple, test: tuple, parts: tuple) -> None:
        client_id, cfg = self._init_args
        shards = shards_from_store(train, test, parts)
        ClientRole.__init__(self, client_id, cfg, *shards.of(client_id), shards.train.num_classes)


@ray.remote
class ServerActor(ActorProcess, ServerRole):
    """The server as a Ray actor (on the GPU when it is given one)."""

    def __init__(self, num_threads: int, *args) -> None:
        self._start_process(num_threads)
        super().__init__(*args)
