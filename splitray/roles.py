"""The client step and the server step of split learning, written once.

The fused trainer calls these objects directly; the Ray engine wraps the same objects in actors.
Neither side imports Ray.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from splitray.compression import (
    Compressor,
    Decompressor,
    Payload,
    encoded_shape,
    payload_nbytes,
    prune_loss,
)
from splitray.config import CompressionConfig, ExperimentConfig, split_layer_of
from splitray.data import ArrayDataset, class_cycle_order
from splitray.models import build_model, split
from splitray.models.flops import flop_counter


@dataclass
class ForwardInfo:
    """What the client reports about one forward pass: wire size and the work it did."""

    client_id: int
    bytes_up: int
    batch_size: int
    flops: float          # forward FLOPs of client part + compressor for this batch
    compute_s: float      # host wall seconds of the forward


@dataclass
class StepCost:
    """A client step's cost known before it runs: what its forward will report (no wall time)
    and its backward's FLOPs."""

    forward: ForwardInfo
    backward_flops: float


@dataclass
class ServerInfo:
    """What the server reports about one step."""

    client_id: int
    bytes_down: int
    batch_size: int
    loss: float
    correct: int
    flops: float          # forward + backward FLOPs of decompressor + server part
    compute_s: float


@dataclass
class BackwardInfo:
    """What the client reports about one backward pass."""

    client_id: int
    prune_loss: float
    flops: float          # backward FLOPs of the client side
    compute_s: float


