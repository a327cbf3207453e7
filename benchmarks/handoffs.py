"""Where a one-client engine step's time goes, from Ray's task timeline (`ray.timeline()`).

A step is three actor tasks: the client's forward, the server's step, the client's backward.
Prints, as medians over the steps after the first five, each task's time (and within it
deserialising its arguments and storing its results in the object store) and the idle hand-offs
between them: Ray telling the driver a result exists and the driver pushing the next task.

    python benchmarks/handoffs.py               # VGG11 split 5, batch 64, 30 steps
    python benchmarks/handoffs.py --steps 60 --batch-size 32
"""

from __future__ import annotations

import os
import statistics
import sys

import ray

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from engine_overhead import setting_overrides, setting_parser  # noqa: E402

from splitray.config import load_config  # noqa: E402
from splitray.runtime import run_experiment  # noqa: E402

TASKS = {"forward": "ClientActor.forward", "step": "ServerActor.step",
         "backward": "ClientActor.backward"}
PHASES = ("task:deserialize_arguments", "task:execute", "task:store_outputs")
WARM_UP_STEPS = 5


def median_ms(values: list[float]) -> float:
    return statistics.median(values) / 1000.0  # the timeline counts microseconds


def main() -> None:
    parser = setting_parser(__doc__.splitlines()[0])
    args = parser.parse_args()
    if args.clients != 1 or args.pool:
        parser.error("the hand-offs of one step are those of one client on its own actor: "
                     "--clients 1, no --pool")
    # The run kills its actors at its end: they must have reported their last tasks by then
    # (Ray's default, every second, loses the last second's steps).
    os.environ.setdefault("RAY_task_events_report_interval_ms", "100")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    run_experiment(load_config(overrides=setting_overrides(args, epochs=1)), out_dir=None,
                   engine="ray", progress=False)
    events = [e for e in ray.timeline() if e.get("ph") == "X"]
    # Ray's timeline names the node as "pid" and the worker process as "tid".
    spans = {name: sorted((e["ts"], e["ts"] + e["dur"], e["tid"]) for e in events
                          if e["cat"] == f"task::{task}")
             for name, task in TASKS.items()}
    steps = min(len(s) for s in spans.values())
    if steps < args.steps:
        print(f"Ray's timeline holds {steps} of the {args.steps} steps")
    if steps <= WARM_UP_STEPS + 1:
        raise SystemExit(f"the timeline holds {steps} steps; run more (--steps)")
    timed = range(WARM_UP_STEPS, steps - 1)
    print(f"{args.model} split {args.split_layer}, batch {args.batch_size}: medians of steps "
          f"{WARM_UP_STEPS + 1}-{steps - 1} (ms)")
    for name, task_spans in spans.items():
        phases = {phase: [] for phase in PHASES}
        for k in timed:
            start, end, worker = task_spans[k]
            for e in events:  # the phases Ray records inside this task
                if e["cat"] in phases and e["tid"] == worker and start <= e["ts"] <= end:
                    phases[e["cat"]].append(e["dur"])
        inside = ", ".join(f"{phase.split(':')[1].replace('_', ' ')} {median_ms(d):.2f}"
                           for phase, d in phases.items() if d)
        print(f"  {name:9s} {median_ms([task_spans[k][1] - task_spans[k][0] for k in timed]):7.1f}"
              f"  ({inside})")
    fwd, srv, bwd = spans["forward"], spans["step"], spans["backward"]
    gaps = {"forward -> step": [srv[k][0] - fwd[k][1] for k in timed],
            "step -> backward": [bwd[k][0] - srv[k][1] for k in timed],
            "backward -> next forward": [fwd[k + 1][0] - bwd[k][1] for k in timed]}
    for name, values in gaps.items():
        print(f"  idle {name:25s} {median_ms(values):6.2f}")
    print(f"  step (forward to next forward) {median_ms([fwd[k + 1][0] - fwd[k][0] for k in timed]):.1f}")


if __name__ == "__main__":
    main()
