"""Every user mistake fails before any work: one line naming the field or file, exit code 2, and
no run or sweep directory written. A run whose loss turns NaN ends `diverged` with exit code 3;
one stopped with Ctrl-C ends `interrupted` with exit code 130, with SIGTERM 143."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from splitray.cli import (
    EXIT_CONFIG_ERROR,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    main,
)

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "experiments" / "quickstart.yaml")
TINY = ["--set", "model.name=tiny_cnn", "--set", "model.split_layer=3", "--set",
        "data.image_size=16", "--set", "data.train_samples=64", "--set", "data.test_samples=16",
        "--set", "schedule.phases=[{budget: 4, epochs: 1}]"]
OWN_LINKS = ["run", QUICKSTART, *TINY, "--set", "network.shared=null", "--set"]
# EPSL whose server part (ResNet18's layer4 at 32 px) holds a BatchNorm on a 1 x 1 map.
EPSL_AT_1X1 = ["run", QUICKSTART, "--set", "model.name=resnet18_imagenet", "--set",
               "model.split_layer=9", "--set", "compression.enabled=false", "--set",
               "schedule.phases=[{epochs: 1}]", "--set", "train.algorithm=epsl", "--set"]


def _cifar_batch(path: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    batch = {"data": rng.integers(0, 255, (n, 3 * 32 * 32), dtype=np.uint8),
             "labels": rng.integers(0, 10, n).tolist()}
    path.write_bytes(pickle.dumps(batch))


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    """A tiny CIFAR-10 copy (20 train, 10 test images), broken copies of it, and bad files."""
    def cifar(name: str) -> Path:
        folder = tmp_path / name / "cifar-10-batches-py"
        folder.mkdir(parents=True)
        for i in range(1, 6):
            _cifar_batch(folder / f"data_batch_{i}", 4)
        _cifar_batch(folder / "test_batch", 10)
        return folder

    cifar("good")
    truncated = cifar("truncated") / "data_batch_3"
    truncated.write_bytes(truncated.read_bytes()[:100])
    (cifar("garbage") / "test_batch").write_bytes(b"not a pickle at all")
    (tmp_path / "empty.trace").write_text("")
    (tmp_path / "words.trace").write_text("1\n2\nthree\n")
    (tmp_path / "broken.yaml").write_text("model:\n  name: [vgg11\n")
    (tmp_path / "list.yaml").write_text("- name: x\n")
    (tmp_path / "space_bad_key.yaml").write_text(
        f"base: {QUICKSTART}\nspace:\n  train.nope: {{grid: [1, 2]}}\n")
    (tmp_path / "space_bad_kind.yaml").write_text(
        f"base: {QUICKSTART}\nspace:\n  train.lr: {{normal: [1, 2]}}\n")
    (tmp_path / "space_bad_value.yaml").write_text(
        f"base: {QUICKSTART}\nspace:\n  train.lr: {{grid: [0.1, -1]}}\n")
    (tmp_path / "space_broken.yaml").write_text("base: [\n")
    return {"root": str(tmp_path), **{k: str(tmp_path / k) for k in ("good", "truncated", "garbage")}}


# (id, command line after `splitray`, text the one error line must contain). {root}, {good}, ...
# are the fixture's paths; runs use --engine local and --out {out}.
CASES = [
    ("image too small", ["run", QUICKSTART, "--set", "data.image_size=16"],
     "data.image_size: 16 is not allowed; vgg11_bn needs images of at least 32 px"),
    ("more clients than samples", ["run", QUICKSTART, "--set", "clients.count=2000"],
     "clients.count: 2000 is not allowed"),
    ("more shards than samples", ["run", QUICKSTART, "--set", "data.partition=shards", "--set",
                                  "data.shards_per_client=600"], "data.shards_per_client: 600"),
    ("more train samples than the data", ["run", QUICKSTART, "--set", "data.name=cifar10",
                                          "--set", "data.root={good}", "--set",
                                          "data.train_samples=500"],
     "data.train_samples: 500 is not allowed; the cifar10 train split has 20 samples"),
    ("more test samples than the data", ["run", QUICKSTART, "--set", "data.name=cifar10",
                                         "--set", "data.root={good}", "--set",
                                         "data.train_samples=20", "--set", "data.test_samples=50"],
     "data.test_samples: 50 is not allowed; the cifar10 test split has 10 samples"),
    ("fewer test samples than clients", ["run", QUICKSTART, "--set", "data.test_samples=2"],
     "data.test_samples: 2 test samples are not allowed for 4 clients"),
    ("negative seed", ["run", QUICKSTART, "--set", "seed=-1"], "seed: -1 is not allowed"),
    ("truncated cifar batch", ["run", QUICKSTART, "--set", "data.name=cifar10", "--set",
                               "data.root={truncated}", "--set", "data.train_samples=null"],
     "data_batch_3 is not a readable cifar10 batch file"),
    ("corrupt cifar batch", ["run", QUICKSTART, "--set", "data.name=cifar10", "--set",
                             "data.root={garbage}", "--set", "data.train_samples=20", "--set",
                             "data.test_samples=null"],
     "test_batch is not a readable cifar10 batch file"),
    ("missing data root", ["run", QUICKSTART, "--set", "data.name=cifar10", "--set",
                           "data.root={root}/nowhere"], "data.root:"),
    ("malformed yaml", ["run", "{root}/broken.yaml"], "is not valid YAML: expected ',' or ']'"),
    ("yaml not a mapping", ["run", "{root}/list.yaml"], "must hold a mapping at the top level"),
    ("missing config file", ["run", "{root}/none.yaml"], "is not a file"),
    ("name outside --out", ["run", QUICKSTART, "--set", "name=../../escape"],
     "name: '../../escape' is not allowed"),
    ("unknown section key", ["run", QUICKSTART, "--set", "train.nope=1"], "train.nope"),
    ("override without =", ["run", QUICKSTART, "--set", "train.lr"], "train.lr"),
    ("wrong type", ["run", QUICKSTART, "--set", "train.batch_size=big"], "train.batch_size"),
    ("out of range", ["run", QUICKSTART, "--set", "compression.lam=2"], "compression.lam: 2"),
    ("unknown model", ["run", QUICKSTART, "--set", "model.name=vgg99"], "model.name: 'vgg99'"),
    ("split layer too deep", ["run", QUICKSTART, "--set", "model.split_layer=99"],
     "model.split_layer: 99"),
    ("budget above the channels", ["run", QUICKSTART, "--set",
                                   "schedule.phases=[{budget: 999, epochs: 1}]"],
     "schedule.phases[0].budget: 999"),
    ("unknown codec", ["run", QUICKSTART, "--set", "compression.codec_up=fp7"],
     "compression.codec_up"),
    ("unknown algorithm", ["run", QUICKSTART, "--set", "train.algorithm=magic"],
     "train.algorithm: 'magic' is not allowed"),
    ("bad vanilla handoff", ["run", QUICKSTART, "--set", "vanilla.handoff=week"],
     "vanilla.handoff"),
    ("unknown device", ["run", QUICKSTART, "--set", "clients.devices=[toaster]"],
     "clients.devices[0]: 'toaster'"),
    ("unknown link profile", ["run", QUICKSTART, "--set", "network.shared=null", "--set",
                              "network.links=[carrier_pigeon]"], "network.links[0]"),
    ("missing trace file", [*OWN_LINKS, "network.links=[{kind: trace, up: "
                            "{root}/none.up, down: {root}/none.down}]"], "none.up"),
    ("empty trace file", [*OWN_LINKS, "network.links=[{kind: trace, up: "
                          "{root}/empty.trace, down: {root}/empty.trace}]"], "empty.trace"),
    ("non-numeric trace file", [*OWN_LINKS, "network.links=[{kind: trace, up: "
                                "{root}/words.trace, down: {root}/words.trace}]"], "words.trace"),
    ("own link as the shared medium", ["run", QUICKSTART, "--set", "network.shared=lte"],
     "network.shared: 'lte' is not allowed; it is a link of kind 'constant'"),
    ("shared medium as an own link", ["run", QUICKSTART, "--set", "network.shared=null", "--set",
                                      "network.links=[lte, wifi6_shared]"],
     "network.links[1]: 'wifi6_shared' is not allowed; a shared medium goes in network.shared"),
    ("shares above one", ["run", QUICKSTART, *TINY, "--set", "network.shared={kind: shared, up_bps: 1e6, "
                          "down_bps: 1e6, allocation: shares, shares: [0.9, 0.9]}"],
     "sum to 1.8"),
    ("a share per client", ["run", QUICKSTART, *TINY, "--set", "clients.count=3", "--set",
                            "network.shared={kind: shared, up_bps: 1e6, down_bps: 1e6, "
                            "allocation: shares, shares: [0.5, 0.5]}"], "2 given for the 3"),
    # BatchNorm cannot train on one value per channel: torch raised mid-run before.
    ("one-sample shard at a 1x1 BatchNorm", ["run", QUICKSTART, "--set", "model.split_layer=14",
                                             "--set", "data.train_samples=4"],
     "data.partition: client 0's shard of 1 sample(s) is not allowed: a one-sample training "
     "batch reaches the BatchNorm of the compressor (client side) on a 1 x 1 map"),
    ("EPSL part of one from a small shard",
     [*EPSL_AT_1X1, "train.phi=0.5", "--set", "train.batch_size=8", "--set",
      "data.train_samples=20", "--set", "clients.count=4"],
     "data.partition: client 0's shard of 5 sample(s) is not allowed with train.phi 0.5; EPSL's "
     "server trains on parts of 4 and 1 positions"),
    ("batch of one at a 1x1 BatchNorm", ["run", QUICKSTART, "--set", "model.split_layer=14",
                                         "--set", "train.batch_size=1"],
     "train.batch_size: 1 is not allowed: a one-sample training batch reaches the BatchNorm of "
     "the compressor (client side)"),
    ("EPSL part of one at a 1x1 BatchNorm",
     [*EPSL_AT_1X1, "train.phi=0.75", "--set", "train.batch_size=4"],
     "train.phi: 0.75 is not allowed with train.batch_size 4; EPSL's server trains on parts of 3 "
     "and 1 positions: a one-sample training batch reaches the BatchNorm of layer4_block1 (server "
     "side)"),
    ("space: unknown key", ["tune", "{root}/space_bad_key.yaml"], "train.nope"),
    ("space: unknown kind", ["tune", "{root}/space_bad_kind.yaml"], "normal"),
    ("space: bad candidate", ["tune", "{root}/space_bad_value.yaml"], "train.lr: -1"),
    ("space: malformed yaml", ["tune", "{root}/space_broken.yaml"], "is not valid YAML"),
    ("resumed run with --out", ["run", "--resume", "{root}"],
     "--out is not allowed with --resume; a run continues in its own directory"),
    ("quiet resumed sweep", ["tune", "--resume", "{root}", "--quiet"],
     "--quiet is not allowed with --resume"),
    # A resumed sweep goes on with the options it started with; the cases add --out last.
    *[(f"resumed sweep with {flag}", ["tune", "--resume", "{root}", *value], f"{flag} is not "
       "allowed with --resume; a sweep goes on in its own directory with the options it started")
      for flag, value in (("--max-failures", ["--max-failures", "2"]),
                          ("--scheduler", ["--scheduler", "fifo"]),
                          ("--num-samples", ["--num-samples", "3"]),
                          ("--max-concurrent", ["--max-concurrent", "1"]), ("--out", []))],
]


@pytest.mark.parametrize("args, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(args, expected, files, tmp_path, capsys):
    out = tmp_path / "out"
    for name, path in files.items():
        args = [a.replace("{" + name + "}", path) for a in args]
    args += ["--engine", "local", "--out", str(out)] if args[0] == "run" else ["--out", str(out)]
    assert main(args) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("splitray: error: ") and expected in err, err
    assert not out.exists()


def test_a_run_whose_loss_turns_nan_ends_diverged_and_keeps_its_rows(tmp_path, capsys):
    import pandas as pd

    out = tmp_path / "out"
    code = main(["run", QUICKSTART, *TINY, "--set", "train.lr=1e9", "--set", "clients.count=1",
                 "--engine", "local", "--quiet", "--out", str(out)])
    assert code == EXIT_DIVERGED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "run diverged: loss nan at epoch 0" in err, err
    [run_dir] = list(out.iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "diverged" and "loss nan" in manifest["reason"]
    steps = pd.read_parquet(run_dir / "steps.parquet")
    assert len(steps) >= 2 and np.isnan(steps["loss"].iloc[-1])
    assert np.isfinite(steps["loss"].iloc[:-1]).all()


def test_a_run_stopped_with_ctrl_c_ends_interrupted_and_says_how_to_resume(
        tmp_path, capsys, monkeypatch):
    from splitray.algorithms import ALGORITHMS

    def stopped_by_the_user(ctx) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(ALGORITHMS, "parallel_sl", stopped_by_the_user)
    out = tmp_path / "out"
    code = main(["run", QUICKSTART, *TINY, "--engine", "local", "--quiet", "--out", str(out)])
    assert code == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    [run_dir] = list(out.iterdir())
    assert err == (f"splitray: run interrupted; status 'interrupted' in {run_dir}; it wrote no "
                   "checkpoint to continue from (checkpoint.every_epochs)")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "Ctrl-C" in manifest["reason"]


def test_a_run_stopped_by_sigterm_after_a_checkpoint_says_how_to_resume_it(
        tmp_path, capsys, monkeypatch):
    from splitray.algorithms import ALGORITHMS, parallel_sl

    def stopped_after_an_epoch(ctx) -> None:
        for epoch, plan in enumerate(ctx.epochs()):
            if epoch == 1:  # the first epoch is checkpointed
                raise SystemExit(15)  # Ray's driver's answer to SIGTERM (`timeout`, `ray job stop`)
            parallel_sl.train_epoch(ctx, plan)

    monkeypatch.setitem(ALGORITHMS, "parallel_sl", stopped_after_an_epoch)
    out = tmp_path / "out"
    code = main(["run", QUICKSTART, *TINY, "--set", "schedule.phases=[{budget: 4, epochs: 2}]",
                 "--set", "checkpoint.every_epochs=1", "--engine", "local", "--quiet", "--out",
                 str(out)])
    assert code == EXIT_TERMINATED
    [run_dir] = list(out.iterdir())
    assert capsys.readouterr().err.strip() == (
        f"splitray: run interrupted; status 'interrupted' in {run_dir}; `splitray run --resume "
        f"{run_dir}` continues it from its last checkpoint")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["reason"] == "stopped by SIGTERM"
    assert main(["run", "--resume", str(run_dir), "--engine", "local", "--quiet"]) == 0
    # Nothing is left to continue: a second resume is bad input.
    assert main(["run", "--resume", str(run_dir), "--engine", "local"]) == EXIT_CONFIG_ERROR
    assert "the run has finished" in capsys.readouterr().err


def test_unusable_paths_and_empty_configs_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # where `splitray run quickstart` finds the file it meant
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    (tmp_path / "empty.yaml").write_text("# nothing but a comment\n")
    space = tmp_path / "space.yaml"
    space.write_text(f"base: {QUICKSTART}\nspace:\n  train.lr: {{grid: [0.1]}}\n")
    cases = [
        (["run", QUICKSTART, *TINY, "--engine", "local", "--out", str(a_file)],
         f"--out: '{a_file}' is not allowed; it is a file, not a directory"),
        (["run", QUICKSTART, *TINY, "--engine", "local", "--out", "/proc/splitray/runs"],
         "--out: '/proc/splitray/runs' is not allowed; it cannot hold output"),
        (["tune", str(space), "--out", str(a_file / "sweep")], f"--out: '{a_file / 'sweep'}'"),
        (["run", str(tmp_path / "empty.yaml")], "is empty; start from a file in experiments/"),
        (["run", "--resume", str(tmp_path / "nowhere")], "there is no such directory"),
        (["run", "quickstart"], "'quickstart' is not a file (did you mean "
                                "experiments/quickstart.yaml?)"),
    ]
    for args, expected in cases:
        assert main(args) == EXIT_CONFIG_ERROR, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "empty.yaml", "space.yaml"]


def test_a_ray_run_sent_sigterm_ends_with_splitrays_line_alone(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    from splitray.runtime.context import CHECKPOINT_FILE

    out = tmp_path / "out"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with (tmp_path / "stderr.txt").open("w") as stderr:
        # Its own session, as `ray job submit` starts a job: SIGTERM reaches the driver alone.
        proc = subprocess.Popen(
            [sys.executable, "-m", "splitray.cli", "run", QUICKSTART, *TINY, "--set",
             "schedule.phases=[{budget: 4, epochs: 50}]", "--set", "checkpoint.every_epochs=1",
             "--engine", "ray", "--quiet", "--out", str(out)],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 120
            while (not list(out.glob(f"*/{CHECKPOINT_FILE}")) and proc.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    printed = (tmp_path / "stderr.txt").read_text()
    [run_dir] = list(out.iterdir())
    assert code == EXIT_TERMINATED, printed[-2000:]
    # Ray's C++ crash handler used to print a stack dump for the signal first.
    assert printed.strip() == (
        f"splitray: run interrupted; status 'interrupted' in {run_dir}; `splitray run --resume "
        f"{run_dir}` continues it from its last checkpoint")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and manifest["reason"] == "stopped by SIGTERM"


@pytest.mark.parametrize("args, expected", [
    (["run", QUICKSTART, "--engine", "local", "--out", "ftp://host/runs"],
     "--out: 'ftp://host/runs' is not allowed; Unrecognized filesystem type in URI"),
    (["infer", "ftp://host/runs/run-1"], "is not allowed; Unrecognized filesystem type in URI"),
    (["plan", str(REPO / "experiments" / "edgesplit.yaml"), "--grid", "network.shared.up_bps=5e6",
      "--plot", "{tmp}/speedup.txt"], "--plot: '{tmp}/speedup.txt' is not allowed; the figure is "
     "a PNG"),
])
def test_bad_output_paths_are_one_line_errors(args, expected, tmp_path, capsys):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(args) == EXIT_CONFIG_ERROR
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitray: error: ") and expected.replace("{tmp}", str(tmp_path)) in err
    assert len(err.splitlines()) == 1 and not list(tmp_path.iterdir())


def test_a_sweep_does_not_go_into_a_folder_of_other_files(tmp_path, capsys):
    (tmp_path / "space.yaml").write_text(f"base: {QUICKSTART}\nspace:\n  train.lr: {{grid: [0.01]}}\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "quickstart-1").mkdir()
    assert main(["tune", str(tmp_path / "space.yaml"), "--out", str(tmp_path / "runs")]) == \
        EXIT_CONFIG_ERROR
    assert "it holds other files: choose a new or empty directory" in capsys.readouterr().err


def test_two_samples_a_batch_at_a_1x1_batch_norm_run(tmp_path):
    # The one-sample check refuses only what torch refuses: two values per channel train.
    assert main(["run", QUICKSTART, "--set", "model.split_layer=14", "--set",
                 "data.train_samples=8", "--set", "data.test_samples=8", "--set",
                 "schedule.phases=[{epochs: 1, budget: 4}]", "--engine", "local", "--out",
                 str(tmp_path), "--quiet"]) == 0
