"""Many clients on one machine: the worker pool against the fused trainer, measured in one run.

For each setting, runs parallel SL with the clients as state on a pool of worker actors
(`engine.clients: pool`) and the fused single-process trainer on the same model, batch and
steps, and prints wall seconds per round, samples/s of both and their ratio, the peak memory of
the whole process tree (this process, Ray's daemons and actors) summed as PSS from
/proc/PID/smaps_rollup, so object-store pages shared by several processes count once, and the
start-up time. One JSON object per setting follows its table line, for scripts.

    python benchmarks/scale.py            # vgg11_bn with 10, 100, 1,000 clients; tiny_cnn 10,000
    python benchmarks/scale.py --quick    # the smallest setting only

The fused trainer runs at most --fused-clients clients (building a thousand full models in one
process only costs start-up; a step costs the same whoever's it is); same steps per round. It runs
before and after the pool; the ratio is against the mean of the two.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import dataclass

import pandas as pd
import ray

from splitray.config import load_config
from splitray.runtime import run_experiment

# Ray's CPUs are logical: the server gets all cores' worth of threads, as the fused trainer has,
# and so does the one pool worker when a client step fills the cores (vgg11_bn); it then runs
# each forward only when the server is about to take it (engine.prefetch 0), so that the two
# never fight over the cores. A tiny_cnn step is too small to fill them: one thread, forwards
# ahead. The cluster has the CPUs for both at once.
CORES = os.cpu_count() or 2


@dataclass
class Setting:
    model: str
    split_layer: int
    batch_size: int
    image_size: int
    clients: int
    per_round: int | None  # None: every client in every round
    steps_per_client: int
    client_cpus: int = CORES
    prefetch: int | None = 0  # engine.prefetch (None: the engine's default)


SETTINGS = [
    Setting("vgg11_bn", 5, 16, 32, 10, None, 4),
    Setting("vgg11_bn", 5, 16, 32, 100, None, 2),
    Setting("vgg11_bn", 5, 16, 32, 1000, None, 2),
    Setting("tiny_cnn", 3, 8, 16, 10_000, 500, 1, client_cpus=1, prefetch=None),
]


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command (state, ppid, ...), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            # the command may hold spaces and parentheses: the fields after the last ')'
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := stat_fields(int(name))) is not None:
            tree.setdefault(int(fields[1]), []).append(int(name))
    return tree


def smaps_kb(pid: int, *fields: str) -> int:
    """The sum of these /proc/PID/smaps_rollup fields (default: Pss) in kB; 0 if it is gone."""
    wanted = {f"{name}:" for name in fields or ("Pss",)}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            return sum(int(line.split()[1]) for line in f if line.split(maxsplit=1)[0] in wanted)
    except OSError:
        return 0


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants (a local Ray cluster's daemons and workers descend from
    the driver that started it)."""
    tree, stack, pids = _children(), [root], []
    while stack:
        pid = stack.pop()
        pids.append(pid)
        stack += tree.get(pid, [])
    return pids


def tree_pss_gb(root: int) -> tuple[float, float]:
    """PSS of `root` and all its descendants, and of `root` alone, in GB."""
    return sum(smaps_kb(pid) for pid in process_tree(root)) / 1e6, smaps_kb(root) / 1e6


class PeakMemory:
    """Samples the process tree's PSS in a thread; `peak_gb` is the largest sum seen.

    Reading smaps_rollup walks each process's page tables: with the object store mapped into
    every Ray process it cost about 0.14 CPU seconds a sample at 1,000 clients, a quarter of a core
    at one sample per 0.5 s, taken from the run it measures. So the sampler waits at least
    `MAX_SHARE`'s inverse times as long as its last sample took, and reports its CPU seconds."""

    MAX_SHARE = 0.03  # of one core

    def __init__(self, period_s: float = 0.5) -> None:
        self.period_s = period_s
        self.peak_gb = self.driver_peak_gb = 0.0
        self.sampler_cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.thread_time()
            total, driver = tree_pss_gb(os.getpid())
            cost_s = time.thread_time() - t0
            self.sampler_cpu_s += cost_s
            self.peak_gb = max(self.peak_gb, total)
            self.driver_peak_gb = max(self.driver_peak_gb, driver)
            self._stop.wait(max(self.period_s, cost_s / self.MAX_SHARE))

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def config(s: Setting, engine_clients: str):
    clients = s.clients
    samples = clients * s.batch_size * s.steps_per_client
    overrides = [
        f"name=scale-{s.model}-{clients}", f"model.name={s.model}",
        f"model.split_layer={s.split_layer}", "data.name=synthetic",
        f"data.image_size={s.image_size}", f"data.train_samples={samples}",
        f"data.test_samples={clients}", "data.partition=iid",
        f"train.batch_size={s.batch_size}", f"train.steps_per_epoch={s.steps_per_client}",
        "compression.enabled=false", "schedule.phases=[{epochs: 1}]",
        f"clients.count={clients}", f"clients.num_cpus={s.client_cpus}",
        f"server.num_cpus={CORES}", "clients.devices=[laptop_cpu]", "network.links=[wifi5]",
        f"engine.clients={engine_clients}", "engine.pool_workers=1",
    ]
    if s.prefetch is not None:
        overrides.append(f"engine.prefetch={s.prefetch}")
    if s.per_round:
        overrides.append(f"clients.per_round={s.per_round}")
    return load_config(overrides=overrides)


