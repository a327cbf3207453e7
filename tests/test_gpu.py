"""The server actor on a GPU (skipped where torch sees none): every algorithm gives the CPU
trainer's tables up to float rounding, the manifest says where the server ran, and its checkpoint
holds CPU tensors only, so that a machine without a GPU loads it."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch
from fused import algorithm_config, run_fused

from splitray.algorithms import ALGORITHMS
from splitray.roles import map_leaves
from splitray.runtime import run_experiment
from splitray.runtime.context import CHECKPOINT_FILE

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module", autouse=True)
def ray_with_a_gpu():
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _config(algorithm: str, **overrides):
    return algorithm_config(algorithm, {
        "model.name": "tiny_cnn", "model.split_layer": 3, "data.name": "synthetic",
        "data.image_size": 16, "data.train_samples": 96, "data.test_samples": 48,
        "train.batch_size": 8, "train.steps_per_epoch": 2,
        "clients.count": 3, "clients.num_cpus": 0.5, "server.num_cpus": 0.5,
        "server.num_gpus": 1, "clients.devices": "[raspberry_pi_4, laptop_cpu]",
        "network.links": "[wifi5, lte]", "schedule.phases": "[{budget: 4, epochs: 2}]",
    }, **overrides)


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_a_server_on_the_gpu_gives_the_cpu_trainers_tables(algorithm, tmp_path):
    cfg = _config(algorithm)
    on_cpu = run_fused(cfg, out_dir=str(tmp_path / "cpu"))
    on_gpu = run_experiment(cfg, out_dir=str(tmp_path / "gpu"), engine="ray", progress=False)
    with open(os.path.join(on_gpu.run_dir, "manifest.json")) as f:
        assert json.load(f)["server_device"].startswith("cuda")
    # Simulated time and bytes come from FLOP counts and payload sizes: the same on any device.
    exact = [c for c in on_cpu.steps.columns
             if c.startswith(("sim_", "bytes_", "client_")) or c in ("round", "step", "dropped")]
    pd.testing.assert_frame_equal(on_gpu.steps[exact], on_cpu.steps[exact])
    # The GPU sums in another order (and cuDNN may use TF32): losses agree to rounding.
    np.testing.assert_allclose(on_gpu.steps["loss"], on_cpu.steps["loss"], rtol=1e-2, atol=1e-3)


def test_a_gpu_servers_checkpoint_holds_cpu_tensors_and_its_generator(tmp_path):
    cfg = _config("parallel_sl", **{"checkpoint.every_epochs": 1})
    result = run_experiment(cfg, out_dir=str(tmp_path), engine="ray", progress=False)
    checkpoint = torch.load(os.path.join(result.run_dir, CHECKPOINT_FILE), weights_only=True)
    devices = set()
    map_leaves(checkpoint, torch.Tensor, lambda t: devices.add(t.device.type))
    assert devices == {"cpu"}
    assert checkpoint["server"]["cuda_rng"].dtype == torch.uint8
