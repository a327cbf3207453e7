"""The Ray engine against the fused reference trainer, results on disk, and the run command."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from fused import assert_same_results, run_fused

from splitray.compression import payload_nbytes
from splitray.config import ConfigError, load_config
from splitray.metrics import RUN_TABLES
from splitray.runtime import context, orchestrator, run_experiment
from splitray.runtime.orchestrator import forwards_beside_server, prepare, start_peers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


pytestmark = pytest.mark.usefixtures("ray_cluster")  # one Ray instance for the module


def small(**overrides) -> list[str]:
    base = {
        "model.name": "vgg11", "model.split_layer": 5,
        "data.name": "synthetic", "data.train_samples": 256, "data.test_samples": 64,
        "train.batch_size": 8, "train.lr": 0.02,
        "clients.count": 1, "clients.num_cpus": 1, "server.num_cpus": 1,
        "clients.devices": "[laptop_cpu]", "network.links": "[wifi5]",
    }
    base.update(overrides)
    return [f"{k}={v}" for k, v in base.items()]


def test_engine_losses_equal_fused_trainer_first_20_steps():
    cfg = load_config(overrides=small(**{
        "compression.enabled": "false", "schedule.phases": "[{epochs: 1}]",
        "train.steps_per_epoch": 20}))
    fused = run_fused(cfg)
    engine = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    assert len(fused.steps) == len(engine.steps) == 20
    assert_same_results(engine, fused)
    assert engine.steps["loss"].iloc[-1] != engine.steps["loss"].iloc[0]


def test_each_epochs_rows_are_on_disk_and_its_freed_heap_returned_by_the_next_epoch(
        tmp_path, monkeypatch):
    """Without checkpoints inside a phase the rows still go to part files every epoch, so the
    driver holds none it has written and a killed run leaves its finished epochs readable; after
    each epoch the driver hands glibc's freed pages back (where the C library has malloc_trim)."""
    cfg = load_config(overrides=small(**{
        "clients.count": 2, "clients.devices": "[raspberry_pi_4, laptop_cpu]",
        "schedule.phases": "[{epochs: 3}]", "train.steps_per_epoch": 2}))
    on_disk, trims = [], []
    monkeypatch.setattr(context, "MALLOC_TRIM", lambda pad: trims.append(pad) or 1)

    def after_epoch(row: dict, checkpoint: str | None) -> None:
        (run_dir,) = tmp_path.iterdir()
        assert len(trims) == row["epoch"] + 1  # this epoch's freed pages went back
        on_disk.append((row["epoch"], *(sorted(pd.read_parquet(run_dir / name)["epoch"].unique())
                          for name in RUN_TABLES)))

    result = run_experiment(cfg, out_dir=str(tmp_path), engine="local", progress=False,
                            on_epoch=after_epoch)
    # epoch just done, then the epochs on disk in steps, evals and client_evals
    assert on_disk == [(0, [0], [0], [0]), (1, [0, 1], [0, 1], [0, 1]),
                       (2, [0, 1, 2], [0, 1, 2], [0, 1, 2])]
    for name in RUN_TABLES:
        assert len(os.listdir(os.path.join(result.run_dir, name))) == 3, name


