"""`splitray tune`: the space file, its mapping onto Tune's domains, and real tiny sweeps on Ray."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from ray import tune  # noqa: E402
from ray.tune.search.sample import Categorical, Float, Integer, LogUniform, Uniform  # noqa: E402
from ray.tune.search.variant_generator import generate_variants  # noqa: E402

from splitray import tune as sweep  # noqa: E402
from splitray.analysis import load, summary_table  # noqa: E402
from splitray.cli import EXIT_FAILED, main  # noqa: E402
from splitray.config import ConfigError  # noqa: E402
from splitray.metrics import param_cells  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# tiny_cnn split at 3 sends 16 channels of 8x8 (16 px input); a trial reserves 1 CPU in all.
TINY_BASE = {
    "name": "tiny", "seed": 0,
    "model": {"name": "tiny_cnn", "split_layer": 3},
    "data": {"name": "synthetic", "num_classes": 4, "image_size": 16, "train_samples": 64,
             "test_samples": 32},
    "schedule": {"phases": [{"budget": 4, "epochs": 1}]},
    "train": {"batch_size": 16, "lr": 0.05},
    "clients": {"count": 2, "num_cpus": 0.25, "devices": ["laptop_cpu"]},
    "network": {"shared": "wifi6_shared"},
    "server": {"device": "server_cpu", "num_cpus": 0.25},
}


def write_space(tmp_path: Path, space: dict, name: str = "space.yaml", **top) -> Path:
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(TINY_BASE))
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"base": "base.yaml", **top, "space": space}, sort_keys=False))
    return path


# ---------------------------------------------------------------- the space file, no cluster


def test_each_kind_maps_to_its_tune_domain(tmp_path: Path) -> None:
    path = write_space(tmp_path, {
        "compression.epsilon": {"loguniform": [0.1, 10]},
        "compression.lam": {"uniform": [0.2, 0.8]},
        "model.split_layer": {"randint": [2, 5]},
        "network.shared": {"choice": ["wifi6_shared", {"kind": "shared", "up_bps": 8e6, "down_bps": 3e7}]},
        "compression.delta": {"grid": [0.001, 0.01, 0.1]},
    })
    space = sweep.load_space(path)
    ps = sweep.param_space(space)
    eps, lam, split, net = (ps[k] for k in ("compression.epsilon", "compression.lam",
                                            "model.split_layer", "network.shared"))
    assert isinstance(eps, Float) and isinstance(eps.get_sampler(), LogUniform)
    assert (eps.lower, eps.upper) == (0.1, 10.0)
    assert isinstance(lam, Float) and isinstance(lam.get_sampler(), Uniform)
    assert (lam.lower, lam.upper) == (0.2, 0.8)
    assert isinstance(split, Integer) and (split.lower, split.upper) == (2, 5)
    assert isinstance(net, Categorical) and net.categories == [
        "wifi6_shared", {"kind": "shared", "up_bps": 8e6, "down_bps": 3e7}]
    assert ps["compression.delta"] == tune.grid_search([0.001, 0.01, 0.1])

    rng = np.random.default_rng(0)
    e = np.array(eps.sample(size=400, random_state=rng))
    assert e.min() >= 0.1 and e.max() <= 10.0
    # Log-uniform: about half the samples fall below the geometric mean 1.0.
    assert 0.4 < (e < 1.0).mean() < 0.6
    s = set(split.sample(size=200, random_state=rng))
    assert s == {2, 3, 4}  # Tune's randint excludes the upper bound

    variants = [cfg for _, cfg in generate_variants(ps)]
    assert sorted(v["compression.delta"] for v in variants) == [0.001, 0.01, 0.1]
    for v in variants:
        config = sweep.trial_config(space.base, v)
        assert config.compression.delta == v["compression.delta"]
        assert config.model.split_layer in (2, 3, 4)


def test_space_file_base_set_indexed_keys_and_defaults(tmp_path: Path) -> None:
    path = write_space(tmp_path, {
        "schedule.phases": {"choice": [[{"budget": 2, "epochs": 1}, {"budget": 16, "epochs": 2}],
                                       [{"budget": 8, "epochs": 3}]]},
        "schedule.phases[0].budget": {"grid": [4, 8]},
    }, set={"data.train_samples": 32}, metric="test_loss")
    space = sweep.load_space(path)
    assert space.base["data"]["train_samples"] == 32
    assert space.base["model"]["name"] == "tiny_cnn"
    assert (space.metric, space.mode, space.num_samples) == ("test_loss", "min", 1)
    # The whole list is set before its first item, whatever the key order.
    cfg = sweep.trial_config(space.base, {"schedule.phases[0].budget": 8, "schedule.phases": [
        {"budget": 2, "epochs": 1}, {"budget": 16, "epochs": 2}]})
    assert [(p.budget, p.epochs) for p in cfg.schedule.phases] == [(8, 1), (16, 2)]
    assert sweep._max_epochs_bound(space) == 3
    # In `set` too, whatever the key order; a swept parent would replace a set child: refused.
    ordered = sweep.load_space(write_space(tmp_path, {"train.lr": {"grid": [0.1]}}, set={
        "schedule.phases[0].budget": 8, "schedule.phases": [{"budget": 4, "epochs": 1},
                                                             {"budget": 16, "epochs": 1}]}))
    assert [p["budget"] for p in ordered.base["schedule"]["phases"]] == [8, 16]
    with pytest.raises(ConfigError, match=r"schedule.phases: both in `set` \(as "
                                          r"schedule.phases\[0\].budget\) and in `space`"):
        sweep.load_space(write_space(tmp_path, {"schedule.phases": {"choice": [
            [{"budget": 2, "epochs": 1}]]}}, set={"schedule.phases[0].budget": 8}))


def test_the_example_space_is_valid() -> None:
    space = sweep.load_space(REPO / "tune_spaces" / "deprune_small.yaml")
    assert {"compression.epsilon", "compression.delta"} <= set(space.params)
    assert any(k.startswith("schedule.phases") for k in space.params)


@pytest.mark.parametrize(("space", "key", "words"), [
    ({"compression.epsilonn": {"grid": [1.0]}}, "compression.epsilonn", "unknown key"),
    ({"compression.lam": {"uniform": [0.5, 2.0]}}, "compression.lam", "<= 1"),
    ({"compression.delta": {"loguniform": [0, 0.1]}}, "compression.delta", "lower > 0"),
    ({"train.lr": {"uniform": [0.1, 0.01]}}, "train.lr", "lower < upper"),
    ({"model.split_layer": {"randint": [2.5, 4]}}, "model.split_layer", "integers"),
    ({"train.lr": {"normal": [0.1, 0.01]}}, "train.lr", "search kind"),
    ({"train.lr": 0.1}, "train.lr", "expected one of"),
    ({"clients.count": {"grid": []}}, "clients.count", "non-empty"),
    ({"clients.count": {"grid": [2, 0]}}, "clients.count", ">= 1"),
    ({"network.shared": {"choice": ["wifi6_shared", "dialup"]}}, "network.shared", "'dialup'"),
    ({"schedule.phases[3].budget": {"grid": [2]}}, "schedule.phases[3].budget", "out of range"),
    ({"schedule.phases": {"choice": [[{"budget": 2, "epochs": 0}]]}}, "schedule.phases",
     "epochs"),
    ({"compression.codec_up": {"choice": ["fp32", "fp4"]}}, "compression.codec_up", "'fp4'"),
    ({"schedule.phases[0].budget": {"grid": [4, 32]}}, "schedule.phases[0].budget",
     "<= 16, the channels at split 3 of tiny_cnn"),
    ({"model.split_layer": {"choice": [3, 9]}}, "model.split_layer", "split points 0..5"),
    ({"model.split_layer": {"randint": [2, 7]}}, "model.split_layer: 6", "split points 0..5"),
    ({"model.split_layer": {"randint": [1, 5]}}, "model.split_layer: 1", "<= 3"),
    ({"network.shared": {"choice": ["wifi6_shared", {"kind": "bogus"}]}}, "network.shared",
     "kind='bogus' is not allowed"),
    ({"network.shared": {"choice": [{"kind": "shared", "up_bps": 0, "down_bps": 1e6}]}},
     "network.shared", "up_bps=0.0 must be > 0 bit/s"),
    ({"clients.devices": {"choice": [["laptop_cpu"], [{"name": "x"}]]}}, "clients.devices",
     "device profile 'x' is unknown"),
    ({"server.device": {"choice": [{"name": "y"}]}}, "server.device",
     "device profile 'y' is unknown"),
])
def test_bad_space_fails_with_one_line_naming_the_key(tmp_path: Path, space: dict, key: str,
                                                      words: str) -> None:
    path = write_space(tmp_path, space)
    with pytest.raises(ConfigError) as err:
        sweep.load_space(path)
    msg = str(err.value)
    assert "\n" not in msg and key in msg and words in msg, msg


def test_values_valid_alone_but_not_together_fail_before_any_trial(tmp_path: Path) -> None:
    # At split 4 tiny_cnn has 32 channels, at split 3 16: budget 32 fits the base's split 4,
    # split 3 fits the base's budget 4, but a trial drawing both would fail.
    path = write_space(tmp_path, {"model.split_layer": {"choice": [4, 3]},
                                  "schedule.phases[0].budget": {"grid": [4, 32]}})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {**TINY_BASE, "model": {**TINY_BASE["model"], "split_layer": 4}}))
    with pytest.raises(ConfigError) as err:
        sweep.load_space(path)
    assert str(err.value).endswith(
        "space: model.split_layer=3, schedule.phases[0].budget=32 together give "
        "schedule.phases[0].budget: 32 is not allowed; must be <= 16, the channels at split 3 "
        "of tiny_cnn")


def test_values_invalid_together_fail_even_among_too_many_combinations(tmp_path: Path) -> None:
    # Three integer ranges make 16,384 combinations, too many to check all: every pair of keys'
    # candidates is checked instead (964 samples), which still finds split 3 with budget 32.
    path = write_space(tmp_path, {"model.split_layer": {"choice": [4, 3]},
                                  "schedule.phases[0].budget": {"grid": [4, 32]},
                                  "data.train_samples": {"randint": [64, 80]},
                                  "data.test_samples": {"randint": [32, 48]},
                                  "seed": {"randint": [0, 16]}})
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(
        {**TINY_BASE, "model": {**TINY_BASE["model"], "split_layer": 4}}))
    with pytest.raises(ConfigError, match=r"model.split_layer=3, schedule.phases\[0\].budget=32, "
                                          r"data.train_samples=64, data.test_samples=32, seed=0 "
                                          "together give"):
        sweep.load_space(path)


def test_the_best_trial_is_a_finished_one() -> None:
    # A summed metric (bytes, min) is lowest for trials that ran fewer epochs.
    trials = [sweep.TrialRecord("a", "finished", None, {}, 2, 1.3e5),
              sweep.TrialRecord("b", "stopped", None, {}, 1, 9.8e4),
              sweep.TrialRecord("c", "failed", "boom", {}, 1, 5.0e4),
              sweep.TrialRecord("d", "diverged", None, {}, 1, 1.0e4)]
    assert sweep._best(trials, "min") == "a"
    assert sweep._best(trials[1:], "min") is None


def test_repeats_over_a_grid_alone_are_refused(tmp_path: Path) -> None:
    space = sweep.load_space(write_space(tmp_path, {"train.lr": {"grid": [0.01, 0.02]}}))
    with pytest.raises(ConfigError, match="num_samples: 3 is not allowed over a grid alone"):
        sweep.run_sweep(space, tmp_path / "sweep", num_samples=3)


def test_a_sweep_interrupted_before_it_began_gives_no_resume_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # Ctrl-C while Ray starts, before settings.yaml is written

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    path = write_space(tmp_path, {"train.lr": {"grid": [0.01]}})
    assert main(["tune", str(path), "--out", str(tmp_path / "sweep")]) == 130
    assert capsys.readouterr().err.strip() == "splitray: sweep interrupted before it began"


def test_a_sweep_interrupted_before_tune_saved_its_state_says_to_run_it_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "sweep"

    def interrupted(space, out_dir, **kwargs):
        (out / "tune" / sweep.TUNE_EXPERIMENT).mkdir(parents=True)  # Tune's tuner.pkl, say
        (out / sweep.SWEEP_SETTINGS).write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_sweep", interrupted)
    path = write_space(tmp_path, {"train.lr": {"grid": [0.01]}})
    assert main(["tune", str(path), "--out", str(out)]) == 130
    assert capsys.readouterr().err.strip() == (
        f"splitray: sweep interrupted before Tune saved its first state; remove {out} and run the "
        "sweep again")
    assert main(["tune", "--resume", str(out)]) == 2
    assert "the sweep stopped before Tune saved its first state, so there is nothing to " \
           "continue" in capsys.readouterr().err


def test_links_are_built_for_each_candidate_as_the_run_builds_them(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    two = {"kind": "shared", "up_bps": 1e6, "down_bps": 1e6, "allocation": "shares",
           "shares": [0.5, 0.5]}
    path = write_space(tmp_path, {"clients.count": {"grid": [2, 3]}}, set={"network.shared": two})
    with pytest.raises(ConfigError) as err:
        sweep.load_space(path)
    assert str(err.value).endswith("clients.count: 3 gives network.shared: shares: 2 given for "
                                   "the 3 clients of the medium; give one share per client")
    own = write_space(tmp_path, {"network.links": {"choice": [["lte"], [{"kind": "constant"}]]}},
                      set={"network.shared": None})
    with pytest.raises(ConfigError, match=r"network.links: link spec of kind 'constant' is "
                                          r"missing required key '(up|down)_bps'"):
        sweep.load_space(own)
    assert main(["tune", str(own), "--out", str(tmp_path / "sweep")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # The planner divides a medium with `allocation: planned`: its capacity alone is checked.
    planned = write_space(tmp_path, {"train.lr": {"grid": [0.1]}},
                          set={"network.shared": {**two, "allocation": "planned"}})
    sweep.load_space(planned)


def test_bad_file_level_entries(tmp_path: Path) -> None:
    cases = [({"metric": "accuracy"}, "metric"), ({"mode": "maximize"}, "mode"),
             ({"num_samples": 0}, "num_samples"), ({"searcher": "x"}, "searcher"),
             ({"set": {"train.lr": -1.0}}, "train.lr")]
    for top, key in cases:
        path = write_space(tmp_path, {"train.lr": {"grid": [0.1]}}, **top)
        with pytest.raises(ConfigError, match=key):
            sweep.load_space(path)


def test_cli_rejects_a_bad_space_before_any_trial(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    path = write_space(tmp_path, {"compression.lam": {"grid": [0.5, 3.0]}})
    out = tmp_path / "sweep"
    assert main(["tune", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("splitray: error: ") and "compression.lam: 3.0" in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_trial_bundles_follow_the_trial_config() -> None:
    for count in (1, 3):
        cfg = sweep.trial_config(TINY_BASE, {"clients.count": count})
        bundles = sweep.trial_bundles(cfg, has_gpu=False)
        driver = {"CPU": sweep.TRIAL_DRIVER_CPUS}
        assert bundles == [driver, {"CPU": 0.25}] + [{"CPU": 0.25}] * count
    cfg = sweep.trial_config(TINY_BASE, {})
    assert sweep.trial_bundles(cfg, has_gpu=True)[1] == {"CPU": 0.25, "GPU": 1.0}
    cfg = sweep.trial_config(TINY_BASE, {"server.num_gpus": "0"})
    assert sweep.trial_bundles(cfg, has_gpu=True)[1] == {"CPU": 0.25}
    pgf = sweep.trial_resources(TINY_BASE, False, {"clients.count": 3})
    assert pgf.bundles == [{"CPU": sweep.TRIAL_DRIVER_CPUS}] + [{"CPU": 0.25}] * 4
    # Values valid one by one but not together: the trial gets the base's bundles and fails itself.
    bad = {"compression.enabled": False, "clients.count": 3}
    with pytest.raises(ConfigError, match="compression.enabled is false"):
        sweep.trial_config(TINY_BASE, bad)
    assert len(sweep.trial_resources(TINY_BASE, False, bad).bundles) == 4


def test_a_trial_of_many_clients_asks_for_pool_workers_not_a_bundle_per_client() -> None:
    driver = {"CPU": sweep.TRIAL_DRIVER_CPUS}
    many = sweep.trial_config(TINY_BASE, {"clients.count": 1000})
    # 1,000 clients x 0.25 CPUs do not fit 4.25 CPUs: the pool takes the CPUs left after the
    # driver and the server, (4.25 - 0.25 - 0.25) / 0.25 = 15 workers.
    assert sweep.trial_bundles(many, False, cluster_cpus=4.25) == \
        [driver, {"CPU": 0.25}] + [{"CPU": 0.25}] * 15
    pinned = sweep.trial_config(TINY_BASE, {"clients.count": 1000, "engine.pool_workers": 2})
    assert len(sweep.trial_bundles(pinned, False, cluster_cpus=64)) == 4


def test_a_trial_too_big_for_the_cluster_fails_before_any_trial(tmp_path: Path) -> None:
    space = sweep.load_space(write_space(tmp_path, {"clients.count": {"grid": [2, 7]}},
                                         set={"engine.clients": "actors"}))
    sweep._check_fits(space, {"CPU": 4.0}, has_gpu=False)  # 0.25 + 0.25 + 7 x 0.25 = 2.25
    with pytest.raises(ConfigError, match=r"needs 2.25 CPUs .* 7 clients x 0.25\) but the Ray "
                                          r"cluster has 2"):
        sweep._check_fits(space, {"CPU": 2.0}, has_gpu=False)
    # With engine.clients auto the 7 clients that do not fit as actors share a worker pool.
    auto = sweep.load_space(write_space(tmp_path, {"clients.count": {"grid": [2, 7]}}))
    sweep._check_fits(auto, {"CPU": 2.0}, has_gpu=False)


def test_a_trial_too_big_only_with_three_keys_together_fails_among_too_many_combinations(
        tmp_path: Path) -> None:
    # 2 x 2 x 2 x 8 x 8 x 9 combinations: too many to check all, and no pair outgrows 2 CPUs;
    # server 0.75 with 3 clients x 0.5 does (0.25 + 0.75 + 1.5 = 2.5).
    space = sweep.load_space(write_space(tmp_path, {
        "server.num_cpus": {"choice": [0.25, 0.75]}, "clients.num_cpus": {"choice": [0.25, 0.5]},
        "clients.count": {"choice": [2, 3]}, "train.lr": {"grid": [0.01 * k for k in range(1, 9)]},
        "compression.epsilon": {"grid": [0.1 * k for k in range(1, 9)]},
        "seed": {"grid": list(range(9))}}, set={"engine.clients": "actors"}))
    with pytest.raises(ConfigError, match=r"needs 2.5 CPUs \(driver 0.25 \+ server 0.75 \+ 3 "
                                          r"clients x 0.5\)"):
        sweep._check_fits(space, {"CPU": 2.0}, has_gpu=False)


def test_a_pool_trial_too_big_for_the_cluster_counts_its_pool_workers(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"base": str(REPO / "experiments" / "many_clients.yaml"),
                                    "set": {"server.num_cpus": 4},
                                    "space": {"train.lr": {"grid": [0.02]}}}))
    space = sweep.load_space(path)
    with pytest.raises(ConfigError) as err:
        sweep._check_fits(space, {"CPU": 2.0}, has_gpu=False)
    assert "needs 5.25 CPUs (driver 0.25 + server 4 + 1 pool worker x 1 for 1000 clients) " \
           "but the Ray cluster has 2;" in str(err.value)


def _as_tune_trial(monkeypatch, trial_id: str, on_report=None) -> list[dict]:
    """Make run_trial believe Tune runs it as `trial_id`; returns the list its reports go to
    (`on_report(metrics)` is called on each, after it is kept)."""
    reported: list[dict] = []

    class Context:
        def get_trial_id(self) -> str:
            return trial_id

    def report(metrics: dict, checkpoint: object = None) -> None:
        reported.append(metrics)
        if on_report is not None:
            on_report(metrics)

    monkeypatch.setattr(tune, "get_context", Context)
    monkeypatch.setattr(tune, "report", report)
    return reported


def test_a_trial_that_finished_before_tune_saved_it_is_reported_again_not_rerun(
        tmp_path: Path, monkeypatch) -> None:
    # A resumed sweep hands Tune's unfinished trials back to run_trial; one whose run directory
    # says finished reports its rows again. Trials run where the sweep was started.
    from splitray.config import config_from_dict
    from splitray.runtime import run_experiment

    trials = tmp_path / "trials"
    run_experiment(config_from_dict(TINY_BASE), out_dir=None, engine="local", progress=False,
                   run_dir=str(trials / "t0"))
    manifest = json.loads((trials / "t0" / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    reported = _as_tune_trial(monkeypatch, "t0")
    monkeypatch.chdir(tmp_path / "trials")  # Tune's trial directory, say
    sweep.run_trial({}, TINY_BASE, str(trials), "test_accuracy", cwd=str(tmp_path))
    assert Path.cwd() == tmp_path
    assert json.loads((trials / "t0" / "manifest.json").read_text()) == manifest
    evals = pd.read_parquet(trials / "t0" / "evals.parquet")
    assert [r["test_accuracy"] for r in reported] == evals.sort_values("epoch")[
        "test_accuracy"].tolist()


def test_param_cells_and_error_lines() -> None:
    trials = [sweep.TrialRecord("a", "finished", None, {"x": 1, "y": [1, 2], "z": "lte"}, 1, 0.5),
              sweep.TrialRecord("b", "failed", "E", {"x": 2.5, "y": [3], "z": {"mbps": 5}}, 0,
                                None)]
    cols = param_cells({t.trial_id: t.params for t in trials}, ["x", "y", "z"])
    assert cols["a"] == {"param.x": 1, "param.y": "[1, 2]", "param.z": "lte"}
    assert cols["b"] == {"param.x": 2.5, "param.y": "[3]", "param.z": '{"mbps": 5}'}

    class Wrapped(Exception):
        def __init__(self, cause: BaseException) -> None:
            super().__init__("ray::ImplicitFunc.train()\n  File ...")
            self.cause = cause

    assert sweep._error_line(Wrapped(ConfigError("a.b: 3 is not allowed\nmore"))) == \
        "ConfigError: a.b: 3 is not allowed"
    assert sweep._error_line(None) is None


# ---------------------------------------------------------------- real sweeps on one Ray instance




def _probe_trial(config: dict) -> None:
    """Start actors the way the engine does and report whether they share the trial's group."""
    import ray

    @ray.remote
    class Probe:
        def group(self) -> str | None:
            return ray.get_runtime_context().get_placement_group_id()

    cfg = sweep.trial_config(TINY_BASE, config)
    mine = ray.get_runtime_context().get_placement_group_id()
    actors = [Probe.options(num_cpus=cfg.server.num_cpus).remote()]
    actors += [Probe.options(num_cpus=cfg.clients.num_cpus).remote()
               for _ in range(cfg.clients.count)]
    groups = ray.get([a.group.remote() for a in actors])
    bundles = ray.util.placement_group_table()[mine]["bundles"]
    tune.report({"in_group": float(mine is not None and all(g == mine for g in groups)),
                 "bundles": float(len(bundles))})


