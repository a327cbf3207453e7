"""Per-run numbers: bytes to reach a target accuracy, the bytes/accuracy frontier, a summary."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from splitray.analysis.results import Results

TARGET_COLUMNS = ["cum_bytes_up", "cum_bytes_down", "bytes_total", "sim_time_s", "epoch"]


def _check_columns(df: pd.DataFrame, columns: list[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; has {list(df.columns)}")


def _check_fraction(target_accuracy: float) -> None:
    if not 0.0 <= target_accuracy <= 1.0:
        raise ValueError(f"target_accuracy={target_accuracy!r} must be a fraction in [0, 1]")


def _by_epoch(evals: pd.DataFrame) -> pd.DataFrame:
    # Stable sort so that repeated rows of one epoch keep their file order.
    return evals.sort_values("epoch", kind="stable")


def bytes_to_target(evals: pd.DataFrame, target_accuracy: float, key: str) -> pd.DataFrame:
    """Per run, the first evaluation with test_accuracy >= target: its bytes, sim time and epoch.

    Runs that never reach the target get NaN, so every run in `evals` has one row.
    """
    _check_fraction(target_accuracy)
    _check_columns(evals, [key, "epoch", "test_accuracy", "cum_bytes_up", "cum_bytes_down",
                           "sim_time_s"], "evals")
    if evals.empty:
        raise ValueError("evals has no rows")
    runs = pd.unique(evals[key])
    ev = _by_epoch(evals)
    hits = ev[ev["test_accuracy"] >= target_accuracy]
    first = hits.groupby(key, sort=False).head(1).set_index(key)
    first = first.assign(bytes_total=first["cum_bytes_up"] + first["cum_bytes_down"])
    out = first[TARGET_COLUMNS].reindex(pd.Index(runs, name=key))
    return out.reset_index()


def pareto_frontier(points: pd.DataFrame, cost: str, benefit: str) -> pd.DataFrame:
    """Rows no other row dominates (cost <= and benefit >=, one strictly), sorted by cost.

    Equal rows do not dominate each other, so ties are all kept; rows with NaN are never on it.
    The original index is kept so callers can map rows back.
    """
    _check_columns(points, [cost, benefit], "points")
    valid = points.dropna(subset=[cost, benefit])
    if valid.empty:
        return valid
    c = valid[cost].to_numpy(dtype=float)
    b = valid[benefit].to_numpy(dtype=float)
    costs, group = np.unique(c, return_inverse=True)
    best_at = np.full(len(costs), -np.inf)
    np.maximum.at(best_at, group, b)
    # Best benefit among strictly cheaper rows, for each distinct cost.
    best_cheaper = np.concatenate([[-np.inf], np.maximum.accumulate(best_at)[:-1]])
    dominated = (best_cheaper[group] >= b) | (best_at[group] > b)
    front = valid[~dominated]
    return front.sort_values([cost, benefit], ascending=[True, False], kind="stable")


def summary_table(results: Results, target_accuracy: float | None = None) -> pd.DataFrame:
    """One row per run: params, final and best accuracy, totals at the last evaluation, frontier.

    Totals (bytes, sim time, epochs) are those of the last evaluation; with a target accuracy, the
    bytes, sim time and epochs (a count, as `epochs`) up to the first evaluation reaching it are
    added (NaN if never).
    `on_frontier` marks the runs on the Pareto frontier of bytes_total against best_accuracy.
    """
    key, evals = results.key, results.evals
    if evals.empty:
        raise ValueError("results have no eval rows")
    runs = pd.Index(pd.unique(evals[key]), name=key)
    ev = _by_epoch(evals)
    groups = ev.groupby(key, sort=False)
    final = groups.tail(1).set_index(key).reindex(runs)
    first = groups.head(1).set_index(key).reindex(runs)

    out = pd.DataFrame(index=runs)
    for p in results.params:
        out[p] = first[p]
    out["algorithm"] = first["algorithm"]
    out["final_accuracy"] = final["test_accuracy"]
    out["best_accuracy"] = groups["test_accuracy"].max().reindex(runs)
    out["bytes_up_total"] = final["cum_bytes_up"]
    out["bytes_down_total"] = final["cum_bytes_down"]
    out["bytes_total"] = final["cum_bytes_up"] + final["cum_bytes_down"]
    out["sim_time_s"] = final["sim_time_s"]
    out["epochs"] = final["epoch"] + 1
    if target_accuracy is not None:
        hit = bytes_to_target(evals, target_accuracy, key).set_index(key).reindex(runs)
        out["bytes_to_target"] = hit["bytes_total"]
        out["sim_time_to_target_s"] = hit["sim_time_s"]
        out["epochs_to_target"] = hit["epoch"] + 1  # counted as `epochs` is
    front = pareto_frontier(out, "bytes_total", "best_accuracy")
    out["on_frontier"] = out.index.isin(front.index)
    return out.reset_index()


def accuracy_by_device(per_client: pd.DataFrame, key: str = "run_id",
                       params: Sequence[str] = ()) -> pd.DataFrame:
    """Per run (`key`, with its `params` columns beside it), its clients' test accuracy at
    its last evaluation (client_evals rows; `epoch` says which) grouped by device profile and
    split point: how many clients, their samples, the pooled accuracy and the spread between
    clients. Empty for no rows (runs before schema version 4)."""
    if per_client.empty:
        return pd.DataFrame()
    last = per_client.groupby(key, sort=False)["epoch"].transform("max")
    final = per_client[per_client["epoch"] == last].assign(
        correct=lambda d: d["test_accuracy"] * d["test_samples"])
    # A trial's parameter values are constant, so grouping on them only carries them along;
    # dropna=False keeps trials whose value is missing (a parameter another trial lacks).
    group_keys = [key, *params, "epoch", "device", "split_layer"]
    groups = final.groupby(group_keys, sort=False, dropna=False)
    out = groups.agg(clients=("client_id", "size"), test_samples=("test_samples", "sum"),
                     correct=("correct", "sum"), min_client_accuracy=("test_accuracy", "min"),
                     max_client_accuracy=("test_accuracy", "max"))
    out.insert(2, "test_accuracy", out.pop("correct") / out["test_samples"])
    return out.reset_index().sort_values([key, "split_layer", "device"], kind="stable",
                                         ignore_index=True)