def throughput(steps: pd.DataFrame) -> tuple[float, float]:
    """Wall seconds per round and samples/s after the first round (the first is warm-up)."""
    ends = steps.groupby("round")["wall_time_s"].max()
    if len(ends) < 2:
        raise SystemExit("a setting needs at least two rounds to time")
    timed = steps[steps["round"] > ends.index[0]]
    wall_s = ends.iloc[-1] - ends.iloc[0]
    return wall_s / (len(ends) - 1), timed["batch_size"].sum() / wall_s


def fused_samples_per_s(s: Setting, fused_clients: int) -> float:
    """Samples/s of the fused single-process trainer over the same steps as setting `s` (at most
    `fused_clients` clients, as many steps per round)."""
    n_fused = min(s.clients, fused_clients)
    steps = s.steps_per_client
    if s.per_round:  # the steps of the sampled rounds, spread over the fused trainer's clients
        steps = max(2, math.ceil(steps * s.per_round / n_fused))
    fused_setting = dataclasses.replace(s, clients=n_fused, per_round=None, steps_per_client=steps)
    fused = run_experiment(config(fused_setting, "auto"), out_dir=None, engine="local",
                           progress=False)
    return throughput(fused.steps)[1]


def measure(s: Setting, fused_clients: int, out: str) -> dict:
    # The fused trainer runs before and after the pool, and the ratio takes their mean: on a
    # shared 2-core host one run of it has varied by a third within minutes.
    fused_before = fused_samples_per_s(s, fused_clients)
    with PeakMemory() as memory:
        t0 = time.perf_counter()
        result = run_experiment(config(s, "pool"), out_dir=out, engine="ray",
                                progress=False)
        elapsed_s = time.perf_counter() - t0
    fused_after = fused_samples_per_s(s, fused_clients)
    fused = (fused_before + fused_after) / 2
    manifest = json.loads(open(os.path.join(result.run_dir, "manifest.json")).read())
    per_round_s, samples_per_s = throughput(result.steps)
    before_run_s = elapsed_s - manifest["wall_time_s"]  # data, actors
    first_round_s = result.steps.loc[result.steps["round"] == result.steps["round"].min(),
                                     "wall_time_s"].max()
    return {
        "model": s.model, "clients": s.clients, "per_round": s.per_round or s.clients,
        "wall_per_round_s": round(per_round_s, 3), "samples_per_s": round(samples_per_s, 1),
        "fused_samples_per_s": round(fused, 1), "ratio": round(samples_per_s / fused, 3),
        "peak_mem_gb": round(memory.peak_gb, 2), "startup_s": round(before_run_s + first_round_s, 1),
        "driver_peak_mem_gb": round(memory.driver_peak_gb, 2),
        "memory_sampler_cpu_s": round(memory.sampler_cpu_s, 1),
        "pool_workers": manifest.get("pool_workers"), "fused_clients": min(s.clients, fused_clients),
        "fused_before_after": [round(fused_before, 1), round(fused_after, 1)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the smallest setting")
    parser.add_argument("--fused-clients", type=int, default=100,
                        help="most clients the fused trainer runs (default 100)")
    parser.add_argument("--setting", type=int, action="append",
                        help="run only these settings, by index 0..3 (repeatable)")
    args = parser.parse_args()
    chosen = [SETTINGS[0]] if args.quick else [SETTINGS[i] for i in (args.setting or
                                                                     range(len(SETTINGS)))]
    ray.init(num_cpus=2 * CORES, include_dashboard=False, log_to_driver=False)
    print(f"{'model':>9} {'clients':>7} {'/round':>6} {'s/round':>8} {'samples/s':>9} "
          f"{'fused/s':>8} {'ratio':>6} {'peak GB':>7} {'start s':>7}", flush=True)
    with tempfile.TemporaryDirectory() as out:
        for s in chosen:
            row = measure(s, args.fused_clients, out)
            print(f"{row['model']:>9} {row['clients']:>7} {row['per_round']:>6} "
                  f"{row['wall_per_round_s']:>8.2f} {row['samples_per_s']:>9.1f} "
                  f"{row['fused_samples_per_s']:>8.1f} {row['ratio']:>6.3f} "
                  f"{row['peak_mem_gb']:>7.2f} {row['startup_s']:>7.1f}", flush=True)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
