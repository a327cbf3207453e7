"""Every training scheme under splitray/algorithms/, run on the fused local engine."""

from __future__ import annotations

import pytest
import torch

from splitray.algorithms import ALGORITHMS
from splitray.config import load_config
from splitray.roles import ClientRole, ServerRole
from splitray.runtime import run_experiment


def tiny(**overrides) -> object:
    base = {
        "model.name": "tiny_cnn", "model.split_layer": 3,
        "data.name": "synthetic", "data.image_size": 16, "data.train_samples": 64,
        "data.test_samples": 32, "train.batch_size": 8, "train.lr": 0.05,
        "clients.count": 2, "clients.devices": "[laptop_cpu]", "network.links": "[wifi5]",
        "schedule.phases": "[{budget: 2, epochs: 2}]", "train.steps_per_epoch": 2,
    }
    base.update(overrides)
    return load_config(overrides=[f"{k}={v}" for k, v in base.items()])


def _bn_means(role) -> torch.Tensor:
    return torch.cat([m.running_mean.clone() for module in role.modules()
                      for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)])


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_training_after_an_evaluation_runs_every_module_in_train_mode(algorithm, monkeypatch):
    """Each client and server pass with gradients on sees all of the role's modules training,
    and the compressor's BatchNorm statistics move, also after the first evaluation."""
    events: list[tuple[str, bool, bool, bool]] = []  # (role, grad on, all training, BN moved)

    def watch(role_cls, method, name):
        original = getattr(role_cls, method)

        def wrapped(self, *args):
            training = all(m.training for module in self.modules() for m in module.modules())
            before = _bn_means(self) if name == "client" else None
            out = original(self, *args)
            moved = before is not None and not torch.equal(before, _bn_means(self))
            events.append((name, torch.is_grad_enabled(), training, moved))
            return out

        monkeypatch.setattr(role_cls, method, wrapped)

    watch(ClientRole, "_encode", "client")
    watch(ServerRole, "_decode", "server")
    run_experiment(tiny(**{"train.algorithm": algorithm}), out_dir=None, engine="local",
                   progress=False)
    first_eval = next(i for i, e in enumerate(events) if not e[1])
    after = [e for e in events[first_eval:] if e[1]]
    assert {e[0] for e in after} == {"client", "server"}, "no training after the evaluation"
    assert all(e[2] for e in after), "a module was in eval mode during training"
    assert all(e[3] for e in after if e[0] == "client"), "compressor BN statistics did not move"
    assert all(not e[2] for e in events if not e[1]), "evaluation ran in train mode"