def test_actors_land_in_the_trial_placement_group(ray_cluster, tmp_path: Path) -> None:
    import sys

    ray_cluster.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    trainable = tune.with_resources(
        _probe_trial, lambda config: sweep.trial_resources(TINY_BASE, False, config))
    results = tune.Tuner(
        trainable, param_space={"clients.count": tune.grid_search([1, 3])},
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
    ).fit()
    got = sorted((r.config["clients.count"], r.metrics["in_group"], r.metrics["bundles"])
                 for r in results)
    # driver + server + one bundle per client, and every actor inside the trial's group
    assert got == [(1, 1.0, 3.0), (3, 1.0, 5.0)]


def test_tiny_sweep_combines_trials_and_reports_a_failed_one(
        ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # One test sample for two clients: a valid config that only the engine's prepare() rejects
    # (it needs the data), so those trials fail and the sweep goes on.
    path = write_space(tmp_path, {"schedule.phases[0].budget": {"grid": [4, 8]},
                                  "data.test_samples": {"grid": [32, 1]},
                                  "compression.epsilon": {"choice": [0.5]}})
    out = tmp_path / "sweep"
    assert main(["tune", str(path), "--out", str(out)]) == EXIT_FAILED  # any failed trial
    printed = capsys.readouterr().out

    meta = json.loads((out / "sweep.json").read_text())
    assert meta["params"] == ["schedule.phases[0].budget", "data.test_samples",
                              "compression.epsilon"]
    trials = {(t["params"]["schedule.phases[0].budget"], t["params"]["data.test_samples"]): t
              for t in meta["trials"]}
    assert {k: t["status"] for k, t in trials.items()} == {
        (4, 32): "finished", (8, 32): "finished", (4, 1): "failed", (8, 1): "failed"}
    error = trials[4, 1]["error"]
    assert error.startswith("ConfigError: data.test_samples: 1 test samples") and "\n" not in error
    assert f"failed {trials[4, 1]['trial_id']}: ConfigError" in printed
    assert "best (max final test_accuracy)" in printed

    evals = pd.read_parquet(out / "evals.parquet")
    steps = pd.read_parquet(out / "steps.parquet")
    good = {trials[4, 32]["trial_id"]: 4, trials[8, 32]["trial_id"]: 8}
    per_client = pd.read_parquet(out / "client_evals.parquet")
    assert set(evals["trial_id"]) == set(good) == set(steps["trial_id"]) == set(
        per_client["trial_id"])
    assert len(evals) == 2  # one epoch per trial
    for tid, budget in good.items():
        e = evals[evals["trial_id"] == tid]
        s = steps[steps["trial_id"] == tid]
        assert (e["param.schedule.phases[0].budget"] == budget).all()
        assert (e["param.compression.epsilon"] == 0.5).all()
        assert (s["budget"] == budget).all()
        c = per_client[per_client["trial_id"] == tid]
        assert (c["param.schedule.phases[0].budget"] == budget).all()
        assert (c["test_accuracy"] * c["test_samples"]).sum() / c["test_samples"].sum() == \
            pytest.approx(e["test_accuracy"].iloc[0])
        assert (s["param.schedule.phases[0].budget"] == budget).all()
        assert e["cum_bytes_up"].iloc[0] == s["bytes_up"].sum()
        assert 0.0 <= e["test_accuracy"].iloc[0] <= 1.0
        manifest = json.loads((out / "trials" / tid / "manifest.json").read_text())
        assert manifest["status"] == "finished"
    # same steps, twice the channels: the budget-8 trial sends more bytes up
    up = {b: steps[steps["trial_id"] == t]["bytes_up"].sum() for t, b in good.items()}
    assert up[8] > up[4]

    summary = summary_table(load(str(out)))
    assert sorted(summary["trial_id"]) == sorted(good)
    assert "param.schedule.phases[0].budget" in summary.columns

    assert main(["analyze", str(out), "--target-accuracy", "0.2", "--out",
                 str(tmp_path / "an")]) == 0
    printed = capsys.readouterr().out
    summary_part, _, by_device_part = printed.partition("## Test accuracy by device")
    for part in (summary_part, by_device_part):  # one row per trial in each (one device kind)
        table_rows = [ln for ln in part.splitlines() if ln.startswith("| ") and "_0000" in ln]
        assert sorted(ln.split(" | ")[0][2:].strip() for ln in table_rows) == sorted(good)
    assert "bytes_to_target" in printed
    assert f"summary_csv: {tmp_path / 'an' / 'summary.csv'}" in printed
    assert (tmp_path / "an" / "accuracy_vs_bytes.png").stat().st_size > 0


def test_analyze_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert main(["analyze", str(tmp_path), "--target-accuracy", "40"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("splitray: error: results directory not found")
    assert err[1].startswith("splitray: error: --target-accuracy: 40.0 is not allowed")


def test_a_trial_ended_at_its_last_report_has_finished_its_run(ray_cluster, tmp_path: Path,
                                                               monkeypatch) -> None:
    # ASHA's last rung is the last epoch: Tune ends the trial (SystemExit) at that report, so the
    # run must have written its manifest and summary before it; they said "failed", empty.
    base = {**TINY_BASE, "schedule": {"phases": [{"budget": 4, "epochs": 2}]}}

    def end_at_the_last_epoch(metrics: dict) -> None:
        if metrics["epoch"] == 1:
            raise SystemExit(0)

    reported = _as_tune_trial(monkeypatch, "t0", end_at_the_last_epoch)
    with pytest.raises(SystemExit):
        sweep.run_trial({}, base, str(tmp_path / "trials"), "test_accuracy", cwd=str(tmp_path))
    manifest = json.loads((tmp_path / "trials" / "t0" / "manifest.json").read_text())
    assert manifest["status"] == "finished" and [r["epoch"] for r in reported] == [0, 1]


def test_a_retried_trial_with_no_epoch_left_reports_its_last_row(tmp_path: Path,
                                                                  monkeypatch) -> None:
    # Stopped between its last checkpoint and its manifest, a trial resumes with no epoch to
    # run: it reports the run's last row, not NaN.
    from splitray import runtime
    from splitray.config import config_from_dict
    from splitray.runtime import run_experiment

    base = {**TINY_BASE, "checkpoint": {"every_epochs": 1}}
    trials = tmp_path / "trials"
    run_experiment(config_from_dict(base), out_dir=None, engine="local", progress=False,
                   run_dir=str(trials / "t0"))
    manifest = trials / "t0" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "status": "running"}))
    reported = _as_tune_trial(monkeypatch, "t0")
    monkeypatch.setattr(runtime, "resume_experiment", lambda *args, **kwargs: None)
    sweep.run_trial({}, base, str(trials), "test_accuracy", cwd=str(tmp_path))
    last = pd.read_parquet(trials / "t0" / "evals.parquet").sort_values("epoch").iloc[-1]
    assert [r["test_accuracy"] for r in reported] == [last["test_accuracy"]]