def test_run_directory_tables_and_payload_bytes(tmp_path):
    cfg = load_config(overrides=small(**{
        "clients.count": 2, "clients.num_cpus": 0.5,
        "clients.devices": "[raspberry_pi_4, laptop_cpu]", "network.shared": "wifi6_shared",
        "schedule.phases": "[{budget: 4, epochs: 1}, {budget: 128, epochs: 1}]",
        "compression.codec_up": "fp16", "compression.codec_down": "bf16",
        "train.steps_per_epoch": 3}))
    result = run_experiment(cfg, out_dir=str(tmp_path), engine="ray", progress=False)
    run_dir = result.run_dir
    for name in ("config.yaml", "manifest.json"):
        assert os.path.isfile(os.path.join(run_dir, name)), name
    # Tables are directories of part files, one per flush (after each epoch's evaluation).
    for name in RUN_TABLES:
        assert sorted(os.listdir(os.path.join(run_dir, name))) == [
            "part-00000.parquet", "part-00001.parquet"], name
    steps = pd.read_parquet(os.path.join(run_dir, "steps.parquet"))
    evals = pd.read_parquet(os.path.join(run_dir, "evals.parquet"))
    assert len(steps) == 2 * 2 * 3 and len(evals) == 2
    per_client = pd.read_parquet(os.path.join(run_dir, "client_evals.parquet"))
    assert per_client[["epoch", "client_id", "device"]].values.tolist() == [
        [0, 0, "raspberry_pi_4"], [0, 1, "laptop_cpu"], [1, 0, "raspberry_pi_4"],
        [1, 1, "laptop_cpu"]]
    pd.testing.assert_frame_equal(result.client_evals, per_client)
    assert len(pd.read_parquet(os.path.join(run_dir, "steps.parquet", "part-00001.parquet"))) == 6
    pd.testing.assert_frame_equal(result.steps, steps)
    # A part being written (hidden temporary name) is not part of the table.
    with open(os.path.join(run_dir, "steps.parquet", ".tmp123.tmp"), "wb") as f:
        f.write(b"PAR1 half written")
    assert len(pd.read_parquet(os.path.join(run_dir, "steps.parquet"))) == len(steps)
    assert set(steps["budget"]) == {4, 128}
    # Every row's bytes equal the payload formula (activations 128 x 8 x 8 at split 5).
    for row in steps.itertuples():
        up = payload_nbytes(row.batch_size, row.budget, 8, 8, "fp16", with_indices=True,
                            with_labels=True)
        down = payload_nbytes(row.batch_size, row.budget, 8, 8, "bf16", with_indices=False,
                              with_labels=False)
        assert (row.bytes_up, row.bytes_down) == (up, down)
    assert evals["cum_bytes_up"].iloc[-1] == steps["bytes_up"].sum()
    assert (np.diff(steps.groupby("client_id")["sim_time_s"].apply(list)[0]) > 0).all()
    assert evals["sim_time_s"].iloc[-1] == pytest.approx(steps["sim_time_s"].max())
    for col in ("run_id", "client_id", "device", "epoch", "step", "budget", "split_layer",
                "batch_size", "bytes_up", "bytes_down", "sim_time_s", "wall_time_s", "loss"):
        assert col in steps.columns
    for col in ("run_id", "epoch", "budget", "test_accuracy", "test_loss", "cum_bytes_up",
                "cum_bytes_down", "sim_time_s", "wall_time_s"):
        assert col in evals.columns


def test_same_seed_same_tables_wall_clock_aside():
    cfg = load_config(overrides=small(**{
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
        "clients.count": 2, "clients.num_cpus": 0.5, "network.shared": "wifi6_shared",
        "schedule.phases": "[{budget: 8, epochs: 1}]", "train.steps_per_epoch": 3}))
    a = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    b = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    drop = ["run_id", "wall_time_s"]
    pd.testing.assert_frame_equal(a.steps.drop(columns=drop), b.steps.drop(columns=drop))
    pd.testing.assert_frame_equal(a.evals.drop(columns=drop), b.evals.drop(columns=drop))
    pd.testing.assert_frame_equal(a.client_evals.drop(columns="run_id"),
                                  b.client_evals.drop(columns="run_id"))


