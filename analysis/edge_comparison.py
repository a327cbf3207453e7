"""Parallel SL at its best single split point vs EdgeSplit vs EPSL, on one config, side by side.

Runs, on the same data, model, devices, shared access point, epochs and seed:
  (a) parallel SL at the best single split point with equal fixed shares of the access point
      (`splitray.planning.best_single_split` and `baseline_config`), the baseline;
  (b) EdgeSplit: a split point and share per device, planned at run start (METHODS.md section 5);
  (c) EPSL at each aggregation ratio phi (default 0, 0.5, 1): one cut layer and the uplink shares
      planned at run start (`allocation: planned`), compression off (METHODS.md section 6).
For each it reports the simulated time per round (round_s: the mean of the rounds that exchange no
model weights, each the latest step end minus the earliest step start; mean_round_s: the mean of all
rounds, EdgeSplit's averaging rounds included), the planner's predicted round time (which for
EdgeSplit is the mean round with the averaging's transfers, so it is held against mean_round_s:
pred_err_pct), the simulated time per epoch, the total traffic (activations, gradients and model
weights, up and down) and the final test accuracy; with --seeds N each system runs at N seeds and
the table gives means and the final accuracy's standard deviation (accuracy after a few epochs
moves by several points from seed to seed). Writes comparison.md, comparison.csv (a row per
system), runs.csv (a row per run), curves.csv (each system's test accuracy after every epoch and
the simulated time it was reached, means over seeds), by_device.csv (each system's test accuracy
per device profile and split point after the last epoch, each client tested on its own slice with
its own model, means over seeds: where a heterogeneous plan gains or loses accuracy),
comparison.png (bars, and those curves: a faster round reaches an accuracy sooner) and the runs
(runs/) to --out.

    python analysis/edge_comparison.py            # experiments/edgesplit.yaml, engine local
    python analysis/edge_comparison.py --phi 0 --seeds 3
    python analysis/edge_comparison.py --phi --seeds 3   # the baseline and EdgeSplit only

A CIFAR-10 subset instead of the synthetic data:

    python analysis/edge_comparison.py --set data.name=cifar10 --set data.root=../shared/data/cifar10 \
        --set data.train_samples=4096 --set data.test_samples=1000
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from splitray.analysis import accuracy_by_device, markdown_table
from splitray.config import ExperimentConfig, config_from_dict, load_config
from splitray.network import LINK_PROFILES
from splitray.planning import asks_for_plan, baseline_config, best_single_split, plan, predict
from splitray.runtime.orchestrator import RunResult, run_experiment

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "edgesplit.yaml"
DEFAULT_PHIS = (0.0, 0.5, 1.0)
MODEL_BYTES = ("bytes_model_up", "bytes_model_down")
ALL_BYTES = ("bytes_up", "bytes_down", *MODEL_BYTES)
MB = 1e6


@dataclass(frozen=True)
class System:
    """One contender: a label, the config it runs and the planner's predicted round time."""

    label: str
    cfg: ExperimentConfig
    predicted_round_s: float


def _with(cfg: ExperimentConfig, **train: object) -> dict:
    """cfg as plain data with train fields replaced (phi reset to 0 unless given)."""
    data = cfg.to_dict()
    data["train"].update({"phi": 0.0, **train})
    return data


def systems(cfg: ExperimentConfig, phis: list[float]) -> list[System]:
    """The baseline, EdgeSplit and one EPSL per phi, all built from `cfg`."""
    base = config_from_dict(_with(cfg, algorithm="parallel_sl"))
    best = best_single_split(base)  # the baseline's split point and its predicted round
    split = best.clients[0].split_layer
    out = [System(f"(a) parallel SL, split {split}, equal shares", baseline_config(base, split),
                  best.round_s)]

    edge = config_from_dict(_with(cfg, algorithm="edgesplit"))
    edge_plan = plan(edge, "edgesplit") if asks_for_plan(edge) else predict(edge)
    out.append(System("(b) EdgeSplit", edge, edge_plan.round_s))

    for phi in phis:
        data = _with(cfg, algorithm="epsl", phi=phi)
        data["compression"]["enabled"] = False  # and so every phase sends all channels
        data["schedule"]["phases"] = [{**p, "budget": None} for p in data["schedule"]["phases"]]
        shared = data["network"]["shared"]
        spec = dict(LINK_PROFILES[shared]) if isinstance(shared, str) else dict(shared or {})
        spec.pop("shares", None)
        data["network"]["shared"] = {**spec, "allocation": "planned"}
        epsl = config_from_dict(data)
        out.append(System(f"(c) EPSL phi={phi:g}", epsl, plan(epsl, "epsl").round_s))
    return out