def model_for(cfg: ExperimentConfig, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """The full model, initialised from the run seed so every party builds identical weights."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model.name, num_classes=num_classes, input_shape=input_shape,
                       head=cfg.model.head)


def activation_shape(client_part: nn.Module, input_shape: tuple[int, int, int]) -> tuple[int, ...]:
    with torch.no_grad():
        was_training = client_part.training
        client_part.eval()
        shape = tuple(client_part(torch.zeros(1, *input_shape)).shape[1:])
        client_part.train(was_training)
    return shape


def build_compressor(c: CompressionConfig, act_shape: tuple[int, ...]) -> Compressor:
    """The compressor the config describes, at an activation of `act_shape`."""
    return Compressor(act_shape[0], resolution_factor=c.resolution_factor, out_channels=c.channels,
                      mask=c.mask, encoder_sigmoid=c.encoder_sigmoid, filter_init=c.filter_init,
                      variant=c.variant)


def build_decompressor(c: CompressionConfig, act_shape: tuple[int, ...]) -> Decompressor:
    """The decompressor the config describes, restoring an activation of `act_shape`."""
    return Decompressor(tuple(act_shape), c.channels or act_shape[0],
                        resolution_factor=c.resolution_factor, variant=c.variant)


def make_compressor(cfg: ExperimentConfig, act_shape: tuple[int, ...]) -> Compressor | None:
    """The client-side compressor for this split, or None when compression is off."""
    if not cfg.compression.enabled:
        return None
    torch.manual_seed(cfg.seed + 1)
    return build_compressor(cfg.compression, act_shape)


def make_decompressor(cfg: ExperimentConfig, act_shape: tuple[int, ...]) -> Decompressor | None:
    if not cfg.compression.enabled:
        return None
    torch.manual_seed(cfg.seed + 2)
    return build_decompressor(cfg.compression, act_shape)


def batch_samples(shard_samples: int, batch_size: int) -> int:
    """Samples in each training step of a client: a whole batch, or the whole shard when it is
    smaller than one (epochs take only whole batches)."""
    return min(shard_samples, batch_size)


def _sgd(params, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    t = cfg.train
    return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def _measure_flops(fn) -> int:
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def map_leaves(tree: Any, kind: type, fn: Callable[[Any], Any]) -> Any:
    """`tree` (nested dicts, lists and tuples) with every leaf of type `kind` replaced by `fn(leaf)`."""
    if isinstance(tree, kind):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: map_leaves(v, kind, fn) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return type(tree)(map_leaves(v, kind, fn) for v in tree)
    return tree


class _Role:
    """What both roles share: one place that lists their modules and sets train or eval mode."""

    def modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def optimizers(self) -> list[torch.optim.Optimizer]:
        raise NotImplementedError

    def set_training(self, training: bool) -> None:
        """Train (True) or eval (False) mode for every module of the role, none forgotten."""
        for m in self.modules():
            m.train(training)

    def checkpoint(self) -> dict:
        """Everything training changes in this role, as CPU tensors and plain values (loads with
        `torch.load(..., weights_only=True)`, also where there is no GPU)."""
        state = {"modules": [m.state_dict() for m in self.modules()],
                 "optimizers": [o.state_dict() for o in self.optimizers()],
                 "torch_rng": torch.get_rng_state()}
        return map_leaves(state, torch.Tensor, torch.Tensor.cpu)

    def restore(self, state: dict) -> None:
        """Return to a `checkpoint()`."""
        for m, saved in zip(self.modules(), state["modules"], strict=True):
            m.load_state_dict(saved)
        for o, saved in zip(self.optimizers(), state["optimizers"], strict=True):
            o.load_state_dict(saved)
        torch.set_rng_state(state["torch_rng"])


def weights_of(named: list[tuple[str, nn.Module | None]]) -> dict[str, np.ndarray]:
    """Every weight and buffer of the modules as numpy arrays, keyed by prefix + state-dict key.
    Model units keep their own names at any split point, so equal keys are the same layer."""
    return {prefix + name: t.detach().cpu().numpy().copy()
            for prefix, m in named if m is not None for name, t in m.state_dict().items()}


def load_weights(named: list[tuple[str, nn.Module | None]], weights: dict[str, np.ndarray]) -> None:
    """Copy into each module's weights and buffers the ones `weights` holds (it may hold other
    modules' keys too); those it lacks (a compressor no other trained client shares, a layer no
    averaged copy holds) stay."""
    with torch.no_grad():
        for prefix, m in named:
            if m is None:
                continue
            for name, t in m.state_dict().items():
                if prefix + name in weights:
                    # torch.tensor copies: arrays from the object store are read-only.
                    t.copy_(torch.tensor(weights[prefix + name]))


def fedavg(weights: list[dict[str, np.ndarray]], counts: list[int]) -> dict[str, np.ndarray]:
    """Weighted average of every floating array over the copies that hold its key (all of them
    for SplitFed; for EdgeSplit's different split points, layer-wise FedAvg); integer buffers
    (BN step counts) take the max."""
    out = {}
    for name in dict.fromkeys(k for w in weights for k in w):
        held = [(w[name], c) for w, c in zip(weights, counts, strict=True) if name in w]
        arrays = [a for a, _ in held]
        if np.issubdtype(arrays[0].dtype, np.floating):
            total = sum(c for _, c in held)
            out[name] = sum((c / total) * a.astype(np.float64) for a, c in held
                            ).astype(arrays[0].dtype)
        else:
            out[name] = np.max(arrays, axis=0)
    return out


def client_seed(seed: int, client_id: int) -> int:
    """The torch seed of client `client_id` in a run seeded `seed`, unique in the low 32 bits that
    torch's generator keeps, within a run and across seeds below 1,024 with up to 2,098,152
    clients (for seeds below 2,147,483 in all). Clients below 1,000 keep seed * 1000 + id, which
    every recorded result depends on; the rest count up from 2**31, a block of 2**21 a seed."""
    if client_id < 1000:
        return seed * 1000 + client_id
    return 2**31 + (seed * 2**21 + client_id - 1000) % 2**31


def server_seed(seed: int) -> int:
    """The seed of the server's own stream (dropout): below 2**31, apart from every client's
    seed in its run (`client_seed`) for seeds below 2,145,000."""
    return (2**31 - 1 - seed) % 2**31


def client_generator(cfg: ExperimentConfig, client_id: int) -> torch.Generator:
    """The generator of a client's data order, augmentation and filter resets, as it starts."""
    return torch.Generator().manual_seed(client_seed(cfg.seed, client_id))


@dataclass
class _PendingStep:
    """A client's forward waiting for its gradient: the output to backpropagate through, and
    what the forward changed besides (the modules' buffers, i.e. BatchNorm's running statistics,
    and the generator's state) as they were before it, for a dropped step to put back."""

    sent: torch.Tensor
    buffers_before: list[torch.Tensor]
    generator_before: torch.Tensor


class ClientRole(_Role):
    """A client device: its data shard, client part, compressor and optimizer."""

    def __init__(self, client_id: int, cfg: ExperimentConfig, shard: ArrayDataset,
                 test_shard: ArrayDataset, num_classes: int) -> None:
        self.client_id = client_id
        self.cfg = cfg
        self.shard = shard
        self.test_shard = test_shard
        input_shape = tuple(shard.images.shape[1:])
        self.split_layer = split_layer_of(cfg, client_id)
        client_part, _ = split(model_for(cfg, input_shape, num_classes), self.split_layer)
        self.client_part = client_part
        self.act_shape = activation_shape(client_part, input_shape)
        self.compressor = make_compressor(cfg, self.act_shape)
        params = [p for m in self.modules() for p in m.parameters()]
        # A client part with no parameters (split 0 or 1) has nothing to train.
        self.optimizer = _sgd(params, cfg) if params else None
        self.generator = client_generator(cfg, client_id)
        self.budget = self.num_channels
        self._order: np.ndarray = np.arange(0)
        self._pending: _PendingStep | None = None
        self.fwd_flops_per_sample, self.bwd_flops_per_sample = self._flops_per_sample(input_shape)

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.client_part, self.compressor) if m is not None]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer] if self.optimizer is not None else []

    def _named(self) -> list[tuple[str, nn.Module | None]]:
        return [("", self.client_part), (f"compressor@{self.split_layer}.", self.compressor)]

    def _buffers(self) -> list[torch.Tensor]:
        return [b for m in self.modules() for b in m.buffers()]

    def checkpoint(self) -> dict:
        if self._pending is not None:
            raise RuntimeError(f"client {self.client_id}: checkpoint() between forward() and "
                               "backward()")
        return {**super().checkpoint(), "generator": self.generator.get_state(),
                "budget": self.budget, "order": torch.from_numpy(self._order.copy())}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.generator.set_state(state["generator"])
        self.budget = state["budget"]
        if "order" in state:  # checkpoints before the worker pool did not hold it
            self._order = np.asarray(state["order"], dtype=np.int64)

    def rebind(self, client_id: int, shard: ArrayDataset, test_shard: ArrayDataset,
               state: dict) -> None:
        """Become another client of the same split point (a worker pool's slot): its identity,
        its data and its `checkpoint()` state."""
        if split_layer_of(self.cfg, client_id) != self.split_layer:
            raise ValueError(f"client {client_id} splits at {split_layer_of(self.cfg, client_id)}, "
                             f"this slot at {self.split_layer}")
        self.client_id, self.shard, self.test_shard = client_id, shard, test_shard
        self._pending = None
        self.restore(state)

    def initial_state(self) -> dict:
        """The `checkpoint()` of this client as built: the run seed's weights, no momentum, the
        generator it starts with; every client of a split point starts so, but for the generator."""
        return {"modules": [{k: v.clone() for k, v in m.state_dict().items()}
                            for m in self.modules()],
                "optimizers": [copy.deepcopy(o.state_dict()) for o in self.optimizers()],
                "torch_rng": torch.get_rng_state(), "generator": self.generator.get_state(),
                "budget": self.num_channels, "order": torch.zeros(0, dtype=torch.int64)}

    @property
    def num_channels(self) -> int:
        return self.compressor.num_channels if self.compressor is not None else self.act_shape[0]

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        act = self.client_part(x)
        if self.compressor is None:
            return act, None
        return self.compressor(act, self.budget)

    def _flops_per_sample(self, input_shape) -> tuple[int, int]:
        """Forward and backward FLOPs of one sample, measured in eval mode so BN stats stay put."""
        self.set_training(False)
        x = torch.zeros(1, *input_shape)
        fwd = _measure_flops(lambda: self._encode(x))
        out, _ = self._encode(x)
        bwd = _measure_flops(lambda: out.sum().backward()) if out.requires_grad else 0
        self.set_training(True)
        for m in self.modules():
            m.zero_grad(set_to_none=True)
        return fwd, bwd

    def num_steps(self, batch_size: int, cap: int | None) -> int:
        steps = max(1, len(self.shard) // batch_size)
        return min(steps, cap) if cap else steps

    def begin_epoch(self, epoch: int, lr: float, budget: int | None) -> int:
        """Shuffle the shard for the epoch (EPSL with phi > 0: then by class, position by
        position), set lr and budget; returns the number of steps."""
        order = torch.randperm(len(self.shard), generator=self.generator).numpy()
        t = self.cfg.train
        if t.algorithm == "epsl" and t.phi > 0 and t.phi_positions == "by_class":
            order = class_cycle_order(order, self.shard.labels.numpy(), self.shard.num_classes,
                                      t.batch_size, epoch)
        self._order = order
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
        self.budget = budget if budget is not None else self.num_channels
        return self.num_steps(self.cfg.train.batch_size, self.cfg.train.steps_per_epoch)

    def set_budget(self, budget: int) -> None:
        """Send `budget` channels from now on (split inference with a model of Θ)."""
        self.budget = budget

    def inference_cost(self) -> tuple[int, int]:
        """FLOPs and wire bytes of one sample's forward at the current budget, no label sent."""
        return self.fwd_flops_per_sample, self._up_nbytes(1, with_labels=False)

    def _up_nbytes(self, batch_size: int, with_labels: bool = True) -> int:
        """Wire bytes of a payload of `batch_size` samples at the current budget."""
        channels, height, width, with_indices = self._wire_shape()
        return payload_nbytes(batch_size, channels, height, width,
                              self.cfg.compression.codec_up, with_indices, with_labels)

    def _batch_indices(self, step: int) -> np.ndarray:
        """The shard positions of step `step` of the epoch in progress."""
        bs = self.cfg.train.batch_size
        return self._order[step * bs:(step + 1) * bs]

    def _wire_shape(self) -> tuple[int, int, int, bool]:
        """Channels sent at the current budget, height and width on the wire, and whether the
        payload carries channel indices."""
        if self.compressor is None:
            channels, height, width = self.act_shape
            return channels, height, width, False
        c = self.cfg.compression
        _, height, width = encoded_shape(tuple(self.act_shape), c.resolution_factor, c.channels)
        return self.budget, height, width, True

    def reset_filter(self, kind: str, previous_budget: int) -> None:
        if self.compressor is not None:
            self.compressor.reset_filter(kind, previous_budget, generator=self.generator)

    def forward(self, step: int, learn: bool = True) -> tuple[Payload, ForwardInfo]:
        """Run the client part on the step's batch and encode what goes on the wire.

        With `learn` False the client is frozen (async SL state B): eval mode, no graph kept,
        no backward to follow, nothing about the client changes.
        """
        t0 = time.perf_counter()
        # What this forward changes besides its graph, as it was (a dropped step puts it back).
        before = ([b.clone() for b in self._buffers()], self.generator.get_state()) if learn else ()
        idx = self._batch_indices(step)
        x, y = self.shard.batch(idx, augment=self.cfg.data.augment, generator=self.generator)
        self.set_training(learn)
        with torch.set_grad_enabled(learn):
            sent, channels = self._encode(x)
        self._pending = _PendingStep(sent, *before) if learn else None
        payload = Payload.from_tensor(sent.detach(), self.cfg.compression.codec_up,
                                      channel_indices=channels, labels=y)
        n = len(idx)
        info = ForwardInfo(self.client_id, payload.nbytes, n, self.fwd_flops_per_sample * n,
                           time.perf_counter() - t0)
        return payload, info

    def step_cost(self) -> StepCost:
        """What each step of the epoch will cost, without running it: its `forward`'s report
        (wire bytes, samples, FLOPs) and its `backward`'s FLOPs; every step takes
        `batch_samples` samples."""
        n = batch_samples(len(self.shard), self.cfg.train.batch_size)
        return StepCost(ForwardInfo(self.client_id, self._up_nbytes(n), n,
                                    self.fwd_flops_per_sample * n, 0.0),
                        self.bwd_flops_per_sample * n)

    def drop_step(self) -> None:
        """Forget the forward in progress and undo what it changed: its step was dropped and no
        gradient will come, so the client is left as it was before the step, as if the forward
        had never run (a Ray engine may have run it ahead of the server, the fused trainer not)."""
        if self._pending is not None:
            with torch.no_grad():
                for b, saved in zip(self._buffers(), self._pending.buffers_before, strict=True):
                    b.copy_(saved)
            self.generator.set_state(self._pending.generator_before)
        self._pending = None

    def backward(self, grad: Payload, broadcast: Payload | None = None) -> BackwardInfo:
        """Backpropagate the server's gradient (plus ε·pruneLoss on the local filter), then step.
        With EPSL, `broadcast` is the gradient of the batch's first positions, the same for all
        clients, and `grad` that of the rest."""
        t0 = time.perf_counter()
        if self._pending is None:
            raise RuntimeError("backward() called without a pending forward()")
        sent = self._pending.sent
        self._pending = None
        g = grad.to_tensor()
        if broadcast is not None:
            g = torch.cat([broadcast.to_tensor(), g])
        c = self.cfg.compression
        p_loss = 0.0
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if self.compressor is not None:
            # totalLoss = Loss + ε·pruneLoss: the server holds Loss, the filter f lives here.
            pl = prune_loss(self.compressor.filter_values(), self.budget, c.delta, c.lam)
            torch.autograd.backward([sent, c.epsilon * pl], [g, None])
            p_loss = float(pl.detach())
        elif sent.requires_grad:
            sent.backward(g)
        if self.optimizer is not None:
            self.optimizer.step()
        n = sent.shape[0]
        return BackwardInfo(self.client_id, p_loss, self.bwd_flops_per_sample * n,
                            time.perf_counter() - t0)

    def _batch_sizes(self) -> list[int]:
        """Samples in each step of the epoch in progress."""
        bs = self.cfg.train.batch_size
        steps = self.num_steps(bs, self.cfg.train.steps_per_epoch)
        return [batch_samples(len(self.shard), bs)] * steps

    def state_a_cost(self) -> tuple[int, float]:
        """Bytes (up + down) and client FLOPs of this epoch's steps, were each a full step: what
        async SL's savings are measured against. Payload sizes are the analytic wire sizes."""
        channels, height, width, _ = self._wire_shape()
        total_bytes, flops = 0, 0.0
        for n in self._batch_sizes():
            total_bytes += self._up_nbytes(n)
            if self.optimizer is not None:  # a client with nothing to train gets no gradient
                total_bytes += payload_nbytes(n, channels, height, width,
                                              self.cfg.compression.codec_down, False, False)
            flops += (self.fwd_flops_per_sample + self.bwd_flops_per_sample) * n
        return total_bytes, flops

    def weights_nbytes(self) -> int:
        """Bytes of `get_weights`: what handing the client part on sends (fp32 weights)."""
        return sum(a.nbytes for a in self.get_weights().values())

    def get_weights(self) -> dict[str, np.ndarray]:
        """Every weight and buffer of the client part and compressor, as numpy arrays."""
        return weights_of(self._named())

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Load this client's layers from `get_weights` (another client's) or an average."""
        load_weights(self._named(), weights)

    def num_eval_batches(self) -> int:
        return -(-len(self.test_shard) // self.cfg.train.eval_batch_size)

    @torch.no_grad()
    def encode_eval(self, batch: int) -> Payload:
        """Encode test batch `batch` of this client's test slice, in eval mode, labels attached."""
        self.set_training(False)
        bs = self.cfg.train.eval_batch_size
        x, y = self.test_shard.batch(np.arange(batch * bs, min((batch + 1) * bs, len(self.test_shard))))
        sent, channels = self._encode(x)
        return Payload.from_tensor(sent, self.cfg.compression.codec_up,
                                   channel_indices=channels, labels=y)