def test_budget_larger_than_channels_fails_before_work(tmp_path):
    cfg = load_config(overrides=small(**{"schedule.phases": "[{budget: 500, epochs: 1}]"}))
    with pytest.raises(ConfigError, match=r"schedule.phases\[0\].budget: 500"):
        run_experiment(cfg, out_dir=str(tmp_path), engine="ray", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_config_error_exit_2_nothing_written(tmp_path):
    out = tmp_path / "runs"
    proc = subprocess.run(
        [sys.executable, "-m", "splitray.cli", "run", os.path.join(REPO, "experiments",
                                                                    "quickstart.yaml"),
         "--set", "train.lr=-1", "--out", str(out)],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "train.lr: -1" in lines[0] and "must be > 0" in lines[0]
    assert not out.exists()


def test_realtime_mode_wall_time_tracks_simulated_time_when_network_bound():
    link = "{kind: constant, up_bps: 4.0e6, down_bps: 4.0e6, latency_s: 0.01}"
    cfg = load_config(overrides=small(**{
        "model.name": "tiny_cnn", "model.split_layer": 3, "compression.enabled": "false",
        "schedule.phases": "[{epochs: 1}]", "train.steps_per_epoch": 12,
        "network.links": f"[{link}]", "engine.time_mode": "realtime"}))
    result = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    last = result.steps.iloc[-1]
    # 8 x 16 x 16 x 16 fp32 = 131 kB each way at 4 Mbit/s: the network dominates.
    assert last["sim_uplink_s"] + last["sim_downlink_s"] > 0.5
    assert last["wall_time_s"] == pytest.approx(last["sim_time_s"], rel=0.10)


def test_measured_compute_mode_scales_host_time_and_custom_devices_count():
    common = {"model.name": "tiny_cnn", "model.split_layer": 3, "compression.enabled": "false",
              "schedule.phases": "[{epochs: 1}]", "train.steps_per_epoch": 3}
    flops = run_experiment(load_config(overrides=small(**common, **{
        "clients.devices": "[{name: slowpoke, flops_per_s: 1.0e6}]"})),
        out_dir=None, engine="local", progress=False).steps
    measured = run_experiment(load_config(overrides=small(**common, **{
        "engine.compute_time": "measured", "engine.measured_scale": 1000})),
        out_dir=None, engine="local", progress=False).steps
    # A custom 1 MFLOP/s device: compute time is the FLOPs of the step divided by 1e6.
    assert (flops["device"] == "slowpoke").all()
    assert (flops["sim_client_compute_s"] > 1.0).all()
    # Measured: host seconds x 1000, so well above zero but nothing like the FLOP model.
    assert (measured["sim_client_compute_s"] > 0.01).all()
    assert (measured["sim_client_compute_s"] != flops["sim_client_compute_s"]).all()


def test_results_go_to_a_uri_through_pyarrow(tmp_path):
    from splitray.analysis import load

    cfg = load_config(overrides=small(**{
        "model.name": "tiny_cnn", "model.split_layer": 3, "schedule.phases": "[{budget: 4, epochs: 1}]",
        "train.steps_per_epoch": 2}))
    result = run_experiment(cfg, out_dir=f"file://{tmp_path}/runs", engine="local", progress=False)
    assert result.run_dir.startswith("file://")
    loaded = load(result.run_dir)
    assert len(loaded.steps) == 2 and len(loaded.evals) == 1
    assert (tmp_path / "runs" / result.run_id / "manifest.json").is_file()


@pytest.mark.parametrize("algorithm", ["vanilla_sl", "splitfed", "async_sl"])
def test_every_algorithm_gives_the_fused_trainers_tables_on_ray(algorithm, monkeypatch):
    from splitray.algorithms import async_sl

    # Async clients go A, B, C, A by epoch (the loss rules have a test of their own).
    monkeypatch.setattr(async_sl, "next_state", lambda c, loss, rules: async_sl.ClientState(
        {"A": "B", "B": "C", "C": "A"}[c.state]))
    cfg = load_config(overrides=small(**{
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
        "data.train_samples": 64, "data.test_samples": 32, "clients.count": 2,
        "clients.num_cpus": 0.5, "train.algorithm": algorithm, "train.steps_per_epoch": 2,
        "schedule.phases": "[{budget: 4, epochs: 4}]", "splitfed.every_rounds": 3}))
    fused = run_fused(cfg)
    engine = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    assert_same_results(engine, fused)
    if algorithm == "async_sl":
        assert set(engine.steps["client_state"]) == {"A", "B", "C"}
        assert engine.summary["server_cache_bytes"] == fused.summary["server_cache_bytes"] > 0
    else:
        assert engine.steps["bytes_model_up"].sum() > 0


@pytest.mark.parametrize("algorithm", ["edgesplit", "epsl"])
def test_heterogeneous_schemes_through_ray_equal_the_fused_trainer(algorithm):
    # EdgeSplit: a server part per client, averaged with the client parts through the actors;
    # EPSL: the aggregated gradient goes to every client's backward as an ObjectRef.
    cfg = load_config(overrides=small(**{
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
        "compression.enabled": "false", "schedule.phases": "[{epochs: 2}]",
        "train.steps_per_epoch": 4, "clients.count": 2, "clients.num_cpus": 0.5,
        "clients.devices": "[raspberry_pi_4, laptop_cpu]", "network.shared": "wifi6_shared",
        "train.algorithm": algorithm,
        **({"train.phi": 0.5} if algorithm == "epsl" else {"clients.split_layers": "[2, 4]"})}))
    fused = run_fused(cfg)
    engine = run_experiment(cfg, out_dir=None, engine="ray", progress=False)
    assert_same_results(engine, fused)


def test_client_actors_run_forwards_ahead_only_on_cpus_the_server_leaves(monkeypatch):
    # Beside a server step whose threads fill the cores a forward makes both wait on each other.
    assert forwards_beside_server(8, 2, 2, 1) == 0     # 2 cores, a 2-CPU server: none ahead
    assert forwards_beside_server(8, 2, 1, 1) == 1
    assert forwards_beside_server(8, 16, 2, 1) == 8    # never more than the clients
    assert forwards_beside_server(8, 16, 2, 4) == 3    # 4-thread forwards: 3 fit on 14 CPUs
    assert forwards_beside_server(8, 2, 0, 1) == 2     # a GPU server leaves every CPU
    assert forwards_beside_server(8, math.inf, 2, 1) == 8   # a Tune trial's bundles

    def prefetch(**extra: object) -> int:
        cfg = load_config(overrides=small(**{"clients.count": 2, "clients.num_cpus": 0.5,
                                             "model.name": "tiny_cnn", "model.split_layer": 3,
                                             **extra}))
        peers = start_peers(prepare(cfg), "ray")
        try:
            return peers.prefetch
        finally:
            peers.stop()

    # The 2-CPU test cluster, a 1-CPU server: one forward ahead; engine.prefetch overrides.
    assert prefetch() == 1
    assert prefetch(**{"engine.prefetch": 3}) == 3
    # Ray's CPUs are logical: on a one-node cluster declaring more CPUs than the node's cores
    # (here one core under the 2-CPU cluster), the 1-CPU server leaves no core for a forward.
    monkeypatch.setattr(orchestrator.os, "sched_getaffinity", lambda pid: {0})
    assert prefetch() == 0


def test_progress_off_a_terminal_logs_a_line_every_half_minute_of_a_long_epoch(capsys,
                                                                            monkeypatch):
    from splitray.runtime import context

    clock = itertools.chain([0.0, 10.0, 31.0, 40.0, 62.0], itertools.repeat(99.0))
    monkeypatch.setattr(context.time, "monotonic", lambda: next(clock))
    progress = context.Progress(2)  # pytest's stdout is no terminal
    for done in (1, 2, 3, 4):
        progress.round(0, done, 9, sim_s=float(done))
    assert capsys.readouterr().out.splitlines() == [
        "  epoch 1/2  step 2/9  sim       2.0 s", "  epoch 1/2  step 4/9  sim       4.0 s"]
    context.Progress(2, enabled=False).round(0, 1, 9, 1.0)
    assert capsys.readouterr().out == ""
