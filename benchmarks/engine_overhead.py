"""Throughput of the Ray engine against the fused single-process trainer, measured in one run.

Same model, data, batches and step code; the engine adds actors, ObjectRefs and the network model.
Prints samples/s of every run, the ratio of each engine run to the fused run just before it (their
median and range show the host's noise) and ends with `ratio <engine/fused>`, the ratio of the best
run of each.

    python benchmarks/engine_overhead.py                 # VGG11 split 5, batch 64, 1 client
    python benchmarks/engine_overhead.py --clients 8     # 8 clients on a shared Wi-Fi medium
    python benchmarks/engine_overhead.py --clients 8 --pool   # the clients as state on one
                                                         # pool worker instead of 8 actors
    python benchmarks/engine_overhead.py --clients 8 --prefetch 0   # no forward runs ahead of
                                                         # the server (engine.prefetch)
    python benchmarks/engine_overhead.py --checkpoint    # engine with vs without a checkpoint
                                                         # after each of 3 epochs (ratio)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import ray
import torch

from splitray.config import load_config
from splitray.runtime import run_experiment


def samples_per_s(steps) -> float:
    """Training throughput between the first and the last round (the first is warm-up)."""
    first, last = steps["round"].min(), steps["round"].max()
    timed = steps[steps["round"] > first]
    wall = (steps.loc[steps["round"] == last, "wall_time_s"].max()
            - steps.loc[steps["round"] == first, "wall_time_s"].max())
    return timed["batch_size"].sum() / wall


def samples_per_epoch_s(steps, epoch_ends: list[float]) -> float:
    """Throughput from the end of the first epoch to the end of the last, each epoch's
    evaluation and checkpoint included (a checkpoint follows its epoch's last round)."""
    return steps.loc[steps["epoch"] > steps["epoch"].min(), "batch_size"].sum() / (
        epoch_ends[-1] - epoch_ends[0])


def setting_parser(description: str) -> argparse.ArgumentParser:
    """The options of the measured setting (model, split, batch, clients, steps, engine knobs),
    shared with process_cpu.py."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="vgg11")
    parser.add_argument("--split-layer", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30, help="steps per client")
    parser.add_argument("--compression", action="store_true", help="budget 16, fp16 codecs")
    parser.add_argument("--pool", action="store_true",
                        help="the clients as state on one pool worker with all cores' threads, "
                             "each forward when the server takes it (engine.prefetch 0)")
    parser.add_argument("--prefetch", type=int, default=None,
                        help="engine.prefetch: client forwards run ahead of the server "
                             "(default: the engine's)")
    return parser


def setting_overrides(args: argparse.Namespace, epochs: int) -> list[str]:
    """Config overrides of the setting in `args`, over `epochs` epochs."""
    cores = os.cpu_count() or 2
    # Ray resources are logical: client(s) and server each get all cores' worth of threads,
    # as the fused trainer does; they alternate in time, so nothing is oversubscribed. Several
    # client actors would not alternate (one's backward runs beside the next one's forward and
    # the server's step), so they get a thread each; one pool worker runs them all in turn.
    one_at_a_time = args.clients == 1 or args.pool
    client_cpus = cores if one_at_a_time else max(cores / args.clients / 2, 0.01)
    overrides = [
        f"model.name={args.model}", f"model.split_layer={args.split_layer}",
        "data.name=synthetic", f"data.train_samples={args.batch_size * args.steps * args.clients}",
        "data.test_samples=64", f"train.batch_size={args.batch_size}",
        f"train.steps_per_epoch={args.steps}", f"clients.count={args.clients}",
        f"clients.num_cpus={client_cpus}", f"server.num_cpus={cores}",
        "clients.devices=[laptop_cpu]", "network.shared=wifi6_shared",
    ]
    if args.pool:
        overrides += ["engine.clients=pool", "engine.pool_workers=1", "engine.prefetch=0"]
    if args.prefetch is not None:
        overrides.append(f"engine.prefetch={args.prefetch}")
    return overrides + ([f"schedule.phases=[{{budget: 16, epochs: {epochs}}}]",
                         "compression.codec_up=fp16", "compression.codec_down=fp16"]
                        if args.compression else
                        ["compression.enabled=false", f"schedule.phases=[{{epochs: {epochs}}}]"])


def main() -> None:
    parser = setting_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternate fused and engine runs this often; the ratio is of each "
                             "one's best")
    parser.add_argument("--checkpoint", action="store_true",
                        help="instead compare the engine writing a run directory with and "
                             "without checkpoint.every_epochs=1, over 3 epochs")
    args = parser.parse_args()
    cores = os.cpu_count() or 2
    overrides = setting_overrides(args, epochs=3 if args.checkpoint else 1)
    variants = ({"without": (load_config(overrides=[*overrides, "checkpoint.every_epochs=null"]),
                             "ray"),
                 "with": (load_config(overrides=[*overrides, "checkpoint.every_epochs=1"]), "ray")}
                if args.checkpoint else
                {"fused": (load_config(overrides=overrides), "local"),
                 "engine": (load_config(overrides=overrides), "ray")})
    ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)

    print(f"{args.model} split {args.split_layer}, batch {args.batch_size}, {args.clients} "
          f"client(s){' on one pool worker' if args.pool else ''}, {args.steps} steps each, "
          f"torch threads {torch.get_num_threads()}")
    # Alternating and keeping the best of each damps the host's noise (other tenants, Ray's
    # own daemons on the same two cores) without favouring either side.
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (cfg, engine) in variants.items():
                out = tmp if args.checkpoint else None  # checkpoints live in run directories
                epoch_ends: list[float] = []  # after each epoch's evaluation and checkpoint
                steps = run_experiment(cfg, out_dir=out, engine=engine, progress=False,
                                       on_epoch=lambda *_, ends=epoch_ends: ends.append(
                                           time.perf_counter())).steps
                rates[name].append(samples_per_epoch_s(steps, epoch_ends) if args.checkpoint
                                   else samples_per_s(steps))
                print(f"{name:7s} {rates[name][-1]:8.1f} samples/s")
    (a, rates_a), (b, rates_b) = rates.items()
    pairs = sorted(rb / ra for ra, rb in zip(rates_a, rates_b, strict=True))
    print(f"{b}/{a} of each pair: median {statistics.median(pairs):.3f}, "
          f"range {pairs[0]:.3f}-{pairs[-1]:.3f}")
    print(f"best: {a} {max(rates_a):.1f}, {b} {max(rates_b):.1f} samples/s")
    print(f"ratio {max(rates_b) / max(rates_a):.3f}")


if __name__ == "__main__":
    main()
