"""Analysis of run, runs and sweep directories: hand-made tables, numbers checked by hand."""

from __future__ import annotations

import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from splitray.analysis import (
    accuracy_by_device,
    analyze,
    bytes_to_target,
    load,
    markdown_table,
    pareto_frontier,
    plot_accuracy_vs_epoch,
    plot_bytes_vs_sim_time,
    summary_table,
)
from splitray.analysis.plots import client_accuracy_figure, run_label
from splitray.analysis.results import ADDED_COLUMNS, Results
from splitray.cli import EXIT_CONFIG_ERROR, main
from splitray.metrics import CLIENT_EVAL_COLUMNS, EVAL_COLUMNS, STEP_COLUMNS, write_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EXAMPLE = Path(__file__).resolve().parents[1] / "analysis" / "network_vs_accuracy.py"

# run_id -> per-epoch (test_accuracy, cum_bytes_up, cum_bytes_down, sim_time_s, phase, budget)
RUNS = {
    "a": [(0.5, 100, 10, 1.0, 0, 8), (0.7, 200, 20, 2.0, 0, 8), (0.65, 300, 30, 3.0, 1, 4)],
    "b": [(0.6, 400, 40, 5.0, 0, 8), (0.8, 800, 80, 10.0, 0, 8)],
    "c": [(0.3, 50, 5, 1.5, 0, 8), (0.5, 100, 10, 3.0, 0, 8), (0.6, 150, 15, 4.5, 0, 8)],
    "d": [(0.4, 200, 0, 2.0, 0, 8), (0.55, 400, 0, 4.0, 0, 8)],  # dominated by a
}


def eval_rows(run_id: str, epochs: list[tuple], extra: dict | None = None) -> list[dict]:
    rows = []
    for epoch, (acc, up, down, sim_s, phase, budget) in enumerate(epochs):
        rows.append({
            "run_id": run_id, "algorithm": "deprune", "epoch": epoch, "phase": phase,
            "budget": budget, "test_accuracy": acc, "test_loss": 1.0 - acc, "train_loss": 1.0,
            "samples_seen": 8 * (epoch + 1), "cum_bytes_up": up, "cum_bytes_down": down,
            "sim_time_s": sim_s, "wall_time_s": 0.1 * epoch, **(extra or {}),
        })
    return rows


def step_rows(run_id: str, epochs: list[tuple], extra: dict | None = None) -> list[dict]:
    """Two clients, two steps per epoch; client 1 sends twice the bytes of client 0."""
    rows = []
    for epoch, (_, _, _, sim_s, phase, budget) in enumerate(epochs):
        for client in (0, 1):
            for step in (0, 1):
                rows.append({
                    "run_id": run_id, "algorithm": "deprune", "client_id": client,
                    "device": "jetson", "epoch": epoch, "step": step, "round": 2 * epoch + step,
                    "phase": phase, "budget": budget, "split_layer": 5, "batch_size": 2,
                    "lr": 0.1, "bytes_up": 10 * (client + 1), "bytes_down": client + 1,
                    "loss": 1.0, "prune_loss": 0.0, "sim_start_s": sim_s - 0.5 + 0.2 * step,
                    "sim_time_s": sim_s - 0.4 + 0.2 * step, "sim_client_compute_s": 0.1,
                    "sim_uplink_s": 0.1, "sim_server_wait_s": 0.0, "sim_server_compute_s": 0.1,
                    "sim_downlink_s": 0.1, "wall_time_s": 0.01, **(extra or {}),
                })
    return rows


def write_run(run_dir: Path, run_id: str, epochs: list[tuple],
              config: str = "name: deprune\n") -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(config)
    (run_dir / "manifest.json").write_text(json.dumps({"run_id": run_id, "status": "ok"}))
    # Rows out of epoch order: analysis must not rely on file order.
    evals = eval_rows(run_id, epochs)
    write_table(evals[::-1], EVAL_COLUMNS, str(run_dir / "evals.parquet"))
    write_table(step_rows(run_id, epochs), STEP_COLUMNS, str(run_dir / "steps.parquet"))
    return run_dir


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    for run_id, epochs in RUNS.items():
        write_run(root / f"run_{run_id}", run_id, epochs)
    (root / "notes").mkdir()  # a subdirectory without tables is not a run
    return root