def test_asha_stops_the_worse_trial_and_keeps_its_rows(ray_cluster, tmp_path: Path) -> None:
    # One trial at a time, metric cum_bytes_up (min): at rung 1 the second, 4x bigger budget loses.
    path = write_space(tmp_path, {"schedule.phases[0].budget": {"grid": [4, 16]}},
                       set={"schedule.phases[0].epochs": 2}, metric="cum_bytes_up")
    space = sweep.load_space(path)
    result = sweep.run_sweep(space, tmp_path / "sweep", scheduler="asha", max_concurrent=1,
                             verbose=0)
    by_budget = {t.params["schedule.phases[0].budget"]: t for t in result.trials}
    assert (by_budget[4].status, by_budget[4].epochs) == ("finished", 2)
    assert (by_budget[16].status, by_budget[16].epochs) == ("stopped", 1)
    for budget, status in ((4, "finished"), (16, "stopped")):
        manifest = tmp_path / "sweep" / "trials" / by_budget[budget].trial_id / "manifest.json"
        assert json.loads(manifest.read_text())["status"] == status
    evals = pd.read_parquet(tmp_path / "sweep" / "evals.parquet")
    assert evals.groupby("trial_id").size().to_dict() == {by_budget[4].trial_id: 2,
                                                           by_budget[16].trial_id: 1}
    assert result.best_trial_id == by_budget[4].trial_id
    with pytest.raises(ConfigError, match="already holds a sweep"):
        sweep.run_sweep(space, tmp_path / "sweep")


