"""The small `splitray` commands: split-points, profiles, schema; what `run --quiet` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from splitray.cli import main


def test_split_points_json_lists_every_split_with_the_papers_split(capsys):
    assert main(["split-points", "vgg11", "--input-shape", "3,32,32", "--format", "json"]) == 0
    points = json.loads(capsys.readouterr().out)
    assert [p["index"] for p in points] == list(range(len(points)))
    five = points[5]
    assert five["shape"] == [128, 8, 8] and five["bytes_per_sample_fp32"] == 4 * 128 * 8 * 8
    assert five["client_flops"] > 0 and five["server_flops"] > 0
    assert points[0]["client_flops"] == 0


def test_split_points_table_and_bad_input(capsys):
    assert main(["split-points", "tiny_cnn", "--num-classes", "5"]) == 0
    assert "pool1" in capsys.readouterr().out
    assert main(["split-points", "vgg99"]) == 2
    assert "MODEL: 'vgg99' is not allowed" in capsys.readouterr().err
    assert main(["split-points", "vgg11", "--input-shape", "3,32"]) == 2
    assert "--input-shape: '3,32' is not allowed" in capsys.readouterr().err
    # Numbers the model cannot take: one line, not the model builder's traceback.
    assert main(["split-points", "tiny_cnn", "--input-shape", "3,4,4"]) == 2
    assert capsys.readouterr().err.strip() == ("splitray: error: --input-shape: '3,4,4' is not "
                                               "allowed; tiny_cnn needs height and width >= 8")
    assert main(["split-points", "vgg11", "--num-classes", "0"]) == 2
    assert "--num-classes: 0 is not allowed" in capsys.readouterr().err


def test_profiles_and_schema_document_what_configs_and_tables_hold(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "raspberry_pi_4" in out and "wifi6_shared" in out and "ATT-LTE-driving.up" in out
    assert main(["schema"]) == 0
    out = capsys.readouterr().out
    assert "`bytes_up`" in out and "`test_accuracy`" in out and "### evals.parquet" in out


def test_quiet_run_on_ray_prints_only_its_summary(tmp_path):
    # A fresh process starts its own Ray: without --quiet Ray logs its start (INFO) and token
    # authentication (WARNING); with it the run prints its one-line summary and nothing else.
    repo = Path(__file__).resolve().parents[1]
    settings = {"model.name": "tiny_cnn", "model.split_layer": 3, "data.image_size": 16,
                "data.train_samples": 64, "data.test_samples": 16, "train.batch_size": 8,
                "clients.count": 2, "clients.num_cpus": 0.5, "server.num_cpus": 0.5,
                "schedule.phases": "[{budget: 4, epochs: 1}]"}
    sets = [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "-m", "splitray.cli", "run", str(repo / "experiments/quickstart.yaml"),
         *sets, "--quiet", "--out", str(tmp_path)],
        env={**env, "RAY_USAGE_STATS_ENABLED": "0"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # (Other libraries' warnings may reach stderr on other installs; Ray's own lines must not.)
    assert "Started a local Ray instance" not in done.stderr, done.stderr
    assert "Token authentication is enabled" not in done.stderr, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == ["done"]


def test_tune_leaves_options_not_given_to_run_sweeps_defaults(monkeypatch, capsys):
    import types

    import splitray.tune

    seen = {}

    def run_sweep(space, out, **options):
        seen.update(options)
        return types.SimpleNamespace(trials=[])

    monkeypatch.setattr(splitray.tune, "load_space", lambda path: "space")
    monkeypatch.setattr(splitray.tune, "run_sweep", run_sweep)
    monkeypatch.setattr(splitray.tune, "format_summary", lambda result: "summary")
    assert main(["tune", "space.yaml", "--out", "sweep"]) == 0
    assert seen == {"num_samples": None, "max_concurrent": None, "verbose": 1}
    assert main(["tune", "space.yaml", "--out", "sweep", "--scheduler", "asha", "--max-failures",
                 "2", "--quiet"]) == 0
    assert seen["scheduler"] == "asha" and seen["max_failures"] == 2 and seen["verbose"] == 0


def test_a_reader_that_leaves_early_ends_the_command_quietly():
    # `splitray split-points ... | head`: the pipe closes before the output is written; this
    # was a BrokenPipeError traceback.
    proc = subprocess.Popen([sys.executable, "-m", "splitray.cli", "split-points", "mobilenet_v2",
                             "--format", "json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and stderr == ""


def test_a_broken_pipe_that_is_not_stdout_is_not_hidden(monkeypatch):
    import splitray.cli as cli

    def dead_socket(args):
        raise BrokenPipeError("a socket, not the reader")

    monkeypatch.setattr(cli, "_cmd_profiles", dead_socket)
    with pytest.raises(BrokenPipeError, match="a socket"):
        main(["profiles"])