TRIALS = {  # trial_id -> (epsilon, phases, run_id from RUNS)
    "t0": (0.1, "[[4, 8]]", "a"),
    "t1": (0.5, "[[2, 8], [2, 4]]", "c"),
}


def write_sweep(root: Path) -> Path:
    """A sweep directory as `splitray tune` writes it: combined tables and sweep.json."""
    root.mkdir(parents=True)
    evals, steps = [], []
    for trial_id, (eps, phases, run_id) in TRIALS.items():
        extra = {"trial_id": trial_id, "param.compression.epsilon": eps,
                 "param.schedule.phases": phases}
        evals += eval_rows(f"run-{trial_id}", RUNS[run_id], extra)
        steps += step_rows(f"run-{trial_id}", RUNS[run_id], extra)
    write_table(evals, EVAL_COLUMNS, str(root / "evals.parquet"))
    write_table(steps, STEP_COLUMNS, str(root / "steps.parquet"))
    trials = [{"trial_id": t, "status": "ok", "error": None} for t in TRIALS]
    (root / "sweep.json").write_text(json.dumps(
        {"params": ["compression.epsilon", "schedule.phases"], "trials": trials}))
    return root


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return write_sweep(tmp_path / "sweep")


def all_evals() -> pd.DataFrame:
    return pd.DataFrame([r for run_id, ep in RUNS.items() for r in eval_rows(run_id, ep)][::-1])


# ---- bytes_to_target ----------------------------------------------------------------------------

def test_bytes_to_target_first_row_reaching_target() -> None:
    out = bytes_to_target(all_evals(), 0.6, "run_id").set_index("run_id")
    assert list(out.columns) == ["cum_bytes_up", "cum_bytes_down", "bytes_total", "sim_time_s",
                                 "epoch"]
    # a reaches 0.7 at epoch 1; b 0.6 at epoch 0; c exactly 0.6 at epoch 2; d never.
    assert out.loc["a"].tolist() == [200, 20, 220, 2.0, 1]
    assert out.loc["b"].tolist() == [400, 40, 440, 5.0, 0]
    assert out.loc["c"].tolist() == [150, 15, 165, 4.5, 2]
    assert out.loc["d"].isna().all()
    assert sorted(out.index) == ["a", "b", "c", "d"]


def test_bytes_to_target_unreached_is_nan_and_bad_target_rejected() -> None:
    out = bytes_to_target(all_evals(), 0.9, "run_id")
    assert len(out) == 4 and out.drop(columns="run_id").isna().all().all()
    out = bytes_to_target(all_evals(), 0.75, "run_id").set_index("run_id")
    assert out.loc["b", "bytes_total"] == 880 and math.isnan(out.loc["a", "bytes_total"])
    with pytest.raises(ValueError, match="target_accuracy=70"):
        bytes_to_target(all_evals(), 70, "run_id")
    with pytest.raises(ValueError, match="trial_id"):
        bytes_to_target(all_evals(), 0.5, "trial_id")


# ---- pareto_frontier ----------------------------------------------------------------------------

def test_pareto_frontier_hand_made() -> None:
    pts = pd.DataFrame({
        "cost": [1.0, 1.0, 1.0, 1.5, 2.0, 3.0, 4.0, np.nan, 0.5],
        "benefit": [0.5, 0.5, 0.4, 0.5, 0.7, 0.6, 0.9, 1.0, 0.2],
    }, index=[f"p{i}" for i in range(9)])
    front = pareto_frontier(pts, "cost", "benefit")
    # p0/p1 tie (both kept); p2 beaten at equal cost; p3 beaten at equal benefit; p5 by p4;
    # p7 has no cost.
    assert list(front.index) == ["p8", "p0", "p1", "p4", "p6"]
    assert front["cost"].is_monotonic_increasing


def test_pareto_frontier_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    pts = pd.DataFrame({"c": rng.integers(0, 8, 200), "b": rng.integers(0, 8, 200)})
    c, b = pts["c"].to_numpy(), pts["b"].to_numpy()
    dominated = [bool(np.any((c <= c[i]) & (b >= b[i]) & ((c < c[i]) | (b > b[i]))))
                 for i in range(len(pts))]
    expected = set(pts.index[~np.array(dominated)])
    front = pareto_frontier(pts, "c", "b")
    assert set(front.index) == expected and len(front) == len(expected)
    with pytest.raises(ValueError, match="missing_col"):
        pareto_frontier(pts, "missing_col", "b")