def round_times(steps: pd.DataFrame) -> pd.DataFrame:
    """Simulated seconds of every round (latest step end - earliest step start) and whether the
    round moves model weights (an average's uploads or downloads)."""
    rounds = steps.groupby("round")
    return pd.DataFrame({"duration_s": rounds["sim_time_s"].max() - rounds["sim_start_s"].min(),
                         "moves_model": rounds[list(MODEL_BYTES)].sum().sum(axis=1) > 0})


def epoch_times(evals: pd.DataFrame) -> np.ndarray:
    """Simulated seconds of every epoch: the simulated clock at each evaluation, differenced from 0."""
    return np.diff(evals.sort_values("epoch")["sim_time_s"].to_numpy(), prepend=0.0)


def measure(system: System, result: RunResult, wall_s: float) -> dict:
    """One row of the comparison table."""
    steps, evals = result.steps, result.evals
    rounds = round_times(steps)
    mean_round_s = float(rounds["duration_s"].mean())
    splits = sorted(int(s) for s in steps["split_layer"].unique())
    return {
        "system": system.label,
        "algorithm": system.cfg.train.algorithm,
        "split": ",".join(map(str, splits)),
        "round_s": float(rounds.loc[~rounds["moves_model"], "duration_s"].mean()),
        "mean_round_s": mean_round_s,
        "predicted_round_s": system.predicted_round_s,
        "pred_err_pct": 100.0 * (mean_round_s / system.predicted_round_s - 1.0),
        "epoch_s": float(epoch_times(evals).mean()),
        "traffic_MB": float(steps[list(ALL_BYTES)].to_numpy().sum()) / MB,
        "final_accuracy": float(evals.sort_values("epoch")["test_accuracy"].iloc[-1]),
        "wall_s": wall_s,
        "run_dir": result.run_dir,
    }


def curves(runs: pd.DataFrame, evals: list[pd.DataFrame]) -> pd.DataFrame:
    """Test accuracy after every epoch against the simulated clock, per system: the mean over
    seeds (`evals[k]` is the evaluation table of run `runs.iloc[k]`)."""
    per_run = [e[["epoch", "sim_time_s", "test_accuracy"]].assign(system=system)
               for system, e in zip(runs["system"], evals, strict=True)]
    return pd.concat(per_run).groupby(["system", "epoch"], sort=False).mean().reset_index()


