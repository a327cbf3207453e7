"""Where the CPU goes: each process's CPU seconds during a fused and an engine run of the same steps.

The engine_overhead.py setting (VGG11 split 5, batch 64, one client, and its options) over two
epochs, 20 steps each unless --steps says otherwise; the window
is the second epoch (every actor started and warm), from the end of the first evaluation to the
end of the second. Prints the window's wall seconds and, per process of the driver's tree (the
driver, Ray's daemons, the actors), its CPU seconds and share of the machine's cores, so the
engine's extra work (actors, daemons, object store copies) shows beside the fused trainer's; the
system share and minor page faults show memory mapped anew.

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


def cpu_use(pid: int) -> Counter:
    """A process's user and system CPU seconds and minor page faults so far (none once it is
    gone). System time and faults show memory the process maps anew (glibc hands freed large
    blocks back to the kernel, and the next step's pages are faulted in and zeroed again)."""
    fields = stat_fields(pid)
    if fields is None:
        return Counter()
    return Counter({"user_s": int(fields[11]) / TICKS_PER_S, "system_s": int(fields[12]) / TICKS_PER_S,
                    "minor_faults": int(fields[7])})


def second_epoch(cfg: ExperimentConfig, engine: str) -> tuple[float, dict[str, Counter]]:
    """Wall seconds of the run's second epoch and each process's `cpu_use` in it, by name."""
    marks: list[tuple[float, dict[int, tuple[str, Counter]]]] = []

    def after_epoch(row: dict, checkpoint: str | None) -> None:
        snapshot = {pid: (process_name(pid), cpu_use(pid)) for pid in process_tree(os.getpid())}
        marks.append((time.perf_counter(), snapshot))

    run_experiment(cfg, out_dir=None, engine=engine, on_epoch=after_epoch, progress=False)
    (t0, before), (t1, after) = marks
    used: dict[str, Counter] = {}
    for pid, (name, now) in after.items():
        then = before.get(pid, (name, Counter()))[1]
        used.setdefault(name, Counter()).update({k: v - then[k] for k, v in now.items()})
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
        cpu = {name: u["user_s"] + u["system_s"] for name, u in used.items()}
        print(f"{engine}: {wall_s:.1f} s for {args.steps} steps a client, "
              f"{sum(cpu.values()) / (cores * wall_s):.1%} of {cores} cores busy")
        for name, u in sorted(used.items(), key=lambda item: -cpu[item[0]]):
            if cpu[name] >= 0.01:
                print(f"  {name:24s} {cpu[name]:7.2f} s CPU  {cpu[name] / (cores * wall_s):6.1%} "
                      f"of the cores  (system {u['system_s']:6.2f} s, "
                      f"{u['minor_faults']:>9,} minor faults)")


if __name__ == "__main__":
    main()
