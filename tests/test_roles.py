"""The split client/server step equals one graph trained on totalLoss = Loss + ε·pruneLoss."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from splitray.compression import prune_loss
from splitray.config import load_config
from splitray.data import load_dataset
from splitray.roles import ClientRole, ServerRole


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
                                        server.decompressor, server.server_part)]
    idx = client._order[:8]
    x, y = data.batch(idx)

    payload, info = client.forward(0)
    grad, sinfo = server.step(payload, 0)
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
        for twin, real in zip(parts, (client.client_part, client.compressor,
                                      server.decompressor, server.server_part), strict=True):
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