# ---- load ---------------------------------------------------------------------------------------

def test_load_detects_run_dir(runs_dir: Path) -> None:
    res = load(str(runs_dir / "run_a"))
    assert res.key == "run_id" and res.params == []
    assert res.runs() == ["a"] and len(res.evals) == 3 and len(res.steps) == 12


def test_load_detects_runs_dir(runs_dir: Path) -> None:
    res = load(str(runs_dir))
    assert res.key == "run_id" and res.params == []
    assert sorted(res.runs()) == ["a", "b", "c", "d"]
    assert len(res.evals) == 10 and len(res.steps) == 40
    by_uri = load(runs_dir.as_uri())  # URIs go through pyarrow's filesystems
    assert by_uri.runs() == res.runs() and len(by_uri.steps) == 40


def test_a_folders_runs_get_the_config_keys_that_differ_as_params(tmp_path: Path) -> None:
    common = "name: cmp\nseed: 0\ntrain:\n  algorithm: epsl\n  batch_size: 8\n"
    write_run(tmp_path / "r1", "a", RUNS["a"], common + "  phi: 1.0\n  order: [1, 2]\n")
    write_run(tmp_path / "r2", "b", RUNS["b"], common + "  phi: 0.0\n  order: [2, 1]\n")
    write_run(tmp_path / "r3", "c", RUNS["c"], common.replace("seed: 0", "seed: 1"))
    res = load(str(tmp_path))
    assert res.params == ["param.seed", "param.train.phi", "param.train.order"]
    by_run = summary_table(res).set_index("run_id")
    assert by_run["param.seed"].to_dict() == {"a": 0, "b": 0, "c": 1}
    assert by_run.loc[["a", "b"], "param.train.phi"].tolist() == [1.0, 0.0]
    assert pd.isna(by_run.loc["c", "param.train.phi"])  # a key one run lacks
    assert by_run["param.train.order"].tolist()[:2] == ["[1, 2]", "[2, 1]"]  # lists as JSON
    assert run_label(res, "a") == "a: seed=0, phi=1, order=[1, 2]"
    assert (res.steps.groupby("run_id")["param.seed"].first().to_dict()
            == {"a": 0, "b": 0, "c": 1})


def test_load_detects_sweep_dir(sweep_dir: Path) -> None:
    res = load(str(sweep_dir))
    assert res.key == "trial_id"
    assert res.params == ["param.compression.epsilon", "param.schedule.phases"]
    assert res.runs() == ["t0", "t1"]
    assert set(res.steps["trial_id"]) == {"t0", "t1"}


