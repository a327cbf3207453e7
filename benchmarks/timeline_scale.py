"""Cost of the discrete-event timeline per client step as the clients on one medium grow.

One round of n clients on one shared Wi-Fi medium (each step: forward, uplink, server, downlink,
backward; constant durations, no training), timed for n = 100, 1,000 and 10,000. Processor
sharing is kept in virtual airtime, so a step should cost about the same at any n; the last line
prints the ratio of the per-step cost at the largest n to that at the smallest, measured in one run.

    python benchmarks/timeline_scale.py
"""

from __future__ import annotations

import argparse
import time

from splitray.network import DeviceProfile, NetworkModel, SharedMedium
from splitray.runtime.timeline import ServerWork, StepJob, Timeline

DEVICE = DeviceProfile("bench", 1e9, "1 GFLOP/s")


def seconds_per_step(n: int) -> float:
    medium = SharedMedium(54e6, 54e6, latency_s=0.002)
    timeline = Timeline(NetworkModel(dict.fromkeys(range(n), medium)), [DEVICE] * n, DEVICE)
    jobs = [StepJob(i, 0.0, forward_s=0.01 * (i % 7), bytes_up=20_000) for i in range(n)]
    t0 = time.perf_counter()
    timeline.run(jobs, lambda job: ServerWork(1e-4, 20_000, lambda: 0.01))
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10000])
    args = parser.parse_args()
    costs = {}
    for n in args.clients:
        costs[n] = seconds_per_step(n)
        print(f"{n:6d} clients: {costs[n] * 1e6:8.1f} us per step")
    lo, hi = min(costs), max(costs)
    print(f"ratio {costs[hi] / costs[lo]:.2f} (per-step cost at {hi} clients / at {lo})")


if __name__ == "__main__":
    main()
