"""What idle Ray actors cost a busy one: the server's step with and without N idle client actors.

One actor runs the server part of VGG11-BN split 5 (forward and backward of a 64 x 128 x 8 x 8
batch) with all cores' threads, as the engine's server does; N more actors, each with torch
imported and one thread, do nothing. Runs alternate without and with the idle actors and print
the step's median milliseconds, their ratio, and how often an idle actor wakes up (each wake-up
takes a core from the server's OpenMP threads for a moment). Every actor gets the engine's
runtime environment (`ACTOR_RUNTIME_ENV`).

    python benchmarks/idle_actors.py              # 8 idle actors, as --clients 8 has
    python benchmarks/idle_actors.py --idle 16
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import time

import ray
import torch

from splitray.models import build_model, split
from splitray.runtime.actors import ACTOR_RUNTIME_ENV


@ray.remote
class Busy:
    """The server's step: VGG11-BN after split 5, forward and backward, all cores' threads."""

    def __init__(self, threads: int) -> None:
        torch.set_num_threads(threads)
        _, self.server_part = split(build_model("vgg11_bn", num_classes=10,
                                                input_shape=(3, 32, 32)), 5)
        self.batch = torch.randn(64, 128, 8, 8)

    def median_step_ms(self, steps: int) -> float:
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            self.server_part(self.batch).sum().backward()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1e3


@ray.remote
class Idle:
    """A client actor between calls: torch imported, one thread, a model, no work."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.model = torch.nn.Conv2d(3, 64, 3)

    def pid(self) -> int:
        return os.getpid()


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of every thread of process `pid` so far."""
    total = 0
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        try:
            with open(status) as f:
                total += sum(int(line.split()[1]) for line in f if "ctxt_switches" in line)
        except OSError:  # a thread that ended meanwhile
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=8, help="idle actors beside the busy one")
    parser.add_argument("--steps", type=int, default=50, help="server steps per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)
    busy = Busy.options(num_cpus=1, runtime_env=ACTOR_RUNTIME_ENV).remote(cores)
    ray.get(busy.median_step_ms.remote(5))  # warm-up
    alone, beside, wakeups = [], [], []
    for _ in range(args.repeats):
        alone.append(ray.get(busy.median_step_ms.remote(args.steps)))
        idle = [Idle.options(num_cpus=0.01, runtime_env=ACTOR_RUNTIME_ENV).remote()
                for _ in range(args.idle)]
        pids = ray.get([a.pid.remote() for a in idle])
        before, t0 = [context_switches(p) for p in pids], time.perf_counter()
        beside.append(ray.get(busy.median_step_ms.remote(args.steps)))
        seconds = time.perf_counter() - t0
        wakeups.append(statistics.mean(context_switches(p) - b for p, b in zip(pids, before,
                                                                              strict=True))
                       / seconds)
        for a in idle:
            ray.kill(a)
        time.sleep(2)  # the killed processes gone before the next measurement alone
    print(f"server step of VGG11-BN split 5, batch 64, {cores} threads; medians of "
          f"{args.steps} steps, {args.repeats} repeats")
    for k, (a, b) in enumerate(zip(alone, beside, strict=True)):
        print(f"  repeat {k}: alone {a:6.1f} ms, beside {args.idle} idle actors {b:6.1f} ms "
              f"({b / a:.3f}x)")
    print(f"idle actor wake-ups: {statistics.mean(wakeups):.0f} per second each")
    print(f"ratio {statistics.median(beside) / statistics.median(alone):.3f} "
          f"(step beside {args.idle} idle actors / alone, medians)")


if __name__ == "__main__":
    main()
