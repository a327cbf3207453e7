"""The split client/server step equals one graph trained on totalLoss = Loss + ε·pruneLoss."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from splitray.compression import prune_loss
from splitray.config import config_from_dict, load_config
from splitray.data import load_dataset
from splitray.roles import (
    ClientRole,
    ServerRole,
    client_generator,
    client_seed,
    server_seed,
)


def _cfg(**overrides):
    base = {"model.name": "tiny_cnn", "model.split_layer": 3, "train.batch_size": 8,
            "train.momentum": 0.0, "train.weight_decay": 0.0, "train.lr": 0.1,
            "compression.epsilon": 0.5, "compression.delta": 0.01, "compression.lam": 0.7}
    base.update(overrides)
    return load_config(overrides=[f"{k}={v}" for k, v in base.items()])


def test_split_step_matches_single_graph_total_loss():
    cfg = _cfg()
    data = load_dataset("synthetic", num_samples=32, image_size=16, seed=0)
    client = ClientRole(0, cfg, data, data, data.num_classes)
    server = ServerRole(cfg, tuple(data.images.shape[1:]), data.num_classes)
    budget = 5
    client.begin_epoch(0, cfg.train.lr, budget)
    # A single-graph twin with the same initial weights and the same batch.
    parts = [copy.deepcopy(m) for m in (client.client_part, client.compressor,
                                        server.parts[0].decompressor, server.parts[0].server_part)]
    idx = client._order[:8]
    x, y = data.batch(idx)

    payload, info = client.forward(0)
    grad, sinfo = server.step(payload, 0, 0)
    binfo = client.backward(grad)

    c_part, comp, decomp, s_part = parts
    sent, channels = comp(c_part(x), budget)
    logits = s_part(decomp(sent, channels))
    task = F.cross_entropy(logits, y)
    p_loss = prune_loss(comp.filter_values(), budget, 0.01, 0.7)
    (task + 0.5 * p_loss).backward()
    assert abs(sinfo.loss - float(task.detach())) < 1e-6
    assert abs(binfo.prune_loss - float(p_loss.detach())) < 1e-6
    with torch.no_grad():
        server_part = server.parts[0]
        for twin, real in zip(parts, (client.client_part, client.compressor,
                                      server_part.decompressor, server_part.server_part),
                              strict=True):
            for (name, p_twin), p_real in zip(twin.named_parameters(), real.parameters(),
                                              strict=True):
                expected = p_twin - 0.1 * p_twin.grad  # plain SGD step
                torch.testing.assert_close(p_real, expected, rtol=1e-5, atol=1e-6, msg=name)
    assert info.bytes_up == payload.nbytes and sinfo.bytes_down == grad.nbytes


def test_uncompressed_payload_carries_the_whole_activation():
    cfg = _cfg(**{"compression.enabled": "false"})
    data = load_dataset("synthetic", num_samples=16, image_size=16, seed=0)
    client = ClientRole(0, cfg, data, data, data.num_classes)
    client.begin_epoch(0, cfg.train.lr, None)
    payload, info = client.forward(0)
    assert payload.channel_indices is None
    assert payload.data.shape == (8, *client.act_shape)
    assert info.flops > 0 and client.bwd_flops_per_sample > 0


def _record_modes(role, log: list) -> None:
    """Record (module kind, training flag) every time a submodule of the role runs forward."""
    for module in role.modules():
        for sub in module.modules():
            sub.register_forward_pre_hook(
                lambda m, _args: log.append((type(m).__name__, m.training)))


def _bn_stats(module) -> torch.Tensor:
    return torch.cat([m.running_mean.clone() for m in module.modules()
                      if isinstance(m, torch.nn.BatchNorm2d)])


def test_train_after_evaluate_puts_every_module_back_in_train_mode():
    cfg = _cfg(**{"model.name": "vgg11_bn", "model.split_layer": 2, "data.image_size": 32})
    data = load_dataset("synthetic", num_samples=32, image_size=32, seed=0)
    client = ClientRole(0, cfg, data, data, data.num_classes)
    server = ServerRole(cfg, tuple(data.images.shape[1:]), data.num_classes)
    assert client.compressor in client.modules() and server.parts[0].decompressor in server.modules()
    client.begin_epoch(0, cfg.train.lr, 4)
    client.backward(server.step(client.forward(0)[0], 0, 0)[0])
    server.evaluate(client.encode_eval(0), 0)  # leaves both roles in eval mode

    log: list = []
    _record_modes(client, log)
    _record_modes(server, log)
    before = _bn_stats(client.compressor)
    payload, _ = client.forward(1)
    grad, _ = server.step(payload, 0, 1)
    client.backward(grad)
    assert log and all(training for _, training in log), sorted(set(log))
    assert {"Compressor", "Decompressor"} <= {kind for kind, _ in log}
    assert not torch.equal(before, _bn_stats(client.compressor)), "compressor BN stats frozen"


def test_a_dropped_step_leaves_the_client_as_if_its_forward_never_ran():
    # A Ray engine may run a forward ahead of the server and then see its step dropped (the
    # client went offline); the fused trainer never runs that forward. Both must go on alike.
    cfg = _cfg(**{"model.name": "vgg11_bn", "model.split_layer": 2, "data.image_size": 32,
                  "data.augment": "true"})
    data = load_dataset("synthetic", num_samples=32, image_size=32, seed=0)
    ran_ahead, never_ran = (ClientRole(0, cfg, data, data, data.num_classes) for _ in range(2))
    for client in (ran_ahead, never_ran):
        client.begin_epoch(0, cfg.train.lr, 4)
    bn_before = _bn_stats(ran_ahead.client_part)
    ran_ahead.forward(0)
    assert not torch.equal(bn_before, _bn_stats(ran_ahead.client_part))
    ran_ahead.drop_step()
    assert torch.equal(bn_before, _bn_stats(ran_ahead.client_part))
    assert torch.equal(ran_ahead.generator.get_state(), never_ran.generator.get_state())
    # The next step's payload (its augmented batch and the statistics it is normalised with)
    # and the state it leaves are the same as the client's that never ran the dropped forward.
    payloads = [client.forward(1)[0] for client in (ran_ahead, never_ran)]
    np.testing.assert_array_equal(payloads[0].data, payloads[1].data)
    for a, b in zip(ran_ahead.client_part.state_dict().values(),
                    never_ran.client_part.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_step_flops_of_depthwise_models_agree_with_split_points():
    """One FLOP counter serves the roles' compute columns and `splitray split-points`."""
    from splitray.models import build_model, split_points

    cfg = _cfg(**{"model.name": "mobilenet_v2", "model.split_layer": 4,
                  "compression.enabled": "false"})
    data = load_dataset("synthetic", num_samples=8, image_size=32, seed=0)
    client = ClientRole(0, cfg, data, data, data.num_classes)
    server = ServerRole(cfg, tuple(data.images.shape[1:]), data.num_classes)
    model = build_model("mobilenet_v2", num_classes=data.num_classes, input_shape=(3, 32, 32))
    point = split_points(model, (3, 32, 32))[4]
    assert client.fwd_flops_per_sample == point.client_flops
    assert client.fwd_flops_per_sample + client.bwd_flops_per_sample == point.client_train_flops
    assert server.parts[0].flops_per_sample == point.server_train_flops
    # The step's compute columns follow the same counts.
    client.begin_epoch(0, cfg.train.lr, None)
    payload, info = client.forward(0)
    _, sinfo = server.step(payload, 0, 0)
    assert info.flops == point.client_flops * 8 and sinfo.flops == point.server_train_flops * 8


