"""The driver's own memory as a run's rows pile up: it should stay flat (rows go to part files).

Runs an experiment (default experiments/many_clients.yaml) and prints, after every epoch, the
samples trained so far (the step rows grow with them), the simulated time (availability traces
are drawn as far as it) and the driver process's PSS and private memory (/proc/self/smaps_rollup);
the last line gives the growth from the first epoch to the last. PSS also moves when other
processes map or unmap the same libraries; private memory is the driver's alone.

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
from scale import smaps_kb  # noqa: E402

from splitray.config import load_config  # noqa: E402
from splitray.runtime import run_experiment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="experiments/many_clients.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
    samples: list[tuple[int, float, float]] = []  # epoch, driver PSS GB, private GB

    def after_epoch(row: dict, checkpoint: str | None) -> None:
        pss_gb = smaps_kb(os.getpid()) / 1e6
        private_gb = smaps_kb(os.getpid(), "Private_Clean", "Private_Dirty") / 1e6
        samples.append((row["epoch"] + 1, pss_gb, private_gb))
        print(f"epoch {row['epoch'] + 1:>3}  samples so far {row['samples_seen']:>9}  "
              f"sim {row['sim_time_s']:9.0f} s  wall {row['wall_time_s']:7.1f} s  "
              f"driver PSS {pss_gb:.3f} GB, private {private_gb:.3f} GB", flush=True)

    with tempfile.TemporaryDirectory() as out:
        result = run_experiment(cfg, out_dir=out, engine="ray", progress=False,
                                on_epoch=after_epoch)
        rows = len(result.steps)
    (_, first_pss, first_private), (last_epoch, last_pss, last_private) = samples[0], samples[-1]
    print(f"{rows} step rows; driver PSS {first_pss:.3f} GB after epoch 1, {last_pss:.3f} GB after "
          f"epoch {last_epoch}: {1e3 * (last_pss - first_pss):+.0f} MB; private "
          f"{1e3 * (last_private - first_private):+.0f} MB", flush=True)


if __name__ == "__main__":
    main()