@dataclass
class ServerPart:
    """One copy of the server side: decompressor and layers s+1..L for split point s."""

    split_layer: int
    server_part: nn.Module
    decompressor: Decompressor | None
    optimizer: torch.optim.Optimizer
    flops_per_sample: int  # forward + backward of decompressor + server part
    forward_flops_per_sample: int
    # The client has parameters to train (a compressor, or a layer before the split): without
    # any (split 0 on raw input) no gradient is computed at the cut or sent down.
    client_learns: bool

    def named(self) -> list[tuple[str, nn.Module | None]]:
        return [("", self.server_part), (f"decompressor@{self.split_layer}.", self.decompressor)]

    def modules(self) -> list[nn.Module]:
        return [m for m in (self.server_part, self.decompressor) if m is not None]


@contextlib.contextmanager
def _statistics_kept(module: nn.Module) -> Iterator[None]:
    """Forwards inside normalise by their batch's statistics, as in training, but leave the
    running statistics (BatchNorm's buffers) as they were."""
    saved = [b.clone() for b in module.buffers()]
    yield
    with torch.no_grad():
        for b, before in zip(module.buffers(), saved, strict=True):
            b.copy_(before)


def _pool_batch_norm(parts: list[ServerPart], sampled_fraction: float) -> None:
    """Make averaged server copies keep BatchNorm statistics as fresh as one shared server part's.

    Each of the K copies of a BN layer that train in a round (the copies holding it, times the
    fraction of clients a round samples) sees one batch; averaged, their running statistics
    would take K times as many rounds as parallel SL's single part to forget their start (mean
    0, variance 1), and evaluation would use stale statistics. Momentum 1 - (1 - m)^K per copy
    gives their average the decay of K updates with momentum m (K at least 1: a copy alone keeps
    m). A copy alone still sees one batch a round where parallel SL's part sees one from every
    client, so every copy also weighs its n-th batch at least 1/n (`_even_start`): without it a
    lone copy's decompressor kept 0.9^16 = 19 % of its start after 16 batches and its client
    tested near chance.
    """
    layers = [(prefix + name, bn) for part in parts for prefix, m in part.named() if m is not None
              for name, bn in m.named_modules() if isinstance(bn, nn.modules.batchnorm._BatchNorm)]
    holders = Counter(key for key, _ in layers)
    for key, bn in layers:
        if bn.momentum is not None:
            copies_a_round = max(1.0, holders[key] * sampled_fraction)
            bn.momentum = 1.0 - (1.0 - bn.momentum) ** copies_a_round
            bn.register_forward_pre_hook(partial(_even_start, momentum=bn.momentum))