def test_config_names_algorithms_without_importing_them():
    import subprocess
    import sys

    code = ("import sys, splitray.config as c; c.load_config(overrides=['train.algorithm=splitfed']);"
            "assert 'splitray.algorithms' not in sys.modules, 'config imported the algorithms'")
    subprocess.run([sys.executable, "-c", code], check=True)
    from splitray.algorithms import ALGORITHMS
    from splitray.config import ALGORITHM_NAMES

    assert tuple(ALGORITHMS) == ALGORITHM_NAMES


def test_no_two_clients_of_any_two_seeds_share_a_generator():
    # seed * 1000 + id gave seed 0's client 1000 the generator of seed 1's client 0; torch keeps
    # only a seed's low 32 bits, so distinct 64-bit seeds are not enough.
    seeds = [client_generator(config_from_dict({"seed": seed}), client_id).initial_seed() % 2**32
             for seed in range(3) for client_id in range(2500)]
    assert len(set(seeds)) == len(seeds)
    one_run = {client_seed(1023, client_id) % 2**32 for client_id in range(200_000)}
    assert len(one_run) == 200_000 and server_seed(1023) % 2**32 not in one_run
    assert server_seed(0) not in {client_seed(0, client_id) for client_id in range(5000)}
    assert client_generator(config_from_dict({"seed": 7}), 999).initial_seed() == 7999  # as recorded
    same = torch.Generator().manual_seed(5 + 2**32)
    assert torch.equal(torch.randperm(8, generator=torch.Generator().manual_seed(5)),
                       torch.randperm(8, generator=same))  # why only the low 32 bits count


def _server_step_after(cfg, data, disturb: int):
    """A fresh server's first training step on one client's payload, after the process's global
    generator was set to `disturb` (what building other roles in the same process leaves)."""
    client = ClientRole(0, cfg, data, data, data.num_classes)
    server = ServerRole(cfg, tuple(data.images.shape[1:]), data.num_classes)
    client.begin_epoch(0, cfg.train.lr, None)
    payload, _ = client.forward(0)
    torch.manual_seed(disturb)
    grad, info = server.step(payload, 0, 0)
    return grad.to_tensor(), info.loss


def test_server_dropout_draws_from_its_own_stream_whatever_else_the_process_draws():
    # The local engine builds every role in one process, Ray each in its own: the server's
    # dropout masks must not depend on the global generator they leave behind.
    cfg = _cfg(**{"model.name": "mobilenet_v2", "model.head": "imagenet", "model.split_layer": 2,
                  "compression.enabled": "false", "schedule.phases": "[{epochs: 1}]"})
    data = load_dataset("synthetic", num_samples=16, image_size=32, seed=0)
    assert any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in
               ServerRole(cfg, (3, 32, 32), data.num_classes).parts[0].server_part.modules())
    grad_a, loss_a = _server_step_after(cfg, data, disturb=1)
    grad_b, loss_b = _server_step_after(cfg, data, disturb=2)
    assert loss_a == loss_b and torch.equal(grad_a, grad_b)


def test_a_restored_epsl_server_forgets_the_positions_of_the_undone_round():
    cfg = _cfg(**{"train.algorithm": "epsl", "train.phi": 0.5, "compression.enabled": "false",
                  "schedule.phases": "[{epochs: 1}]"})
    data = load_dataset("synthetic", num_samples=32, image_size=16, seed=0)
    client = ClientRole(0, cfg, data, data, data.num_classes)
    server = ServerRole(cfg, tuple(data.images.shape[1:]), data.num_classes)
    saved = server.checkpoint()
    client.begin_epoch(0, cfg.train.lr, None)
    payload, _ = client.forward(0)
    server.step_epsl(payload, 0, 0, cfg.train.shared_positions())
    server.restore(saved)  # a client died mid-round: the round replays from here
    with pytest.raises(RuntimeError, match="without held positions"):
        server.step_aggregated()