def test_load_errors(tmp_path: Path, runs_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty"):
        load(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    write_table([], EVAL_COLUMNS, str(bad / "evals.parquet"))
    write_table(step_rows("x", RUNS["a"]), STEP_COLUMNS, str(bad / "steps.parquet"))
    with pytest.raises(ValueError, match="evals.parquet has no rows"):
        load(str(bad))
    (bad / "evals.parquet").unlink()  # a run killed before its first evaluation: no parts
    (bad / "evals.parquet").mkdir()
    with pytest.raises(ValueError, match=r"evals.parquet has no rows \(did its run stop"):
        load(str(bad))
    broken = tmp_path / "broken"
    write_run(broken / "one", "one", RUNS["a"])
    write_run(broken / "two", "two", RUNS["b"], config="seed: [unclosed\n")
    with pytest.raises(ValueError, match="config.yaml is not valid YAML"):
        load(str(broken))
    (runs_dir / "run_a" / "steps.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="steps.parquet"):
        load(str(runs_dir))
    dup = tmp_path / "dup"
    write_run(dup / "one", "same", RUNS["a"])
    write_run(dup / "two", "same", RUNS["b"])
    with pytest.raises(ValueError, match="'same'"):
        load(str(dup))


# ---- summary_table ------------------------------------------------------------------------------

def test_summary_table_by_hand(runs_dir: Path) -> None:
    s = summary_table(load(str(runs_dir))).set_index("run_id")
    assert s.loc["a", "final_accuracy"] == 0.65 and s.loc["a", "best_accuracy"] == 0.7
    assert s.loc["a", ["bytes_up_total", "bytes_down_total", "bytes_total"]].tolist() == [
        300, 30, 330]
    assert s.loc["a", "sim_time_s"] == 3.0 and s.loc["a", "epochs"] == 3
    assert s.loc["b", "bytes_total"] == 880 and s.loc["b", "final_accuracy"] == 0.8
    assert s.loc["c", "bytes_total"] == 165 and s.loc["d", "bytes_total"] == 400
    assert s["on_frontier"].to_dict() == {"a": True, "b": True, "c": True, "d": False}
    assert "bytes_to_target" not in s.columns


def test_summary_table_target_and_sweep_params(sweep_dir: Path) -> None:
    s = summary_table(load(str(sweep_dir)), target_accuracy=0.6)
    assert list(s.columns[:3]) == ["trial_id", "param.compression.epsilon",
                                   "param.schedule.phases"]
    s = s.set_index("trial_id")
    assert s.loc["t0", "param.compression.epsilon"] == 0.1
    assert s.loc["t1", "param.schedule.phases"] == "[[2, 8], [2, 4]]"
    assert s.loc["t0", ["bytes_to_target", "sim_time_to_target_s", "epochs_to_target"]].tolist() \
        == [220, 2.0, 2]
    assert s.loc["t1", ["bytes_to_target", "epochs_to_target"]].tolist() == [165, 3]
    assert s["on_frontier"].all()  # t1 is cheaper, t0 more accurate


def test_markdown_table_lines_up_its_columns_and_keeps_whole_numbers_whole() -> None:
    df = pd.DataFrame({"run": ["a|b", "c"], "x": [1.5, np.nan], "n": [3, 4], "ok": [True, False],
                       "bytes": [1311568.0, 2.0 / 3]})
    assert markdown_table(df).splitlines() == [
        "| run  | x   | n | ok    | bytes    |",
        "|------|-----|---|-------|----------|",
        "| a\\|b | 1.5 | 3 | True  | 1311568  |",
        "| c    |     | 4 | False | 0.666667 |"]


# ---- plots and analyze --------------------------------------------------------------------------

def assert_png(path: str) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000, path


def test_analyze_writes_all_files(runs_dir: Path) -> None:
    written = analyze(str(runs_dir), target_accuracy=0.6)
    out = runs_dir / "analysis"
    assert set(written) == {"summary_csv", "summary_md", "accuracy_vs_bytes",
                            "bytes_vs_sim_time", "samples_vs_sim_time", "accuracy_vs_epoch"}
    for name in ("accuracy_vs_bytes", "bytes_vs_sim_time", "samples_vs_sim_time",
                 "accuracy_vs_epoch"):
        assert written[name] == str(out / f"{name}.png")
        assert_png(written[name])
    csv = pd.read_csv(written["summary_csv"]).set_index("run_id")
    assert csv.loc["a", "bytes_total"] == 330 and csv.loc["a", "bytes_to_target"] == 220
    assert not csv.loc["d", "on_frontier"] and math.isnan(csv.loc["d", "bytes_to_target"])
    md = Path(written["summary_md"]).read_text()
    assert "final_accuracy" in md and md.count("\n| ") >= 4
    # The analysis folder inside a runs dir is not mistaken for a run.
    assert sorted(load(str(runs_dir)).runs()) == ["a", "b", "c", "d"]


def test_a_folders_nested_runs_are_named_as_left_out(runs_dir: Path, tmp_path: Path) -> None:
    write_run(runs_dir / "more" / "run_e", "e", RUNS["a"])  # a folder of runs inside the folder
    write_run(runs_dir / "sweeps" / "s1", "s1", RUNS["a"])  # as splitray tune --out runs/sweeps/s1
    (runs_dir / "sweeps" / "s1" / "sweep.json").write_text("{}")
    (runs_dir / "sweeps_of_nothing" / "empty").mkdir(parents=True)
    analyze(str(runs_dir))  # its analysis/ folder holds no runs: not named on the second pass
    results = load(str(runs_dir))
    assert sorted(results.runs()) == ["a", "b", "c", "d"]
    assert results.left_out == [str(runs_dir / "more"), str(runs_dir / "sweeps")]
    md = (runs_dir / "analysis" / "summary.md").read_text()
    assert (f"Left out, each a sweep or a folder of runs to analyze on its own: "
            f"{runs_dir / 'more'}, {runs_dir / 'sweeps'}.") in md
    a_file = runs_dir / "run_a" / "config.yaml"
    with pytest.raises(FileNotFoundError, match=f"^{a_file} is a file; give a run, sweep or "):
        load(str(a_file))


def test_accuracy_by_device_pools_each_groups_last_evaluation(runs_dir: Path) -> None:
    assert load(str(runs_dir)).client_evals.empty  # runs of schema < 4: no per-client rows
    assert accuracy_by_device(load(str(runs_dir)).client_evals).empty
    # client -> (device, split point, test samples, accuracy after epoch 0 and after epoch 1)
    clients = {0: ("raspberry_pi_4", 5, 10, 0.1, 0.5), 1: ("raspberry_pi_4", 5, 30, 0.2, 0.7),
               2: ("phone", 8, 20, 0.3, 0.6)}
    rows = [{"run_id": "a", "algorithm": "edgesplit", "epoch": epoch, "client_id": i,
             "device": device, "split_layer": split, "test_samples": n,
             "test_accuracy": accuracy[epoch], "test_loss": 1.0}
            for epoch in (1, 0) for i, (device, split, n, *accuracy) in clients.items()]
    write_table(rows, CLIENT_EVAL_COLUMNS, str(runs_dir / "run_a" / "client_evals.parquet"))
    # Run b was evaluated once: its last evaluation is its epoch 0, not run a's epoch 1.
    write_table([{**row, "run_id": "b"} for row in rows if row["epoch"] == 0],
                CLIENT_EVAL_COLUMNS, str(runs_dir / "run_b" / "client_evals.parquet"))
    by_device = accuracy_by_device(load(str(runs_dir)).client_evals)
    assert by_device.to_dict("records") == [
        {"run_id": "a", "epoch": 1, "device": "raspberry_pi_4", "split_layer": 5, "clients": 2,
         "test_samples": 40, "test_accuracy": pytest.approx((5 + 21) / 40),
         "min_client_accuracy": 0.5, "max_client_accuracy": 0.7},
        {"run_id": "a", "epoch": 1, "device": "phone", "split_layer": 8, "clients": 1,
         "test_samples": 20, "test_accuracy": pytest.approx(0.6), "min_client_accuracy": 0.6,
         "max_client_accuracy": 0.6},
        {"run_id": "b", "epoch": 0, "device": "raspberry_pi_4", "split_layer": 5, "clients": 2,
         "test_samples": 40, "test_accuracy": pytest.approx((1 + 6) / 40),
         "min_client_accuracy": 0.1, "max_client_accuracy": 0.2},
        {"run_id": "b", "epoch": 0, "device": "phone", "split_layer": 8, "clients": 1,
         "test_samples": 20, "test_accuracy": pytest.approx(0.3), "min_client_accuracy": 0.3,
         "max_client_accuracy": 0.3}]
    written = analyze(str(runs_dir))
    pd.testing.assert_frame_equal(pd.read_csv(written["by_device_csv"]), by_device,
                                  check_dtype=False)
    assert "## Test accuracy by device and split point" in Path(written["summary_md"]).read_text()
    assert Path(written["client_accuracy_vs_epoch"]).read_bytes()[:8] == PNG_MAGIC
    for run in ("run_a", "run_b"):  # without per-client rows the earlier outputs go
        (runs_dir / run / "client_evals.parquet").unlink()
    written = analyze(str(runs_dir))
    assert "by_device_csv" not in written and "client_accuracy_vs_epoch" not in written
    assert not (runs_dir / "analysis" / "by_device.csv").exists()
    assert not (runs_dir / "analysis" / "client_accuracy_vs_epoch.png").exists()


def test_client_accuracy_figure_draws_each_client_coloured_by_split_point(
        runs_dir: Path) -> None:
    clients = {0: ("raspberry_pi_4", 5, [0.1, 0.5]), 1: ("jetson_nano", 5, [0.2, 0.7]),
               2: ("phone", 8, [0.3, 0.6])}
    rows = [{"run_id": "a", "algorithm": "edgesplit", "epoch": epoch, "client_id": i,
             "device": device, "split_layer": split, "test_samples": 10,
             "test_accuracy": accuracy[epoch], "test_loss": 1.0}
            for epoch in (1, 0) for i, (device, split, accuracy) in clients.items()]
    write_table(rows, CLIENT_EVAL_COLUMNS, str(runs_dir / "run_a" / "client_evals.parquet"))
    fig = client_accuracy_figure(load(str(runs_dir)))
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}
    assert sorted(panels) == ["a", "b", "c", "d"]
    lines = panels["a"].get_lines()
    # one line per client, sorted by split point then client, then the pooled accuracy
    assert [list(ln.get_ydata()) for ln in lines] == [
        [10.0, 50.0], [20.0, 70.0], [30.0, 60.0], [50.0, 70.0, 65.0]]
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[3].get_color() == "black"
    labels = [t.get_text() for t in panels["a"].get_legend().get_texts()]
    assert labels == ["split 5: 2 client(s), jetson_nano, raspberry_pi_4",
                      "split 8: 1 client(s), phone", "all clients (pooled)"]
    assert [ln.get_label() for ln in panels["b"].get_lines()] == ["all clients (pooled)"]


def test_a_one_epoch_run_gets_whole_epoch_ticks() -> None:
    # With one epoch, MaxNLocator(integer=True) alone fell back to ticks at -0.45 ... 0.45.
    evals = pd.DataFrame(eval_rows("solo", RUNS["a"][:1]))
    client_evals = pd.DataFrame([{"run_id": "solo", "algorithm": "deprune", "epoch": 0,
                                  "client_id": 0, "device": "phone", "split_layer": 5,
                                  "test_samples": 10, "test_accuracy": 0.5, "test_loss": 1.0}])
    results = Results(steps=pd.DataFrame(), evals=evals, key="run_id", client_evals=client_evals)
    fig = client_accuracy_figure(results)
    fig.canvas.draw()
    ticks = fig.axes[0].get_xticks()
    assert len(ticks) and all(float(t).is_integer() for t in ticks)


def test_run_labels_name_the_algorithm_when_runs_differ_in_it(runs_dir: Path) -> None:
    results = load(str(runs_dir))
    assert run_label(results, "a") == "a"  # all four runs are deprune
    results.evals.loc[results.evals["run_id"] == "b", "algorithm"] = "edgesplit"
    assert [run_label(results, r) for r in ("a", "b")] == ["a (deprune)", "b (edgesplit)"]


def test_accuracy_by_device_keeps_a_sweeps_params() -> None:
    rows = [{"trial_id": t, "param.train.lr": lr, "param.seed": seed, "epoch": 0,
             "client_id": i, "device": "phone", "split_layer": 5, "test_samples": 10,
             "test_accuracy": acc}
            for t, lr, seed, accs in (("t0", 0.1, 1.0, [0.2, 0.4]), ("t1", 0.01, None, [0.6, 0.8]))
            for i, acc in enumerate(accs)]
    by_device = accuracy_by_device(pd.DataFrame(rows), "trial_id", ["param.train.lr", "param.seed"])
    assert list(by_device.columns[:3]) == ["trial_id", "param.train.lr", "param.seed"]
    assert by_device["trial_id"].tolist() == ["t0", "t1"]  # t1's missing seed keeps its row
    assert by_device["param.train.lr"].tolist() == [0.1, 0.01]
    assert by_device["test_accuracy"].tolist() == pytest.approx([0.3, 0.7])


def test_analyze_sweep_to_out_dir_and_errors(sweep_dir: Path, tmp_path: Path) -> None:
    written = analyze(str(sweep_dir), out_dir=str(tmp_path / "out"))
    assert all(Path(p).parent == tmp_path / "out" for p in written.values())
    assert_png(written["accuracy_vs_epoch"])
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        analyze(str(tmp_path / "missing_dir"))
    with pytest.raises(ValueError, match="local"):
        analyze(str(sweep_dir), out_dir="s3://bucket/x")


def test_plots_many_runs(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(8):
        write_run(root / f"r{i}", f"r{i}", RUNS["a"])
    res = load(str(root))
    assert_png(plot_bytes_vs_sim_time(res, str(tmp_path / "b.png")))
    assert_png(plot_accuracy_vs_epoch(res, str(tmp_path / "e.png")))


def test_example_script_prints_frontier(runs_dir: Path, tmp_path: Path, monkeypatch,
                                        capsys) -> None:
    plot = tmp_path / "acc.png"
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), str(runs_dir), "--target", "0.6",
                                      "--plot", str(plot)])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    text = capsys.readouterr().out
    frontier = text.split("Pareto frontier")[1]
    assert "3 of 4 runs" in text
    assert all(f"  {r}:" in frontier for r in "abc") and "  d:" not in frontier
    assert_png(str(plot))


