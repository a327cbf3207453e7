"""Prune writes the model set Θ; `splitray infer` serves it with a budget per link; files with
pickled code are refused."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from splitray.cli import main
from splitray.config import ConfigError, load_config
from splitray.inference import format_inference, infer, load_model_set
from splitray.runtime import resume_experiment, run_experiment

SETTINGS = {
    "model.name": "tiny_cnn", "model.split_layer": 3, "data.name": "synthetic",
    "data.image_size": 16, "data.train_samples": 128, "data.test_samples": 64,
    "train.batch_size": 16, "train.algorithm": "prune", "clients.count": 2,
    "clients.devices": "[laptop_cpu, laptop_cpu]", "network.links": "[wifi5]",
    "schedule.phases": "[{budget: null, epochs: 2}, {budget: 8, epochs: 1}, {budget: 2, epochs: 1}]",
}


@pytest.fixture(scope="module")
def prune_run(tmp_path_factory) -> Path:
    cfg = load_config(overrides=[f"{k}={v}" for k, v in SETTINGS.items()])
    result = run_experiment(cfg, out_dir=str(tmp_path_factory.mktemp("runs")), engine="local",
                            progress=False)
    return Path(result.run_dir)


def test_prune_writes_one_model_per_budget_listed_in_the_manifest(prune_run):
    manifest = json.loads((prune_run / "manifest.json").read_text())
    listed = manifest["summary"]["models"]
    assert [m["budget"] for m in listed] == [16, 8, 2]  # null: all 16 channels at split 3
    assert [m["epoch"] for m in listed] == [1, 2, 3]    # the last epoch of each phase
    evals = pd.read_parquet(prune_run / "evals.parquet")
    for m in listed:
        saved = torch.load(prune_run / m["path"], weights_only=True)
        assert saved["budget"] == m["budget"] and len(saved["clients"]) == 2
        assert all(isinstance(t, torch.Tensor) for w in saved["clients"] + saved["servers"]
                   for t in w.values())
        assert m["test_accuracy"] == evals.loc[evals["epoch"] == m["epoch"], "test_accuracy"].item()


def test_a_model_loaded_from_disk_scores_what_it_scored_in_memory(prune_run):
    listed = json.loads((prune_run / "manifest.json").read_text())["summary"]["models"]
    table = infer(str(prune_run), engine="local", write=False)
    for m in listed:
        rows = table[table["budget"] == m["budget"]]
        accuracy = (rows["test_accuracy"] * rows["test_samples"]).sum() / rows["test_samples"].sum()
        assert accuracy == pytest.approx(m["test_accuracy"], abs=1e-12)
    # Fewer channels, fewer bytes per request.
    per_budget = table.groupby("budget")["bytes_per_sample"].first()
    assert per_budget[2] < per_budget[8] < per_budget[16]


def test_a_slower_link_gets_a_smaller_budget(prune_run, capsys):
    # Both on wifi5 (300 Mbit/s): everything fits 15 ms; at 0.5 Mbit/s only the smallest payload.
    fast = infer(str(prune_run), deadline_ms=15.0, engine="local", write=False)
    assert fast[fast["chosen"]]["budget"].tolist() == [16, 16]
    slow_link = "{kind: constant, up_bps: 5e5, down_bps: 5e6, latency_s: 0.002}"
    assert main(["infer", str(prune_run), "--deadline-ms", "15", "--engine", "local",
                 "--set", f"network.links=[wifi5, {slow_link}]"]) == 0
    out = capsys.readouterr().out
    assert "of requests within the deadline" in out
    table = pd.read_parquet(prune_run / "inference.parquet")
    chosen = table[table["chosen"]].set_index("client_id")["budget"]
    assert chosen[0] == 16 and chosen[1] == 2
    slow = table[table["client_id"] == 1].set_index("budget")
    # The simulated requests on a constant link take the predicted time.
    np.testing.assert_allclose(slow["sim_latency_ms_mean"], slow["predicted_latency_ms"], rtol=1e-9)
    assert slow.loc[2, "deadline_met_share"] == 1.0 and slow.loc[16, "deadline_met_share"] == 0.0
    # At 10 kbit/s no budget fits: the client gets the smallest, and the summary says so.
    no_fit = "{kind: constant, up_bps: 1e4, down_bps: 5e6, latency_s: 0.002}"
    table = infer(str(prune_run), deadline_ms=15.0, engine="local", write=False,
                  overrides=[f"network.links=[wifi5, {no_fit}]"])
    chosen = table[table["chosen"]].set_index("client_id")
    assert chosen.loc[1, "budget"] == 2 and chosen.loc[1, "predicted_latency_ms"] > 15.0
    assert "no budget fits the deadline for client(s) 1: each gets its smallest" in \
        format_inference(table, 15.0)
    # What would change the saved models is refused before anything is served.
    for override in ("model.split_layer=4", "clients.count=3", "compression.epsilon=0.5"):
        with pytest.raises(ConfigError, match=f"--set {override.split('=')[0]}: not allowed"):
            infer(str(prune_run), engine="local", write=False, overrides=[override])


def test_clients_on_one_medium_contend_in_the_simulation_as_the_prediction_assumes(prune_run):
    # Two clients alike, each sending its next request once the last is answered: on a medium
    # shared by processor sharing each gets half the capacity, as the predicted latency says.
    medium = "{kind: shared, up_bps: 1e6, down_bps: 1e6, latency_s: 0.002}"
    table = infer(str(prune_run), engine="local", write=False,
                  overrides=["network.links=[wifi5]", f"network.shared={medium}"])
    assert table["test_samples"].tolist() == [32] * len(table)
    np.testing.assert_allclose(table["sim_latency_ms_mean"], table["predicted_latency_ms"],
                               rtol=1e-9)


class _RunsCode:
    """A pickle that would run a command when loaded without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_files_with_pickled_code_are_refused_with_a_clear_error(prune_run, tmp_path):
    marker = tmp_path / "pwned"
    listed = json.loads((prune_run / "manifest.json").read_text())["summary"]["models"]
    model_file = prune_run / listed[0]["path"]
    original = model_file.read_bytes()
    try:
        model_file.write_bytes(pickle.dumps({"format": 1, "budget": _RunsCode(marker)}))
        with pytest.raises(ConfigError, match="is not a model file splitray can load safely"):
            load_model_set(str(prune_run))
    finally:
        model_file.write_bytes(original)
    checkpoint_run = tmp_path / "run"
    checkpoint_run.mkdir()
    (checkpoint_run / "config.yaml").write_text((prune_run / "config.yaml").read_text())
    torch.save({"format": 2, "payload": _RunsCode(marker)}, checkpoint_run / "checkpoint.pt")
    with pytest.raises(ConfigError, match="is not a checkpoint splitray can load safely"):
        resume_experiment(str(checkpoint_run), engine="local", progress=False)
    assert not marker.exists()


