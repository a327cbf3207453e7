"""Can EdgeSplit halve the round without sending devices deeper than parallel SL splits?

For every mix of `--devices` of the six client device profiles (with repetition) whose speeds
span at least `--min-span`, at each `--uplinks` rate of the config's shared medium, this plans
parallel SL's best single split point with equal shares and EdgeSplit with no split point deeper
than that one (`plan.split_layers` capped), and prints per uplink how many mixes reach 2x and the
best speed-up, apart for the mixes whose baseline splits at the model's deepest point (where the
cap constrains nothing). A device split deeper than the baseline trains more layers on its own
shard, which costs accuracy when the client parts are never averaged (README, "Why the 2x round
costs accuracy").

    python analysis/edgesplit_depth.py                      # experiments/edgesplit.yaml, ~17 min
    python analysis/edgesplit_depth.py --uplinks 5e6 --csv runs/depth.csv
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
from pathlib import Path

from splitray.config import ConfigError, ExperimentConfig, config_from_dict, load_config
from splitray.network import DEVICE_PROFILES
from splitray.planning import best_single_split, candidate_splits, plan, split_costs

CLIENT_DEVICES = ("raspberry_pi_4", "phone_midrange", "laptop_cpu_core", "jetson_nano",
                  "laptop_cpu", "jetson_xavier_nx")


def device_mixes(count: int, min_span: float) -> list[tuple[str, ...]]:
    """Every multiset of `count` client device profiles whose fastest is at least `min_span`
    times its slowest, slowest first."""
    by_speed = sorted(CLIENT_DEVICES, key=lambda n: DEVICE_PROFILES[n].flops_per_s)
    speed = {n: DEVICE_PROFILES[n].flops_per_s for n in by_speed}
    return [mix for mix in itertools.combinations_with_replacement(by_speed, count)
            if speed[mix[-1]] / speed[mix[0]] >= min_span]


def speed_up_within_baseline_depth(data: dict, devices: tuple[str, ...], up_bps: float
                                   ) -> tuple[float, int, list[int]]:
    """(baseline round / EdgeSplit round, the baseline's split, EdgeSplit's split points) for
    the config `data` with these devices and uplink, EdgeSplit capped at the baseline's split."""
    data = {**data, "clients": {**data["clients"], "devices": list(devices), "count": len(devices)},
            "network": {**data["network"],
                        "shared": {**data["network"]["shared"], "up_bps": up_bps}}}
    cfg = config_from_dict(data)
    baseline = best_single_split(cfg)
    split = baseline.clients[0].split_layer
    cap = [s for s in split_layers(cfg) if s <= split]
    capped = plan(config_from_dict({**data, "plan": {**(data.get("plan") or {}),
                                                     "split_layers": cap}}))
    return baseline.round_s / capped.round_s, split, [c.split_layer for c in capped.clients]


def split_layers(cfg: ExperimentConfig) -> list[int]:
    """The split points the planner may choose for cfg."""
    costs = split_costs(cfg)
    return [costs[k].split_layer for k in candidate_splits(cfg, costs)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="experiments/edgesplit.yaml")
    parser.add_argument("--uplinks", default="2e6,3e6,5e6,7e6,1e7,2e7,1e8",
                        help="comma-separated rates of network.shared.up_bps, bit/s")
    parser.add_argument("--devices", type=int, default=8, help="devices in a mix")
    parser.add_argument("--min-span", type=float, default=10.0,
                        help="fastest / slowest device speed a mix must reach")
    parser.add_argument("--csv", default=None, help="write every point to this file")
    args = parser.parse_args(argv)
    try:
        data = load_config(args.config).to_dict()
        uplinks = [float(u) for u in args.uplinks.split(",")]
    except (ConfigError, ValueError) as e:
        print(f"edgesplit_depth: {e}", file=sys.stderr)
        return 2
    deepest = max(split_layers(config_from_dict(data)))
    mixes = device_mixes(args.devices, args.min_span)
    print(f"{len(mixes)} mixes of {args.devices} devices spanning >= {args.min_span:g}x, "
          f"{args.config}")
    points = []
    for up_bps in uplinks:
        rows = [(up_bps, *speed_up_within_baseline_depth(data, mix, up_bps), mix)
                for mix in mixes]
        points += rows
        # Where the baseline splits at the deepest point, the cap is no constraint: its devices
        # already train every layer before it on their own shards.
        for label, part in (("below", [r for r in rows if r[2] < deepest]),
                            ("at", [r for r in rows if r[2] == deepest])):
            best = max(part, key=lambda r: r[1], default=None)
            print(f"uplink {up_bps / 1e6:g} Mbit/s, baseline split {label} {deepest}: "
                  f"{len(part)} of {len(rows)} mixes, {sum(r[1] >= 2 for r in part)} of them "
                  "2x or more; best "
                  + (f"{best[1]:.2f}x (baseline split {best[2]}, EdgeSplit {best[3]}, "
                     f"{', '.join(best[4])})" if best else "-"), flush=True)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["up_bps", "speed_up", "baseline_split", "split_points", "devices"])
            for up_bps, speed_up, split, splits, mix in points:
                writer.writerow([up_bps, f"{speed_up:.4f}", split, " ".join(map(str, splits)),
                                 " ".join(mix)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