def test_a_run_with_no_evaluation_yet_is_left_out_and_part_files_load(tmp_path: Path) -> None:
    from splitray.metrics import append_part

    root = tmp_path / "runs"
    write_run(root / "done", "done", RUNS["a"])
    early = root / "early"  # killed before its first evaluation: steps only
    append_part(step_rows("early", RUNS["b"])[:2], STEP_COLUMNS, str(early / "steps.parquet"))
    parts = root / "parts"  # the layout runs write: directories of part files
    for epoch in range(len(RUNS["c"])):
        append_part(eval_rows("parts", RUNS["c"])[epoch:epoch + 1], EVAL_COLUMNS,
                    str(parts / "evals.parquet"))
    append_part(step_rows("parts", RUNS["c"]), STEP_COLUMNS, str(parts / "steps.parquet"))
    results = load(str(root))
    assert sorted(results.runs()) == ["done", "parts"]
    assert len(results.evals[results.evals["run_id"] == "parts"]) == len(RUNS["c"])


def test_a_sweep_inside_a_folder_of_runs_is_left_out_not_read_as_runs(runs_dir: Path) -> None:
    write_sweep(runs_dir / "sweep1")
    (write_sweep(runs_dir / "sweep2") / "sweep.json").unlink()  # known by its trial_id column
    results = load(str(runs_dir))
    assert sorted(results.runs()) == ["a", "b", "c", "d"] and results.params == []
    assert results.left_out == [str(runs_dir / "sweep1"), str(runs_dir / "sweep2")]
    md = Path(analyze(str(runs_dir))["summary_md"]).read_text()
    assert f"{runs_dir / 'sweep1'}, {runs_dir / 'sweep2'}." in md