def test_a_diverging_trial_is_recorded_as_diverged_and_the_sweep_goes_on(
        ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # Two swept keys: Tune then requires the metric in a trial's last result, and a trial that
    # diverged before its first evaluation had reported none (the sweep crashed).
    path = write_space(tmp_path, {"train.lr": {"grid": [0.05, 1e9]}, "seed": {"grid": [0]}})
    out = tmp_path / "sweep"
    assert main(["tune", str(path), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "Trial status" not in printed and "sweep: 2 trials" in printed  # --quiet: no tables
    meta = json.loads((out / "sweep.json").read_text())
    status = {t["params"]["train.lr"]: t["status"] for t in meta["trials"]}
    assert status == {0.05: "finished", 1e9: "diverged"}
    assert "1 diverged" in printed
    steps = pd.read_parquet(out / "steps.parquet")
    assert steps.groupby("param.train.lr")["loss"].apply(lambda x: x.isna().any()).to_dict() == \
        {0.05: False, 1e9: True}
    # No trial failed, so there is nothing for --resume to continue: bad input, sweep.json kept.
    assert main(["tune", "--resume", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"splitray: error: --resume: {str(out)!r} is not allowed; the sweep has finished (no "
        "trial failed, sweep.json): there is nothing to continue")
    assert json.loads((out / "sweep.json").read_text()) == meta


class _StoppedTuner:
    """A Tuner whose fit is stopped as a user stops a sweep: Ctrl-C, or SIGTERM to this process."""

    def __init__(self, how: str) -> None:
        self.how, self.sigint_handler_off = how, None

    def fit(self) -> None:
        import signal
        import time

        self.sigint_handler_off = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        if self.how == "ctrl-c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)  # the handler interrupts this at once
        raise AssertionError("SIGTERM did not stop the sweep")


@pytest.mark.parametrize("how, code", [("ctrl-c", 130), ("sigterm", 143)])
def test_ctrl_c_or_sigterm_stops_a_sweep_with_the_signals_exit_code(
        tmp_path: Path, how: str, code: int) -> None:
    import signal

    space = sweep.load_space(write_space(tmp_path, {"train.lr": {"grid": [0.01]}}))
    handler_before = signal.getsignal(signal.SIGTERM)
    tuner = _StoppedTuner(how)
    (tmp_path / "settings.yaml").write_text("scheduler: fifo\nattempts_wall_time_s: [2.5]\n")
    with pytest.raises(sweep.SweepInterrupted) as stopped:
        sweep._fit(tuner, space, tmp_path, "fifo")
    assert stopped.value.exit_code == code and stopped.value.out_dir == tmp_path
    # The attempt's wall seconds join the earlier attempts', for the resume's sweep.json.
    settings = yaml.safe_load((tmp_path / "settings.yaml").read_text())
    assert settings["scheduler"] == "fifo"
    assert settings["attempts_wall_time_s"][0] == 2.5
    assert len(settings["attempts_wall_time_s"]) == 2
    assert 0 <= settings["attempts_wall_time_s"][1] < 60
    # Tune's own Ctrl-C handler is off while the trials run (it would return as if finished),
    # and afterwards this process's handlers and environment are as they were.
    assert tuner.sigint_handler_off == "1"
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ
    assert signal.getsignal(signal.SIGTERM) is handler_before


def _epochs_checkpointed(trials_dir: Path) -> int:
    import torch

    done = 0
    for checkpoint in trials_dir.glob("*/checkpoint.pt"):
        try:
            done = max(done, torch.load(checkpoint, weights_only=True)["epochs_done"])
        except Exception:  # replaced while we read it
            pass
    return done


def test_a_sweep_stopped_by_sigterm_says_how_to_resume_and_resumes_without_duplicate_rows(
        tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    epochs, clients, steps_per_epoch = 6, 2, 4
    path = write_space(tmp_path, {"schedule.phases[0].budget": {"grid": [4, 8]}},
                       set={"schedule.phases[0].epochs": epochs, "data.train_samples": 128,
                            "checkpoint.every_epochs": 1})
    out = tmp_path / "sweep"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "splitray.cli", "tune"]
    # One trial at a time: when the driver dies, one trial is part-way, the other not started.
    with (tmp_path / "stderr.txt").open("w") as stderr:
        started = time.monotonic()
        proc = subprocess.Popen(
            [*command, str(path), "--out", str(out), "--max-concurrent", "1"], env=env,
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 240
        while (_epochs_checkpointed(out / "trials") < 2 and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        # As `timeout` does: the driver and the Ray processes it started all get the signal.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            code = proc.wait(timeout=60)
        finally:
            try:  # whatever of it is left
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert not (out / "sweep.json").exists(), "the sweep ended before it could be stopped"
    printed = (tmp_path / "stderr.txt").read_text()
    assert code == 128 + signal.SIGTERM, printed[-2000:]
    assert f"splitray: sweep interrupted; `splitray tune --resume {out}` continues it" in printed
    assert "SIGTERM received" not in printed  # Ray's C++ crash handler stays quiet
    stopped_after_s = time.monotonic() - started
    interrupted_s = yaml.safe_load((out / "settings.yaml").read_text())["attempts_wall_time_s"]
    assert len(interrupted_s) == 1 and 0 < interrupted_s[0] < stopped_after_s

    resumed = subprocess.run([*command, "--resume", str(out)], env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    meta = json.loads((out / "sweep.json").read_text())
    assert [t["status"] for t in meta["trials"]] == ["finished", "finished"]
    # The sweep's wall time counts the interrupted attempt too, not only the resume.
    assert meta["attempts_wall_time_s"][0] == interrupted_s[0]
    assert len(meta["attempts_wall_time_s"]) == 2
    assert meta["wall_time_s"] == pytest.approx(sum(meta["attempts_wall_time_s"]))
    steps = pd.read_parquet(out / "steps.parquet")
    key = ["trial_id", "client_id", "epoch", "step"]
    assert not steps.duplicated(key).any()
    assert steps.groupby("trial_id").size().tolist() == [epochs * clients * steps_per_epoch] * 2
    evals = pd.read_parquet(out / "evals.parquet")
    assert evals.groupby("trial_id")["epoch"].apply(sorted).tolist() == [list(range(epochs))] * 2
    manifests = [json.loads((out / "trials" / t["trial_id"] / "manifest.json").read_text())
                 for t in meta["trials"]]
    assert sum(len(m.get("resumes", [])) for m in manifests) >= 1
