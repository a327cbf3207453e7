"""Where the CPU goes: each process's CPU seconds during a fused and an engine run of the same steps.

The engine_overhead.py setting (VGG11 split 5, batch 64, one client, and its options) over two
epochs, 20 steps each unless --steps says otherwise; the window
is the second epoch (every actor started and warm), from the end of the first evaluation to the
end of the second. Prints the window's wall seconds and, per process of the driver's tree (the
driver, Ray's daemons, the actors), its CPU seconds and share of the machine's cores, so the
engine's extra work (actors, daemons, object store copies) shows beside the fused trainer's.

    python benchmarks/process_cpu.py                       # fused, then engine
    python benchmarks/process_cpu.py --order ray,local,ray,local --steps 30
    python benchmarks/process_cpu.py --clients 8 --pool
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_overhead import setting_overrides, setting_parser  # noqa: E402
from scale import process_tree, stat_fields  # noqa: E402

from splitray.config import ExperimentConfig, load_config  # noqa: E402
from splitray.runtime import run_experiment  # noqa: E402

TICKS_PER_S = os.sysconf("SC_CLK_TCK")
DAEMONS = ("raylet", "gcs_server", "dashboard/agent", "runtime_env/agent", "log_monitor",
           "monitor.py", "dashboard.py")


def process_name(pid: int) -> str:
    """The driver, a Ray daemon by its program, or a worker by its title (ray::ServerActor)."""
    if pid == os.getpid():
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/comm") as f:
            title = f.read().strip()
    except OSError:
        return "gone"
    return next((d for d in DAEMONS if d in command), title)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (0 once it is gone)."""
    fields = stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def second_epoch(cfg: ExperimentConfig, engine: str) -> tuple[float, Counter]:
    """Wall seconds of the run's second epoch and each process's CPU seconds in it, by name."""
    marks: list[tuple[float, dict[int, tuple[str, float]]]] = []

    def after_epoch(row: dict, checkpoint: str | None) -> None:
        snapshot = {pid: (process_name(pid), cpu_s(pid)) for pid in process_tree(os.getpid())}
        marks.append((time.perf_counter(), snapshot))

    run_experiment(cfg, out_dir=None, engine=engine, on_epoch=after_epoch, progress=False)
    (t0, before), (t1, after) = marks
    used: Counter = Counter()
    for pid, (name, cpu) in after.items():
        used[name] += cpu - before.get(pid, (name, 0.0))[1]
    return t1 - t0, used


def main() -> None:
    parser = setting_parser(__doc__.splitlines()[0])
    parser.set_defaults(steps=20)
    parser.add_argument("--order", default="local,ray",
                        help="engines to run, in order, comma-separated (local: fused trainer)")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    cfg = load_config(overrides=setting_overrides(args, epochs=2))
    ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)
    for engine in args.order.split(","):
        wall_s, used = second_epoch(cfg, engine)
        print(f"{engine}: {wall_s:.1f} s for {args.steps} steps a client, "
              f"{sum(used.values()) / (cores * wall_s):.1%} of {cores} cores busy")
        for name, cpu in used.most_common():
            if cpu >= 0.01:
                print(f"  {name:24s} {cpu:7.2f} s CPU  {cpu / (cores * wall_s):6.1%} of the cores")


if __name__ == "__main__":
    main()