def test_a_run_rolled_back_to_its_start_is_not_a_result(runs_dir: Path) -> None:
    rolled = runs_dir / "rolled"  # its table folders are there, their part files dropped
    for table in ("evals.parquet", "steps.parquet", "client_evals.parquet"):
        (rolled / table).mkdir(parents=True)
    (rolled / "config.yaml").write_text("name: deprune\nseed: 1\n")
    results = load(str(runs_dir))
    assert sorted(results.runs()) == ["a", "b", "c", "d"] and results.params == []
    assert results.left_out == []


def test_a_sweep_whose_every_trial_failed_says_it_has_no_trial_rows(tmp_path: Path,
                                                                     capsys) -> None:
    root = tmp_path / "failed"
    root.mkdir()
    write_table([], EVAL_COLUMNS, str(root / "evals.parquet"))  # as combine_trials writes them
    write_table([], STEP_COLUMNS, str(root / "steps.parquet"))
    write_table([], CLIENT_EVAL_COLUMNS, str(root / "client_evals.parquet"))
    trials = [{"trial_id": t, "status": "failed", "error": "RuntimeError: boom"} for t in TRIALS]
    (root / "sweep.json").write_text(json.dumps({"params": [], "trials": trials}))
    with pytest.raises(ValueError, match="has no trial rows: every trial failed"):
        load(str(root))
    assert main(["analyze", str(root)]) == EXIT_CONFIG_ERROR
    assert capsys.readouterr().err.strip() == (
        f"splitray: error: sweep {root} has no trial rows: every trial failed (sweep.json names "
        "each error)")
    assert not (root / "analysis").exists()


