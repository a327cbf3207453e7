"""The timeline picture: a Gantt chart of a run's steps, one lane per client plus the server.

Each step row is laid out from its `sim_start_s` in the order the timeline runs it: weight
download, forward, uplink, wait for the server, (server compute on the server's lane), downlink,
backward, weight upload. Stragglers show as long client lanes; contention as long transfers and
waits; a dropped step ends in a cross (its client went offline) or a bar (its payload came late).
"""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from splitray.analysis.plots import _save

SEGMENTS = {  # kind -> colour, in the order a step runs them
    "model down": "#8c564b",
    "forward": "#1f77b4",
    "uplink": "#ff7f0e",
    "server wait": "#d9d9d9",
    "server": "#2ca02c",
    "downlink": "#9467bd",
    "backward": "#17becf",
    "model up": "#e377c2",
}
SERVER_LANE = "server"
MIN_VISIBLE = 0.002  # segments are drawn at least this fraction of the time axis wide


def step_segments(steps: pd.DataFrame) -> pd.DataFrame:
    """One row per (lane, kind, start_s, duration_s) for every step row of `steps`."""
    out = []
    for r in steps.itertuples(index=False):
        # Runs before schema version 2 split no backward off the client's compute: all forward.
        backward = 0.0 if pd.isna(r.sim_client_backward_s) else r.sim_client_backward_s
        parts = [("model down", r.sim_model_down_s), ("forward", r.sim_client_compute_s - backward),
                 ("uplink", r.sim_uplink_s), ("server wait", r.sim_server_wait_s),
                 ("server", r.sim_server_compute_s), ("downlink", r.sim_downlink_s),
                 ("backward", backward), ("model up", r.sim_model_up_s)]
        t = r.sim_start_s
        lane = f"client {r.client_id}"
        for kind, duration in parts:
            if duration > 0:
                out.append((SERVER_LANE if kind == "server" else lane, kind, t, duration,
                            r.client_id, r.round))
                if kind == "server":  # the client waits while the server works for it
                    out.append((lane, "server", t, duration, r.client_id, r.round))
            t += duration
    return pd.DataFrame(out, columns=["lane", "kind", "start_s", "duration_s", "client_id",
                                      "round"])


DROPPED_MARKS = {"offline": ("x", "#d62728"), "late": ("|", "#7f7f7f")}  # marker, colour


def dropped_marks(steps: pd.DataFrame) -> pd.DataFrame:
    """Where each dropped step ended: lane, end_s and why (offline or late)."""
    if "dropped" not in steps:
        return pd.DataFrame(columns=["lane", "end_s", "why"])
    dropped = steps[steps["dropped"].fillna("") != ""]
    return pd.DataFrame({"lane": [f"client {c}" for c in dropped["client_id"]],
                         "end_s": dropped["sim_time_s"].to_numpy(),
                         "why": dropped["dropped"].to_numpy()})


def select_window(steps: pd.DataFrame, rounds: tuple[int, int] | None = None,
                  window_s: tuple[float, float] | None = None) -> tuple[pd.DataFrame, str]:
    """The steps to draw and a title: rounds lo..hi, a time window, or the first three rounds."""
    if window_s is not None:
        lo, hi = window_s
        chosen = steps[(steps["sim_time_s"] > lo) & (steps["sim_start_s"] < hi)]
        label = f"simulated {lo:g}-{hi:g} s"
    else:
        first = int(steps["round"].min())
        lo, hi = rounds if rounds is not None else (first, first + 2)
        chosen = steps[(steps["round"] >= lo) & (steps["round"] <= hi)]
        label = f"round {lo}" if lo == hi else f"rounds {lo}-{hi}"
    if chosen.empty:
        raise ValueError(f"no steps in {label}; the run has rounds {int(steps['round'].min())}-"
                         f"{int(steps['round'].max())} and ends at "
                         f"{steps['sim_time_s'].max():.4g} s")
    return chosen, label


def plot_timeline(steps: pd.DataFrame, path: str, rounds: tuple[int, int] | None = None,
                  window_s: tuple[float, float] | None = None) -> str:
    """Draw the Gantt chart of the chosen rounds (or time window) to `path`; returns the path."""
    chosen, label = select_window(steps, rounds, window_s)
    segments = step_segments(chosen)
    lanes = [f"client {c}" for c in sorted(chosen["client_id"].unique())] + [SERVER_LANE]
    fig = Figure(figsize=(11, 1.2 + 0.45 * len(lanes)))
    ax = fig.add_subplot()
    span_s = (segments["start_s"] + segments["duration_s"]).max() - segments["start_s"].min()
    min_width_s = MIN_VISIBLE * span_s  # a GPU server's milliseconds still show as a sliver
    for y, lane in enumerate(lanes):
        for kind, colour in SEGMENTS.items():
            seg = segments[(segments["lane"] == lane) & (segments["kind"] == kind)]
            if len(seg):
                widths = seg["duration_s"].clip(lower=min_width_s)
                ax.broken_barh(list(zip(seg["start_s"], widths, strict=True)),
                               (y - 0.35, 0.7), facecolors=colour, edgecolor="white",
                               linewidth=0.3)
    marks = dropped_marks(chosen)
    for why, (marker, colour) in DROPPED_MARKS.items():
        at = marks[marks["why"] == why]
        if len(at):
            ax.plot(at["end_s"], [lanes.index(lane) for lane in at["lane"]], linestyle="none",
                    marker=marker, markersize=9, color=colour, label=f"dropped ({why})")
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlabel("simulated time (s)")
    run = chosen["run_id"].iloc[0] if "run_id" in chosen else ""
    ax.set_title(f"{run}: {chosen['algorithm'].iloc[0]}, {label}", fontsize=10)
    if window_s is not None:
        ax.set_xlim(*window_s)
    handles = [Patch(facecolor=c, label=k) for k, c in SEGMENTS.items()
               if k in set(segments["kind"])] + ax.get_lines()
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    return _save(fig, path)


def lane_summary(steps: pd.DataFrame, rounds: tuple[int, int] | None = None,
                 window_s: tuple[float, float] | None = None) -> tuple[pd.DataFrame, str]:
    """Seconds each lane spends in each kind of segment in the chosen rounds, or inside the time
    window (segments cut at its edges, as the picture shows them); and the selection's label."""
    chosen, label = select_window(steps, rounds, window_s)
    segments = step_segments(chosen)
    if window_s is not None:
        lo, hi = window_s
        ends = (segments["start_s"] + segments["duration_s"]).clip(upper=hi)
        segments["duration_s"] = (ends - segments["start_s"].clip(lower=lo)).clip(lower=0.0)
    table = segments.pivot_table(index="lane", columns="kind", values="duration_s",
                                 aggfunc="sum", fill_value=0.0)
    return table[[k for k in SEGMENTS if k in table.columns]].reset_index(), label
