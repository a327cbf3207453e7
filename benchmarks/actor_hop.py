"""What the engine's hand-offs cost without any training: Ray tasks against a compiled graph.

Each step moves an array as the engine moves a payload: a client actor returns it (the forward),
a server actor takes it and returns one of the same size (the gradient), the client takes that
(the backward). As tasks each value goes through the object store and the driver submits three
tasks a step, as the engine does; a Ray compiled graph (`ray.dag`) passes the same values through
preallocated shared-memory channels. Alternates the two in one run and prints milliseconds a step
and their ratio. A compiled graph is a fixed per-step graph, and an actor runs one graph's loop at
a time (Ray's documented limit; `--two-graphs` shows a second graph on the same server actor never
getting its turn), so the engine, whose event loop picks each round's server order step by step,
keeps the tasks.

    python benchmarks/actor_hop.py                 # 2 MiB (VGG11 split 5, batch 64, fp32)
    python benchmarks/actor_hop.py --mib 8
    python benchmarks/actor_hop.py --two-graphs    # a second graph on the server actor
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import ray
from ray.dag import InputNode
from ray.exceptions import RayChannelTimeoutError


@ray.remote(num_cpus=0.5)
class Client:
    """Returns an activation-sized array and takes a gradient-sized one."""

    def __init__(self, nbytes: int) -> None:
        self.activation = np.ones(nbytes // 4, dtype=np.float32)

    def forward(self, step: int) -> np.ndarray:
        return self.activation * 1.0

    def backward(self, gradient: np.ndarray) -> float:
        return float(gradient[0])


@ray.remote(num_cpus=1)
class Server:
    """Returns a gradient the size of the activation it takes."""

    def step(self, activation: np.ndarray) -> np.ndarray:
        return activation * 0.5


def ms_per_step(run_step: Callable[[int], None], steps: int) -> float:
    """Mean host milliseconds of `steps` calls of `run_step`."""
    t0 = time.perf_counter()
    for k in range(steps):
        run_step(k)
    return (time.perf_counter() - t0) / steps * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=2.0, help="payload size each way, MiB")
    parser.add_argument("--steps", type=int, default=100, help="steps a measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each")
    parser.add_argument("--two-graphs", action="store_true",
                        help="compile a second client's graph on the same server actor")
    args = parser.parse_args()
    nbytes = int(args.mib * 2**20)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    clients = [Client.remote(nbytes) for _ in range(2 if args.two_graphs else 1)]
    server = Server.remote()
    graphs = []
    for client in clients:
        with InputNode() as step:
            graph = client.backward.bind(server.step.bind(client.forward.bind(step)))
        graphs.append(graph.experimental_compile(_buffer_size_bytes=nbytes + 2**20))
    if args.two_graphs:
        print("two compiled graphs share the server actor; executing both once ...", flush=True)
        try:
            ray.get([g.execute(0) for g in graphs], timeout=30)
            print("both graphs ran")
        except RayChannelTimeoutError:
            print("the second graph's step never ran: Ray's docs say an actor executes one "
                  "compiled graph at a time")
        return

    client, graph = clients[0], graphs[0]

    def as_tasks(k: int) -> None:
        ray.get(client.backward.remote(server.step.remote(client.forward.remote(k))))

    def compiled(k: int) -> None:
        ray.get(graph.execute(k))

    as_tasks(0)  # warm-up: actors' first calls
    compiled(0)
    tasks_ms, compiled_ms = [], []
    for _ in range(args.repeats):
        tasks_ms.append(ms_per_step(as_tasks, args.steps))
        compiled_ms.append(ms_per_step(compiled, args.steps))
        print(f"{args.mib:g} MiB each way: tasks {tasks_ms[-1]:6.2f} ms a step, "
              f"compiled graph {compiled_ms[-1]:6.2f} ms", flush=True)
    graph.teardown(kill_actors=True)
    tasks, comp = statistics.median(tasks_ms), statistics.median(compiled_ms)
    print(f"median: tasks {tasks:.2f} ms, compiled graph {comp:.2f} ms; "
          f"ratio {tasks / comp:.2f} (tasks / compiled graph)")


if __name__ == "__main__":
    main()