def test_analyze_bad_out_and_timeline_flags_are_one_line_errors(runs_dir: Path, tmp_path: Path,
                                                                 capsys, monkeypatch) -> None:
    run_a = runs_dir / "run_a"
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    monkeypatch.chdir(tmp_path)  # where a URI collapsed into a local path would be written
    cases = [
        (["--out", str(a_file)], f"--out: '{a_file}' is not allowed; it is a file, not a directory"),
        (["--out", str(a_file / "sub")], f"--out: '{a_file / 'sub'}' is not allowed; it cannot hold"),
        (["--timeline", "--out", str(a_file)], f"--out: '{a_file}' is not allowed; it is a file"),
        (["--timeline", "--out", str(a_file / "sub")], f"--out: '{a_file / 'sub'}' is not allowed"),
        (["--timeline", "--window", "0,inf"], "--window: '0,inf' is not allowed; give e.g. 0.5,2.0"),
        (["--timeline", "--window", "nan,1"], "--window: 'nan,1' is not allowed"),
        (["--timeline", "--window", "1,1"], "--window: '1,1' is not allowed; the window must "
                                            "have a width"),
        (["--timeline", "--target-accuracy", "0.5"],
         "--target-accuracy is not allowed with --timeline"),
    ]
    for flags, expected in cases:
        assert main(["analyze", str(run_a), *flags]) == EXIT_CONFIG_ERROR, flags
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("splitray: error: "), err
        assert expected in err, err
    for flags in ([], ["--timeline"]):  # a URI's results need a local --out
        assert main(["analyze", run_a.as_uri(), *flags]) == EXIT_CONFIG_ERROR
        err = capsys.readouterr().err.strip()
        assert err == (f"splitray: error: results at {run_a.as_uri()!r} are not local; pass a "
                       "local out_dir (--out)"), err
    assert main(["analyze", str(run_a), "--timeline", "--round", "999", "--out",
                 str(tmp_path / "r")]) == EXIT_CONFIG_ERROR
    assert "no steps in round 999" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "runs"]
    assert not (run_a / "analysis").exists()
    assert main(["analyze", run_a.as_uri(), "--timeline", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "timeline.png").read_bytes()[:8] == PNG_MAGIC


def test_the_timeline_needs_steps_alone_and_draws_one_run(runs_dir: Path, sweep_dir: Path,
                                                           tmp_path: Path, capsys) -> None:
    # A run stopped before its first evaluation has steps to draw, and no evals.
    run_a = runs_dir / "run_a"
    shutil.rmtree(run_a / "evals.parquet") if (run_a / "evals.parquet").is_dir() else \
        (run_a / "evals.parquet").unlink()
    assert main(["analyze", str(run_a), "--timeline", "--out", str(tmp_path / "a")]) == 0
    assert (tmp_path / "a" / "timeline.png").read_bytes()[:8] == PNG_MAGIC
    capsys.readouterr()
    # A sweep's steps hold every trial's, evaluated or not (t1 stopped before evaluating here):
    # never drawn as one run.
    evals = pd.read_parquet(sweep_dir / "evals.parquet")
    write_table(evals[evals["trial_id"] == "t0"].to_dict("records"), EVAL_COLUMNS,
                str(sweep_dir / "evals.parquet"))
    assert main(["analyze", str(sweep_dir), "--timeline", "--out",
                 str(tmp_path / "s")]) == EXIT_CONFIG_ERROR
    assert f"{sweep_dir} holds {len(TRIALS)} runs; --timeline draws one run directory" in \
        capsys.readouterr().err


def test_an_older_runs_steps_draw_their_compute_as_forward(tmp_path: Path) -> None:
    # Runs before schema version 2 have no sim_client_backward_s (read back as NaN).
    from splitray.analysis.timeline import step_segments

    steps = pd.DataFrame(step_rows("old", RUNS["a"])).assign(
        **{k: v for k, v in ADDED_COLUMNS.items() if k.startswith("sim_")})
    assert steps["sim_client_backward_s"].isna().all()
    segments = step_segments(steps)
    assert segments["start_s"].notna().all() and segments["duration_s"].notna().all()
    forward = segments[segments["kind"] == "forward"]
    assert len(forward) == len(steps) and (forward["duration_s"] == 0.1).all()
    assert {"uplink", "server", "downlink"} <= set(segments["kind"])


def test_the_bytes_plot_counts_the_weights_as_the_evals_do(tmp_path: Path, monkeypatch) -> None:
    from splitray.analysis import plots

    res = load(str(write_run(tmp_path / "run", "run", RUNS["a"])))
    res.steps["bytes_model_up"] = 1_000_000  # a SplitFed-like upload of weights after each step
    res.steps["bytes_model_down"] = 0
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and path)
    plot_bytes_vs_sim_time(res, str(tmp_path / "b.png"))
    finals = sorted(line.get_ydata()[-1] for ax in drawn["fig"].axes for line in ax.get_lines())
    per_client = res.steps.groupby("client_id")[
        ["bytes_up", "bytes_down", "bytes_model_up", "bytes_model_down"]].sum().sum(axis=1)
    assert finals == pytest.approx(sorted(per_client / 1e6))
