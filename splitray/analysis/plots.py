"""Figures: accuracy vs bytes, per-client bytes and samples vs simulated time, budget phases, each
client's accuracy by split point, and the planner's speed-up over a grid of configs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from splitray.analysis.results import Results
from splitray.analysis.summary import pareto_frontier, summary_table
from splitray.metrics import PARAM_PREFIX

if TYPE_CHECKING:
    from splitray.planning import GridPoint

MAX_PANELS = 6  # runs drawn as subplots; more are left out and the title says so
MAX_LEGEND = 12  # legend entries before the legend is dropped
MB = 1e6
LOG_SPREAD = 100.0  # switch an axis to log scale when its positive values span more than this


def _local_output(path: str) -> Path:
    if "://" in str(path):
        raise ValueError(f"plot path {path!r} must be a local path; URIs are not written to")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _save(fig: Figure, path: str) -> str:
    out = _local_output(path)
    FigureCanvasAgg(fig)  # render with Agg regardless of the global pyplot backend
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return str(out)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def run_label(results: Results, run, max_chars: int = 64) -> str:
    """A short legend label: the run id, its algorithm when the runs hold more than one, then its
    swept parameter values (3 significant digits)."""
    label = str(run)
    row = results.evals.loc[results.evals[results.key] == run].iloc[0]
    if results.evals["algorithm"].nunique() > 1:
        label += f" ({row['algorithm']})"
    if results.params:
        parts = [f"{p[len(PARAM_PREFIX):].split('.')[-1]}={_short(row[p])}" for p in results.params]
        label += ": " + ", ".join(parts)
    return label if len(label) <= max_chars else label[: max_chars - 3] + "..."


def _maybe_log_x(ax: Axes, values: pd.Series) -> None:
    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() > LOG_SPREAD:
        ax.set_xscale("log")


def _panels(results: Results, title: str) -> tuple[Figure, list[tuple[object, Axes]]]:
    """One subplot per run, up to MAX_PANELS; the title notes left-out runs."""
    runs = results.runs()
    shown = runs[:MAX_PANELS]
    ncols = min(3, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    if len(runs) > len(shown):
        title += f" (first {len(shown)} of {len(runs)} runs)"
    fig.suptitle(title)
    return fig, list(zip(shown, axes, strict=False))


def plot_accuracy_vs_bytes(results: Results, path: str) -> str:
    """Test accuracy against cumulative bytes (up + down) per run, with the Pareto frontier."""
    key, evals = results.key, results.evals
    fig = Figure(figsize=(8, 5.5), layout="constrained")
    ax = fig.subplots()
    runs = results.runs()
    for run in runs:
        ev = evals[evals[key] == run].sort_values("epoch", kind="stable")
        mb = (ev["cum_bytes_up"] + ev["cum_bytes_down"]) / MB
        ax.plot(mb, ev["test_accuracy"] * 100, marker="o", markersize=3,
                label=run_label(results, run))
    summary = summary_table(results)
    front = pareto_frontier(summary, "bytes_total", "best_accuracy")
    ax.plot(front["bytes_total"] / MB, front["best_accuracy"] * 100, color="black",
            linestyle="--", marker="*", markersize=12, drawstyle="steps-post",
            label="Pareto frontier (bytes, best accuracy)", zorder=5)
    _maybe_log_x(ax, (evals["cum_bytes_up"] + evals["cum_bytes_down"]) / MB)
    ax.set_xlabel("cumulative bytes, up + down, all clients (MB)")
    ax.set_ylabel("test accuracy (%)")
    title = "Test accuracy vs bytes on the network"
    if len(runs) <= MAX_LEGEND:
        ax.legend(fontsize="small")
    else:
        title += f" ({len(runs)} runs, legend omitted)"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _plot_per_client(results: Results, path: str, value: Callable[[pd.DataFrame], pd.Series],
                     ylabel: str, title: str) -> str:
    fig, panels = _panels(results, title)
    steps, key = results.steps, results.key
    for run, ax in panels:
        st = steps[steps[key] == run].sort_values(["epoch", "step", "sim_time_s"], kind="stable")
        clients = pd.unique(st["client_id"])
        for client in sorted(clients):
            cs = st[st["client_id"] == client]
            # Steps-post: a step's data counts from the simulated time it finished.
            ax.plot(cs["sim_time_s"], value(cs).cumsum(), drawstyle="steps-post",
                    label=f"client {client}")
        ax.set_title(run_label(results, run), fontsize="medium")
        ax.set_xlabel("simulated time (s)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        if len(clients) <= MAX_LEGEND:
            ax.legend(fontsize="x-small")
    return _save(fig, path)


def plot_bytes_vs_sim_time(results: Results, path: str) -> str:
    """Cumulative bytes (up + down, model weights included, as the evals' cum_bytes columns
    count them) per client against simulated time, one subplot per run."""
    return _plot_per_client(results, path, lambda s: (s["bytes_up"] + s["bytes_down"]
                                                      + s["bytes_model_up"]
                                                      + s["bytes_model_down"]) / MB,
                            "cumulative bytes, up + down, weights included (MB)",
                            "Bytes per client vs simulated time")


def plot_samples_vs_sim_time(results: Results, path: str) -> str:
    """Cumulative training samples per client against simulated time, one subplot per run."""
    return _plot_per_client(results, path, lambda s: s["batch_size"],
                            "cumulative samples", "Samples per client vs simulated time")


def _phase_spans(ev: pd.DataFrame) -> list[tuple[float, float, str]]:
    """Contiguous epochs of one phase as (start, end, budget label), widened by half an epoch."""
    change = ev["phase"].ne(ev["phase"].shift()).cumsum()
    spans = []
    for _, span in ev.groupby(change, sort=False):
        budgets = "/".join(str(b) for b in pd.unique(span["budget"]))
        spans.append((span["epoch"].iloc[0] - 0.5, span["epoch"].iloc[-1] + 0.5, f"B={budgets}"))
    return spans


def plot_accuracy_vs_epoch(results: Results, path: str) -> str:
    """Test accuracy per epoch, one subplot per run, with budget phases shaded and labelled."""
    fig, panels = _panels(results, "Test accuracy vs epoch, budget phases shaded")
    evals, key = results.evals, results.key
    for run, ax in panels:
        ev = evals[evals[key] == run].sort_values("epoch", kind="stable")
        for i, (start, end, label) in enumerate(_phase_spans(ev)):
            ax.axvspan(start, end, color=f"C{i % 10}", alpha=0.12, linewidth=0)
            ax.text((start + end) / 2, 1.0, label, transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom", fontsize="x-small")
        ax.plot(ev["epoch"], ev["test_accuracy"] * 100, marker="o", markersize=3, color="black")
        ax.set_title(run_label(results, run), fontsize="medium", pad=14)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def client_accuracy_figure(results: Results) -> Figure:
    """Each client's test accuracy per epoch (its own model on its own test slice), coloured by
    its split point, over the run's pooled accuracy in black: one subplot per run."""
    fig, panels = _panels(results, "Each client's test accuracy vs epoch, by split point")
    per_client, evals, key = results.client_evals, results.evals, results.key
    splits = sorted(pd.unique(per_client["split_layer"]))
    colour = {split: f"C{i % 10}" for i, split in enumerate(splits)}
    for run, ax in panels:
        rows = per_client[per_client[key] == run].sort_values("epoch", kind="stable")
        for split, at_split in rows.groupby("split_layer", sort=True):
            devices = sorted(pd.unique(at_split["device"]))
            named = ", ".join(devices) if len(devices) <= 3 else f"{len(devices)} device kinds"
            for i, (_, client) in enumerate(at_split.groupby("client_id", sort=True)):
                label = (f"split {split}: {at_split['client_id'].nunique()} client(s), {named}"
                         if i == 0 else None)
                ax.plot(client["epoch"], client["test_accuracy"] * 100, color=colour[split],
                        alpha=0.6, linewidth=1, marker="o", markersize=2, label=label)
        ev = evals[evals[key] == run].sort_values("epoch", kind="stable")
        ax.plot(ev["epoch"], ev["test_accuracy"] * 100, color="black", linewidth=2,
                label="all clients (pooled)")
        ax.set_title(run_label(results, run), fontsize="medium")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="x-small")
    return fig


