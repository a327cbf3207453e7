"""The driver's own memory as a run's rows pile up: it should stay flat (rows go to part files).

Runs an experiment (default experiments/many_clients.yaml) and prints, after every epoch, the
samples trained so far (the step rows grow with them), the simulated time (availability traces
are drawn as far as it) and the driver process's PSS (/proc/self/smaps_rollup); the last line
gives the growth from the first epoch to the last.

    python benchmarks/driver_memory.py
    python benchmarks/driver_memory.py --set 'schedule.phases=[{budget: 16, epochs: 6}]'
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scale import tree_pss_gb  # noqa: E402

from splitray.config import load_config  # noqa: E402
from splitray.runtime import run_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="experiments/many_clients.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    samples: list[tuple[int, float]] = []  # epoch, driver PSS GB

    def after_epoch(row: dict, checkpoint: str | None) -> None:
        _, driver_gb = tree_pss_gb(os.getpid())
        samples.append((row["epoch"] + 1, driver_gb))
        print(f"epoch {row['epoch'] + 1:>3}  samples so far {row['samples_seen']:>9}  "
              f"sim {row['sim_time_s']:9.0f} s  wall {row['wall_time_s']:7.1f} s  "
              f"driver PSS {driver_gb:.3f} GB", flush=True)

    with tempfile.TemporaryDirectory() as out:
        result = run_experiment(cfg, out_dir=out, engine="ray", progress=False,
                                on_epoch=after_epoch)
        rows = len(result.steps)
    first, last = samples[0][1], samples[-1][1]
    print(f"{rows} step rows; driver PSS {first:.3f} GB after epoch 1, {last:.3f} GB after "
          f"epoch {samples[-1][0]}: {1e3 * (last - first):+.0f} MB", flush=True)


if __name__ == "__main__":
    main()
