"""A run killed after a checkpoint and resumed ends with the tables of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fused import assert_same_tables, run_fused

from splitray.config import ALGORITHM_NAMES, load_config

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")
EPOCHS = 6
SETTINGS = {
    "model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
    "data.train_samples": 256, "data.test_samples": 64, "train.batch_size": 8,
    "clients.count": 2, "clients.devices": "[raspberry_pi_4, laptop_cpu]",
    "network.shared": "{kind: shared, up_bps: 2e6, down_bps: 5e6, latency_s: 0.01, jitter_s: 0.002}",
    "schedule.phases": f"[{{budget: 4, epochs: {EPOCHS // 2}}}, {{budget: 16, epochs: {EPOCHS // 2}}}]",
    "checkpoint.every_epochs": 1, "splitfed.every_rounds": 5,
}


def _settings(algorithm: str) -> dict:
    settings = {**SETTINGS, "train.algorithm": algorithm}
    if algorithm == "prune":  # budgets from the largest down
        settings["schedule.phases"] = (f"[{{budget: 16, epochs: {EPOCHS // 2}}}, "
                                       f"{{budget: 4, epochs: {EPOCHS // 2}}}]")
    return settings


def _command(algorithm: str, out: Path) -> list[str]:
    sets = [a for k, v in _settings(algorithm).items() for a in ("--set", f"{k}={v}")]
    return [sys.executable, "-m", "splitray.cli", "run", QUICKSTART, *sets, "--engine", "local",
            "--quiet", "--out", str(out)]


def _env() -> dict:
    # One thread: the same float summation order in every process.
    return {**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}


def _epochs_done(out: Path) -> int:
    for checkpoint in out.glob("*/checkpoint.pt"):
        try:
            return torch.load(checkpoint, weights_only=True)["epochs_done"]
        except Exception:  # replaced while we read it
            return 0
    return 0


@pytest.mark.parametrize("algorithm", ALGORITHM_NAMES)
def test_a_killed_run_resumes_to_the_tables_of_an_uninterrupted_run(algorithm, tmp_path):
    # The uninterrupted run in this process, on one thread as the runs below (same tables).
    whole = Path(run_fused(load_config(QUICKSTART, [f"{k}={v}" for k, v in
                                                    _settings(algorithm).items()]),
                           str(tmp_path / "whole")).run_dir)

    killed_out = tmp_path / "killed"
    proc = subprocess.Popen(_command(algorithm, killed_out), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _epochs_done(killed_out) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    [run_dir] = killed_out.iterdir()
    assert json.loads((run_dir / "manifest.json").read_text())["status"] == "running"

    resumed = subprocess.run(
        [sys.executable, "-m", "splitray.cli", "run", "--resume", str(run_dir), "--engine",
         "local", "--quiet"], env=_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_tables(run_dir, whole)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished" and len(manifest["resumes"]) == 1
    assert manifest["resumes"][0]["epochs_done"] >= 2


def test_a_new_run_never_appends_to_an_existing_runs_tables(tmp_path):
    from splitray.config import ConfigError, load_config
    from splitray.runtime import run_experiment

    cfg = load_config(QUICKSTART, [f"{k}={v}" for k, v in {
        **SETTINGS, "data.train_samples": 32, "schedule.phases": "[{budget: 4, epochs: 1}]",
        "checkpoint.every_epochs": "null"}.items()])
    first = run_experiment(cfg, out_dir=str(tmp_path), engine="local", progress=False)
    again = run_experiment(cfg, out_dir=str(tmp_path), engine="local", progress=False)
    assert again.run_dir != first.run_dir and len(again.steps) == len(first.steps)
    with pytest.raises(ConfigError, match="already holds a run's tables"):
        run_experiment(cfg, run_dir=first.run_dir, engine="local", progress=False)


def test_a_checkpoint_from_before_a_table_existed_keeps_none_of_its_parts(tmp_path):
    """A checkpoint written before client_evals.parquet existed counts no parts of it: resuming
    drops the table's parts (all written after that checkpoint) and keeps the counted ones."""
    from splitray.metrics import (
        CLIENT_EVALS_TABLE,
        EVALS_TABLE,
        RUN_TABLES,
        STEPS_TABLE,
        append_part,
        drop_parts_after,
        table_parts,
    )

    run_dir = str(tmp_path)
    for name, columns in RUN_TABLES.items():
        for _ in range(2):
            append_part([], columns, os.path.join(run_dir, name))
    drop_parts_after(run_dir, {STEPS_TABLE: 1, EVALS_TABLE: 2})
    assert [len(table_parts(os.path.join(run_dir, name))) for name in
            (STEPS_TABLE, EVALS_TABLE, CLIENT_EVALS_TABLE)] == [1, 2, 0]