def test_prune_budgets_must_decrease_and_infer_needs_a_model_set(tmp_path):
    with pytest.raises(ConfigError, match=r"schedule.phases\[1\].budget: 8 is not allowed for "
                                          "prune"):
        load_config(overrides=["train.algorithm=prune",
                               "schedule.phases=[{budget: 4, epochs: 1}, {budget: 8, epochs: 1}]"])
    cfg = load_config(overrides=[f"{k}={v}" for k, v in SETTINGS.items()
                                 if k != "train.algorithm"] + ["schedule.phases=[{epochs: 1}]"])
    plain = run_experiment(cfg, out_dir=str(tmp_path), engine="local", progress=False)
    with pytest.raises(ConfigError, match="wrote no model set"):
        load_model_set(plain.run_dir)


def test_run_prints_the_model_set_one_readable_line_a_budget(tmp_path, capsys):
    # The summary's list of models printed as Python dicts before.
    config = tmp_path / "prune.yaml"
    config.write_text(load_config(overrides=[f"{k}={v}" for k, v in SETTINGS.items()]).to_yaml())
    assert main(["run", str(config), "--engine", "local", "--quiet", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    models = lines[lines.index("  models:") + 1:]
    assert [line.split("  test_accuracy")[0] for line in models] == [
        "    budget 16  path models/budget-16.pt  epoch 1",
        "    budget 8  path models/budget-8.pt  epoch 2",
        "    budget 2  path models/budget-2.pt  epoch 3"]