def plot(table: pd.DataFrame, accuracy_curves: pd.DataFrame, path: Path) -> Path:
    """Bars per system: simulated (and predicted) time per round, time per epoch, final accuracy;
    and each system's accuracy after every epoch against the simulated time it took."""
    fig = Figure(figsize=(20, 4.8))
    x = np.arange(len(table))
    labels = [s.replace(", ", "\n") for s in table["system"]]
    ax_round, ax_epoch, ax_acc, ax_time = fig.subplots(1, 4)
    ax_round.bar(x - 0.27, table["round_s"], 0.27, label="simulated, rounds without averaging")
    ax_round.bar(x, table["mean_round_s"], 0.27, label="simulated, all rounds")
    ax_round.bar(x + 0.27, table["predicted_round_s"], 0.27, label="planner's prediction")
    ax_round.set_ylabel("seconds per round")
    # round_s is NaN where every round moves model weights (one round between two averages).
    top = np.nanmax(table[["round_s", "mean_round_s", "predicted_round_s"]].to_numpy())
    ax_round.set_ylim(0, 1.4 * top)  # room for the legend above the bars
    ax_round.legend(fontsize=7, loc="upper right")
    ax_epoch.bar(x, table["epoch_s"], 0.6, color="#2ca02c")
    ax_epoch.set_ylabel("simulated seconds per epoch")
    ax_acc.bar(x, table["final_accuracy"], 0.6, color="#9467bd",
               yerr=table.get("final_accuracy_sd"), capsize=4)
    ax_acc.set_ylabel("final test accuracy" + (" (mean, sd over seeds)"
                                               if "final_accuracy_sd" in table else ""))
    ax_acc.set_ylim(0, 1)
    for ax, title in ((ax_round, "time per round"), (ax_epoch, "time per epoch"),
                      (ax_acc, "accuracy")):
        ax.set_xticks(x, labels, fontsize=7, rotation=30, ha="right")
        ax.set_title(title, fontsize=10)
    for system, curve in accuracy_curves.groupby("system", sort=False):
        ax_time.plot(curve["sim_time_s"], curve["test_accuracy"], marker="o", label=system)
    ax_time.set_xlabel("simulated seconds")
    ax_time.set_ylabel("test accuracy after each epoch")
    ax_time.set_xlim(left=0)
    ax_time.legend(fontsize=7)
    ax_time.set_title("accuracy against simulated time", fontsize=10)
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG),
                        help="experiment YAML with network.shared [experiments/edgesplit.yaml]")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value for every system (repeatable)")
    parser.add_argument("--phi", type=float, nargs="*", default=list(DEFAULT_PHIS),
                        help="EPSL aggregation ratios to run; none (`--phi` alone): no EPSL "
                             "[0 0.5 1]")
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: the single-process trainer; ray: actors [local]")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="run every system at N seeds (the config's and the N-1 after it); "
                             "the table gives means and the final accuracy's spread [1]")
    parser.add_argument("--out", default="runs/edge_comparison",
                        help="directory for the table, figure and runs [runs/edge_comparison]")
    args = parser.parse_args(argv)

    if args.seeds < 1:
        parser.error(f"--seeds: {args.seeds} is not allowed; run at least 1 seed")
    cfg = load_config(args.config, args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(cfg.seed, cfg.seed + args.seeds)
    rows, evals, devices = [], [], []
    for seed in seeds:
        contenders = systems(load_config(args.config, [*args.set, f"seed={seed}"]), args.phi)
        for k, system in enumerate(contenders, 1):
            print(f"[seed {seed}, {k}/{len(contenders)}] {system.label}: ", end="", flush=True)
            t0 = time.perf_counter()
            result = run_experiment(system.cfg, out_dir=str(out / "runs"), engine=args.engine,
                                    progress=False)
            row = {"seed": seed, **measure(system, result, time.perf_counter() - t0)}
            rows.append(row)
            evals.append(result.evals)
            devices.append(accuracy_by_device(result.client_evals).assign(system=system.label))
            print(f"split {row['split']}, {row['round_s']:.3f} s per round without averaging, "
                  f"{row['mean_round_s']:.3f} s on average (predicted "
                  f"{row['predicted_round_s']:.3f} s), accuracy {row['final_accuracy']:.4f}, "
                  f"wall {row['wall_s']:.0f} s", flush=True)

    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    table = by_system(runs)
    table.to_csv(out / "comparison.csv", index=False)
    accuracy_curves = curves(runs, evals)
    accuracy_curves.to_csv(out / "curves.csv", index=False)
    per_device = by_device(pd.concat([d for d in devices if not d.empty] or [pd.DataFrame()],
                                     ignore_index=True))
    per_device.to_csv(out / "by_device.csv", index=False)
    shown = table.round({
        "round_s": 3, "mean_round_s": 3, "predicted_round_s": 3, "pred_err_pct": 1, "epoch_s": 2,
        "traffic_MB": 2, "final_accuracy": 4, "final_accuracy_sd": 4, "wall_s": 0})
    md = markdown_table(shown)
    seeds_text = f"seed {cfg.seed}" if len(seeds) == 1 else f"seeds {seeds[0]}-{seeds[-1]}"
    title = (f"{cfg.name}: {cfg.data.name}, {cfg.model.name}, {cfg.clients.count} clients, "
             f"{cfg.total_epochs} epochs, {seeds_text}, engine {args.engine}")
    device_md = ("Test accuracy by device and split point after the last epoch (each client on "
                 "its own test slice; means over seeds):\n\n"
                 + markdown_table(per_device.round({"test_accuracy": 4})))
    (out / "comparison.md").write_text(f"{title}\n\n{md}\n\n{device_md}\n")
    print(f"\n{title}\n\n{md}\n\n{device_md}\n")
    print(f"wrote {out / 'comparison.md'}, {out / 'comparison.csv'} (runs: {out / 'runs.csv'}, "
          f"accuracy after each epoch: {out / 'curves.csv'}, by device: {out / 'by_device.csv'}), "
          f"{plot(table, accuracy_curves, out / 'comparison.png')}")


def by_device(per_run: pd.DataFrame) -> pd.DataFrame:
    """Each system's accuracy per device profile and split point: the mean over seeds of the
    pooled accuracy of those devices' clients (`per_run`: `accuracy_by_device` rows of every run,
    with their system). Clients and test samples per device come from the config: the same at
    every seed."""
    if per_run.empty:  # runs without per-client rows
        return pd.DataFrame()
    groups = per_run.groupby(["system", "device", "split_layer"], sort=False)
    return groups.agg(clients=("clients", "first"), test_samples=("test_samples", "first"),
                      test_accuracy=("test_accuracy", "mean"), seeds=("run_id", "size")
                      ).reset_index()


def by_system(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per system, in the order they ran: the mean over seeds of every number, and with
    more than one seed the final accuracy's standard deviation and the seed count."""
    groups = runs.drop(columns=["seed", "run_dir"]).groupby("system", sort=False)
    table = groups.agg({c: "first" if c in ("algorithm", "split") else "mean"
                        for c in runs.columns if c not in ("system", "seed", "run_dir")})
    if runs["seed"].nunique() > 1:
        after_accuracy = table.columns.get_loc("final_accuracy") + 1
        table.insert(after_accuracy, "final_accuracy_sd", groups["final_accuracy"].std())
        table["seeds"] = groups.size()
    return table.reset_index()


if __name__ == "__main__":
    main()