def test_an_empty_checkpoint_file_is_a_one_line_error(tmp_path):
    from splitray.config import ConfigError
    from splitray.runtime.context import load_tensors

    empty = tmp_path / "checkpoint.pt"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"is not a checkpoint splitray can load safely "
                                          r"\(EOFError: \)$"):
        load_tensors(str(empty), "checkpoint")


def test_a_run_written_by_another_schema_version_is_not_resumed(tmp_path):
    import json

    from splitray.config import ConfigError, load_config
    from splitray.runtime import resume_experiment, run_experiment

    settings = {**SETTINGS, "schedule.phases": "[{epochs: 1}]"}
    cfg = load_config(QUICKSTART, [f"{k}={v}" for k, v in settings.items()])
    run_dir = run_experiment(cfg, out_dir=str(tmp_path), engine="local", progress=False).run_dir
    manifest = Path(run_dir) / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "schema_version": 4}))
    with pytest.raises(ConfigError, match="its tables have schema version 4 and this splitray "
                                          "writes version 5: run it again from the start"):
        resume_experiment(run_dir, engine="local", progress=False)


@pytest.mark.parametrize("scheme", ["", "file://"])
def test_a_run_whose_directory_is_taken_gets_the_next_suffix(tmp_path, scheme):
    """Two runs of one config started in the same second: the directory is claimed by creating
    it, so the second run takes `-2` even before the first has written a table."""
    from splitray.runtime.orchestrator import _claim_run_dir

    (tmp_path / "quickstart-1").mkdir()  # claimed by a run that has written nothing yet
    out = f"{scheme}{tmp_path}"
    assert _claim_run_dir(out, "quickstart-1") == ("quickstart-1-2", f"{out}/quickstart-1-2")
    assert (tmp_path / "quickstart-1-2").is_dir()
    assert _claim_run_dir(out, "quickstart-1")[0] == "quickstart-1-3"


def test_a_run_under_a_uri_resumes(tmp_path):
    from fused import assert_same_results

    from splitray.runtime import resume_experiment, run_experiment

    settings = {**SETTINGS, "data.train_samples": 64, "schedule.phases": "[{epochs: 2}]"}
    cfg = load_config(QUICKSTART, [f"{k}={v}" for k, v in settings.items()])
    first = run_experiment(cfg, out_dir=f"file://{tmp_path}/runs", engine="local", progress=False)
    again = resume_experiment(first.run_dir, engine="local", progress=False)
    assert again.run_dir == first.run_dir
    assert_same_results(again, first)


def test_a_uri_keeps_its_options_after_the_path():
    from splitray.metrics import join_path

    base = "s3://bucket/runs?region=eu-west-1&endpoint_override=localhost:9000"
    assert join_path(join_path(base, "run-1"), "manifest.json") == (
        "s3://bucket/runs/run-1/manifest.json?region=eu-west-1&endpoint_override=localhost:9000")
    assert join_path("file:///tmp/runs/", "run-1") == "file:///tmp/runs/run-1"


def test_a_write_cut_short_leaves_no_object_in_an_object_store(monkeypatch):
    import pyarrow.fs as pafs

    from splitray import metrics

    store, _ = pafs.FileSystem.from_uri("mock:///")  # not local, as s3 and gcs are not
    monkeypatch.setattr(metrics, "filesystem", lambda path: (store, path.split("://", 1)[1]))
    with pytest.raises(KeyboardInterrupt), metrics.atomic_output("s3://bucket/run/a.bin") as f:
        f.write(b"PAR1\x00\x00")
        raise KeyboardInterrupt
    assert not metrics.table_exists("s3://bucket/run/a.bin")
    metrics.write_bytes(b"whole", "s3://bucket/run/b.bin")
    assert metrics.read_bytes("s3://bucket/run/b.bin") == b"whole"