def _even_start(bn: nn.modules.batchnorm._BatchNorm, _inputs: tuple, momentum: float) -> None:
    """Before a training forward, momentum max(m, 1/n) for the layer's n-th batch: the running
    statistics start as the plain mean of the batches seen (PyTorch's momentum=None) rather than
    a mean weighted towards their initial values, and go on as an average with momentum m."""
    if bn.training and bn.track_running_stats:
        bn.momentum = max(momentum, 1.0 / (int(bn.num_batches_tracked) + 1))


class ServerRole(_Role):
    """The server: decompressor + server part and its optimizer; computes the task loss.

    Every client shares one server part, except under EdgeSplit, where each client has its own
    copy at its own split point (averaged among themselves each round, and layer by layer with
    the client parts).
    """

    def __init__(self, cfg: ExperimentConfig, input_shape: tuple[int, int, int],
                 num_classes: int, device: str = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        splits = [split_layer_of(cfg, i) for i in range(cfg.clients.count)]
        if cfg.train.algorithm == "edgesplit":
            self.parts = [self._build_part(s, input_shape, num_classes) for s in splits]
            self.part_of = list(range(len(splits)))
            if cfg.edgesplit.server_every_rounds or cfg.edgesplit.every_rounds != 0:
                per_round = cfg.clients.per_round or len(splits)
                _pool_batch_norm(self.parts, min(per_round, len(splits)) / len(splits))
        else:
            self.parts = [self._build_part(splits[0], input_shape, num_classes)]
            self.part_of = [0] * len(splits)
        self._held: list[tuple[torch.Tensor, torch.Tensor]] = []  # EPSL's shared positions
        # Async SL's state C trains on what a client sent earlier: keep every payload.
        self.cache: dict[tuple[int, int], Payload] | None = (
            {} if cfg.train.algorithm == "async_sl" else None)
        self.server_rng = torch.Generator().manual_seed(server_seed(cfg.seed)).get_state()

    @contextlib.contextmanager
    def _own_rng(self) -> Iterator[None]:
        """Training forwards draw (dropout on the CPU) from the server's own stream: in the local
        engine the clients share the process's global generator, on Ray they do not, and what
        the clients' construction left in it once made the engines' losses differ."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self.server_rng)
        try:
            yield
        finally:
            self.server_rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    def _build_part(self, split_layer: int, input_shape: tuple[int, int, int],
                    num_classes: int) -> ServerPart:
        client_part, server_part = split(model_for(self.cfg, input_shape, num_classes),
                                         split_layer)
        act_shape = activation_shape(client_part, input_shape)
        decompressor = make_decompressor(self.cfg, act_shape)
        server_part.to(self.device)
        if decompressor is not None:
            decompressor.to(self.device)
        modules = [m for m in (server_part, decompressor) if m is not None]
        optimizer = _sgd([p for m in modules for p in m.parameters()], self.cfg)
        client_learns = decompressor is not None or any(
            p.requires_grad for p in client_part.parameters())
        flops, forward_flops = self._flops_per_sample(server_part, decompressor, act_shape,
                                                      client_learns)
        return ServerPart(split_layer, server_part, decompressor, optimizer, flops, forward_flops,
                          client_learns)

    def modules(self) -> list[nn.Module]:
        return [m for part in self.parts for m in part.modules()]

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [part.optimizer for part in self.parts]

    def checkpoint(self) -> dict:
        cache = None if self.cache is None else [
            [client, step, payload.to_state()] for (client, step), payload in self.cache.items()]
        state = {**super().checkpoint(), "cache": cache, "server_rng": self.server_rng.clone()}
        if self.device.type == "cuda":  # dropout on the GPU draws from the GPU's generator
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self, state: dict) -> None:
        super().restore(state)
        # A checkpoint from before the server had a stream of its own: any valid state serves.
        self.server_rng = state.get("server_rng", state["torch_rng"]).clone()
        self._held = []  # EPSL positions of a round the rollback undoes
        if self.device.type == "cuda" and "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if state["cache"] is not None:
            self.cache = {(client, step): Payload.from_state(saved)
                          for client, step, saved in state["cache"]}

    def device_name(self) -> str:
        """Where the server computes, for the run's manifest: "cpu", or "cuda" and the GPU."""
        if self.device.type == "cuda":
            return f"cuda ({torch.cuda.get_device_name(self.device)})"
        return "cpu"

    def set_lr(self, lr: float) -> None:
        for optimizer in self.optimizers():
            for group in optimizer.param_groups:
                group["lr"] = lr

    def get_weights(self, client_id: int) -> dict[str, np.ndarray]:
        """The weights of the server part that serves this client (keys as the client's)."""
        return weights_of(self.parts[self.part_of[client_id]].named())

    def set_weights(self, client_id: int, weights: dict[str, np.ndarray]) -> None:
        """Load the layers of this client's server part from `weights` (e.g. a layer average)."""
        load_weights(self.parts[self.part_of[client_id]].named(), weights)

    def average_parts(self, client_ids: list[int]) -> None:
        """EdgeSplit's server-side average, in the server's memory (nothing crosses the network):
        each layer averaged over these clients' copies that hold it, loaded into every copy that
        holds it."""
        average = fedavg([self.get_weights(i) for i in client_ids], [1] * len(client_ids))
        for part in self.parts:
            load_weights(part.named(), average)

    def forward_flops(self, client_id: int) -> int:
        """Forward FLOPs of one sample through the server side that serves this client."""
        return self.parts[self.part_of[client_id]].forward_flops_per_sample

    def parts_nbytes(self) -> int:
        """Server memory for its server parts: weights, buffers, gradients and SGD's momentum
        (held only when the momentum is not 0)."""
        per_parameter = 3 if self.cfg.train.momentum > 0 else 2
        total = 0
        for part in self.parts:
            for m in part.modules():
                total += sum(b.nbytes for b in m.buffers())
                total += sum(per_parameter * p.nbytes for p in m.parameters())
        return total

    def _decode(self, part: ServerPart, payload: Payload) -> tuple[torch.Tensor, torch.Tensor]:
        """The received tensor (a leaf, so its gradient is what goes back) and the server input."""
        received = payload.to_tensor().to(self.device).requires_grad_(part.client_learns)
        if part.decompressor is None:
            return received, received
        channels = payload.indices_tensor().to(self.device)
        return received, part.decompressor(received, channels)

    def _flops_per_sample(self, server_part: nn.Module, decompressor: Decompressor | None,
                          act_shape: tuple[int, ...], input_grad: bool) -> tuple[int, int]:
        """FLOPs of one sample: forward + backward (to the cut too when `input_grad`), and
        forward alone."""
        modules = [m for m in (server_part, decompressor) if m is not None]
        for m in modules:
            m.eval()
        if decompressor is not None:
            c = self.cfg.compression
            shape = encoded_shape(tuple(act_shape), c.resolution_factor, c.channels)
            channels = torch.arange(shape[0])
        else:
            shape, channels = act_shape, None
        x = torch.zeros(1, *shape, device=self.device, requires_grad=input_grad)

        def forward() -> torch.Tensor:
            h = decompressor(x, channels.to(self.device)) if channels is not None else x
            return server_part(h)

        flops = _measure_flops(lambda: forward().sum().backward())
        with torch.no_grad():
            forward_flops = _measure_flops(forward)
        for m in modules:
            m.train()
            m.zero_grad(set_to_none=True)
        return flops, forward_flops

    def step(self, payload: Payload, client_id: int, step: int) -> tuple[Payload, ServerInfo]:
        """Forward the received activations, compute the loss, update, return the gradient."""
        if self.cache is not None:
            self.cache[(client_id, step)] = payload
        return self._train_on(payload, client_id)

    def _gradient(self, part: ServerPart, grad: torch.Tensor | None) -> Payload:
        """The gradient at the cut as it goes down: empty for a client with nothing to train."""
        if not part.client_learns:
            grad = torch.empty(0)
        return Payload.from_tensor(grad.cpu(), self.cfg.compression.codec_down)

    def step_cached(self, client_id: int, step: int) -> tuple[Payload, ServerInfo]:
        """Train on the payload this client sent for `step` the last time it sent (async SL C)."""
        if self.cache is None or (client_id, step) not in self.cache:
            raise RuntimeError(f"no cached activations of client {client_id} for step {step}")
        return self._train_on(self.cache[(client_id, step)], client_id)

    def step_epsl(self, payload: Payload, client_id: int, step: int,
                  shared_positions: int) -> tuple[Payload, ServerInfo]:
        """EPSL: train on the batch's positions from `shared_positions` on as parallel SL does
        (0: exactly parallel SL's step) and keep the first positions' inputs and last-layer
        gradients for `step_aggregated`. Returns the gradient of the positions trained here."""
        if shared_positions == 0:
            return self.step(payload, client_id, step)
        t0 = time.perf_counter()
        part = self.parts[self.part_of[client_id]]
        if part.decompressor is not None:
            raise RuntimeError("EPSL's aggregation averages server inputs: compression must be off")
        labels = payload.labels_tensor().to(self.device)
        x = payload.to_tensor().to(self.device)
        n, m = labels.shape[0], shared_positions
        self.set_training(True)
        # The shared positions: logits only, their backward is aggregated. The running
        # statistics learn from each client batch once: from these positions when they are
        # the whole batch (phi 1), else from the own positions' forward below.
        kept = _statistics_kept(part.server_part) if m < n else contextlib.nullcontext()
        with torch.no_grad(), kept, self._own_rng():
            logits_shared = part.server_part(x[:m])
            # d(mean cross-entropy over all n positions) / d(logits) of these m positions
            g_shared = (logits_shared.softmax(1) - F.one_hot(labels[:m], logits_shared.shape[1])) / n
            loss_shared = F.cross_entropy(logits_shared, labels[:m], reduction="sum") / n
        self._held.append((x[:m], g_shared))
        loss, correct = float(loss_shared), int((logits_shared.argmax(1) == labels[:m]).sum())
        own = x[m:].clone().requires_grad_(part.client_learns)
        if m < n:
            part.optimizer.zero_grad(set_to_none=True)
            with self._own_rng():
                logits_own = part.server_part(own)
            loss_own = F.cross_entropy(logits_own, labels[m:], reduction="sum") / n
            loss_own.backward()
            part.optimizer.step()
            loss += float(loss_own.detach())
            correct += int((logits_own.argmax(1) == labels[m:]).sum())
        grad = self._gradient(part, own.grad if m < n else own[:0])  # phi = 1: none of its own
        flops = part.flops_per_sample * (n - m) + part.forward_flops_per_sample * m
        info = ServerInfo(client_id, grad.nbytes, n, loss, correct, flops, time.perf_counter() - t0)
        return grad, info

    def step_aggregated(self) -> tuple[Payload, ServerInfo]:
        """EPSL: back-propagate the clients' mean last-layer gradient of the shared positions once,
        at their mean input, and update; the gradient at the cut goes to every client alike."""
        t0 = time.perf_counter()
        if not self._held:
            raise RuntimeError("step_aggregated() without held positions (call step_epsl first)")
        part = self.parts[0]
        x_mean = torch.stack([x for x, _ in self._held]).mean(0).requires_grad_(part.client_learns)
        g_mean = torch.stack([g for _, g in self._held]).mean(0)
        self._held = []
        self.set_training(True)
        part.optimizer.zero_grad(set_to_none=True)
        # The mean input's variance is about 1/K of a real batch's: not for the running statistics.
        with _statistics_kept(part.server_part), self._own_rng():
            part.server_part(x_mean).backward(g_mean)
        part.optimizer.step()
        grad = self._gradient(part, x_mean.grad)
        m = x_mean.shape[0]
        info = ServerInfo(-1, grad.nbytes, m, float("nan"), 0, part.flops_per_sample * m,
                          time.perf_counter() - t0)
        return grad, info

    def cache_nbytes(self) -> int:
        """Bytes of the activations (and labels) the server keeps for async SL's state C."""
        return sum(p.nbytes for p in self.cache.values()) if self.cache else 0

    def _train_on(self, payload: Payload, client_id: int) -> tuple[Payload, ServerInfo]:
        t0 = time.perf_counter()
        part = self.parts[self.part_of[client_id]]
        labels = payload.labels_tensor().to(self.device)
        self.set_training(True)
        part.optimizer.zero_grad(set_to_none=True)
        with self._own_rng():
            received, h = self._decode(part, payload)
            logits = part.server_part(h)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        part.optimizer.step()
        grad = self._gradient(part, received.grad)
        n = labels.shape[0]
        correct = int((logits.argmax(1) == labels).sum())
        info = ServerInfo(client_id, grad.nbytes, n, float(loss.detach()), correct,
                          part.flops_per_sample * n, time.perf_counter() - t0)
        return grad, info

    @torch.no_grad()
    def evaluate(self, payload: Payload, client_id: int) -> tuple[int, float, int]:
        """Correct predictions, summed loss and sample count for one encoded test batch of a
        client, through the server part that serves it."""
        part = self.parts[self.part_of[client_id]]
        self.set_training(False)
        _, h = self._decode(part, payload)
        logits = part.server_part(h)
        labels = payload.labels_tensor().to(self.device)
        loss_sum = float(F.cross_entropy(logits, labels, reduction="sum"))
        return int((logits.argmax(1) == labels).sum()), loss_sum, int(labels.shape[0])