def plot_client_accuracy_vs_epoch(results: Results, path: str) -> str:
    """`client_accuracy_figure` saved to `path` (needs per-client rows: schema version 4)."""
    if results.client_evals.empty:
        raise ValueError("the results have no per-client rows (client_evals.parquet, written "
                         "since schema version 4)")
    return _save(client_accuracy_figure(results), path)


def plot_plan_grid(axes: list[str], points: list[GridPoint], path: str) -> str:
    """Speed-up of the plan over the baseline (`splitray plan --grid`) against the first axis's
    values, one line per combination of the other axes' values."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    xs = list(dict.fromkeys(p.values[0] for p in points))
    lines: dict[tuple[str, ...], dict[str, float]] = {}
    for p in points:
        lines.setdefault(p.values[1:], {})[p.values[0]] = p.speedup
    for rest, speedups in lines.items():
        label = ", ".join(f"{key}={value}" for key, value in zip(axes[1:], rest, strict=True))
        ax.plot(range(len(xs)), [speedups[x] for x in xs], marker="o", label=label or None)
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(xs)), xs, fontsize=8)
    ax.set_xlabel(axes[0])
    ax.set_ylabel("baseline round / planned round")
    ax.set_title("planned vs parallel SL at its best single split, equal shares", fontsize=10)
    if 1 < len(lines) <= MAX_LEGEND:
        # Below the axes, where long config values fit; the saved figure grows to hold it.
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15))
    return _save(fig, path)
