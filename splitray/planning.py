"""Split points and bandwidth shares for heterogeneous clients: EdgeSplit (METHODS.md §5), EPSL (§6).

Pure Python and numpy, no Ray: torch only builds the model once on the meta device to measure each
split point's FLOPs and activation shape the way the client and server roles measure them. Times
follow the simulator's accounting of one round that starts with every client and the server idle
(`splitray.runtime.timeline`, flops compute mode) on a shared medium with fixed shares.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from splitray.compression import Compressor, Decompressor, encoded_shape, payload_nbytes
from splitray.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    parse_override,
    set_dotted,
    split_layer_of,
)
from splitray.data.loaders import (
    IMAGEFOLDER_DEFAULT_IMAGE_SIZE,
    STL10_IMAGE_SIZE,
    SYNTHETIC_DEFAULT_IMAGE_SIZE,
    SYNTHETIC_DEFAULT_SAMPLES,
)
from splitray.models import build_model, min_input_px
from splitray.models.flops import MEASURE_BATCH, _measure_unit, flop_counter
from splitray.network import (
    LINK_PROFILES,
    DeviceProfile,
    SharedMedium,
    build_link,
    compute_time_s,
    get_device_profile,
)
from splitray.roles import batch_samples, build_compressor, build_decompressor
from splitray.schedules import scaled_budget

OBJECTIVES = ("edgesplit", "epsl")
MAX_ITERATIONS = 20
CIFAR_IMAGE_SIZE = 32
_BISECTION_STEPS = 200
_GOLDEN_STEPS = 120
# The simulator delays each transfer by latency + |N(0, 1)| * jitter; the plan uses its mean.
_MEAN_ABS_NORMAL = math.sqrt(2.0 / math.pi)


@dataclass(frozen=True)
class SplitCosts:
    """What splitting after the first `split_layer` units costs per sample, as the simulator counts it.

    Client FLOPs cover the client part and the compressor, server FLOPs the decompressor and the
    server part (forward + backward); bytes are wire bytes of the payload at the planned budget.
    """

    split_layer: int
    shape: tuple[int, int, int]            # activation (C, H, W) at the split
    wire_shape: tuple[int, int, int]       # channels sent (the budget), height, width on the wire
    client_trains: bool                    # the client part holds weights (raw data stays home)
    client_forward_flops_per_sample: float
    client_backward_flops_per_sample: float
    server_flops_per_sample: float         # forward + backward
    server_forward_flops_per_sample: float  # the server part's forward (EPSL's shared positions)
    up_bytes_per_sample: int               # activation (and label) bytes of one sample
    up_bytes_per_batch: int                # fixed bytes of one payload: channel indices, codec scale
    down_bytes_per_sample: int
    down_bytes_per_batch: int
    client_weights_bytes: int              # client part + compressor state, as averaging sends it

    @property
    def client_flops_per_sample(self) -> float:
        """Client forward + backward FLOPs of one sample."""
        return self.client_forward_flops_per_sample + self.client_backward_flops_per_sample

    def up_bytes(self, batch_size: int) -> int:
        """Wire bytes of the activation payload of one batch."""
        return self.up_bytes_per_sample * batch_size + self.up_bytes_per_batch

    def down_bytes(self, batch_size: int) -> int:
        """Wire bytes of the gradient payload of one batch."""
        return self.down_bytes_per_sample * batch_size + self.down_bytes_per_batch


@dataclass(frozen=True)
class ClientPlan:
    """One client's planned split point and share, and its predicted times in one round.

    round_s = compute_s + transfer_s + latency_s + wait_s is when its step ends after the round
    starts; wait_s is the server queue (edgesplit) or the wait for the slowest upload (epsl).
    """

    client_id: int
    device: str
    split_layer: int
    share: float          # fraction of the shared medium's capacity, up and down
    compute_s: float      # client forward + backward, plus the server compute it waits for
    transfer_s: float     # activation up + gradient down at its share (+ averaging, spread)
    latency_s: float      # expected one-way delays, up + down
    wait_s: float
    round_s: float


@dataclass(frozen=True)
class Plan:
    """A plan for every client and its predicted round time: the slowest client's round_s, or
    with model averaging (SplitFed, EdgeSplit) the mean round between two averages, their
    transfers included."""

    objective: str
    clients: tuple[ClientPlan, ...]
    round_s: float
    iterations: int       # alternations of EdgeSplit until its split points stopped changing; 1 for epsl


# ------------------------------------------------------------------------------------ costs

def data_shape(cfg: ExperimentConfig) -> tuple[tuple[int, int, int], int]:
    """Input (C, H, W) and class count from cfg.data alone, without loading the data.

    ImageFolder's class count is the number of class folders, unknown here: data.num_classes stands
    in for it (it only sizes the last linear layer).
    """
    d = cfg.data
    if d.name == "synthetic":
        size = d.image_size or SYNTHETIC_DEFAULT_IMAGE_SIZE
        return (d.channels, size, size), d.num_classes
    native, classes = {"cifar10": (CIFAR_IMAGE_SIZE, 10), "cifar100": (CIFAR_IMAGE_SIZE, 100),
                       "stl10": (STL10_IMAGE_SIZE, 10),
                       "imagefolder": (IMAGEFOLDER_DEFAULT_IMAGE_SIZE, d.num_classes)}[d.name]
    size = d.image_size or native
    return (3, size, size), classes


def _codec_modules(cfg: ExperimentConfig, shape: tuple[int, int, int]
                   ) -> tuple[Compressor | None, Decompressor | None]:
    """The compressor and decompressor the roles build at an activation of `shape` (on meta)."""
    c = cfg.compression
    if not c.enabled:
        return None, None
    with torch.device("meta"):
        comp, decomp = build_compressor(c, shape), build_decompressor(c, shape)
    return comp.eval(), decomp.eval()


# Counting FLOPs on the meta device takes about a second for a model and its codec at every split
# point; a grid or a baseline search counts the same ones many times, so the counts are kept,
# keyed by everything they depend on.
_COUNTED: dict[tuple, Any] = {}


def _memo(key: tuple, count: Callable[[], Any]) -> Any:
    """`count()`, once per key."""
    if key not in _COUNTED:
        _COUNTED[key] = count()
    return _COUNTED[key]


def _measured_flops(fn: Callable[[], object]) -> int:
    with flop_counter() as counter:
        fn()
    return int(counter.get_total_flops())


def _codec_flops(cfg: ExperimentConfig, shape: tuple[int, int, int], grad_in: bool
                 ) -> tuple[int, int, int]:
    """Compressor forward and backward, decompressor forward + backward FLOPs of one sample at an
    activation of `shape` (zeros when compression is off); `grad_in`: the activation needs a grad."""
    comp, decomp = _codec_modules(cfg, shape)
    if comp is None or decomp is None:
        return 0, 0, 0
    act = torch.empty(1, *shape, device="meta", requires_grad=grad_in)
    forward = _measured_flops(lambda: comp(act, comp.num_channels))
    sent, channels = comp(act, comp.num_channels)
    backward = _measured_flops(lambda: sent.sum().backward())
    received = torch.empty(sent.shape, device="meta", requires_grad=True)
    server = _measured_flops(lambda: decomp(received, channels).sum().backward())
    return forward, backward, server


def _unit_flops(model: torch.nn.Module, input_shape: tuple[int, int, int]
                ) -> tuple[list[tuple[int, ...]], np.ndarray, np.ndarray, np.ndarray, list[bool]]:
    """Per unit and sample: input shape, forward FLOPs, forward + backward FLOPs as a client runs it
    (input grad only after a unit with parameters) and as the server runs it (input grad always),
    and whether the client's input to the unit needs a grad."""
    shape: tuple[int, ...] = (MEASURE_BATCH, *input_shape)
    shapes, forward, client, server, grad_flows = [], [], [], [], []
    flows = False
    for unit in model.units:
        shapes.append(shape[1:])
        grad_flows.append(flows)
        out, fwd, train = _measure_unit(unit, shape, flows)
        train_grad = train if flows else _measure_unit(unit, shape, True)[2]
        forward.append(fwd // MEASURE_BATCH)
        client.append(train // MEASURE_BATCH)
        server.append(train_grad // MEASURE_BATCH)
        flows = flows or any(p.requires_grad for p in unit.parameters())
        shape = out
    return shapes, np.array(forward), np.array(client), np.array(server), grad_flows


def _budget(cfg: ExperimentConfig, channels_at_split: int, channels: int) -> int:
    """Channels sent at a split point with `channels` to choose from (see `split_costs`)."""
    first = cfg.schedule.phases[0].budget
    return channels if first is None else scaled_budget(first, channels_at_split, channels)


def _state_bytes(modules: list[torch.nn.Module | None]) -> int:
    """Bytes of the modules' state dicts (works on the meta device: sizes only)."""
    return sum(t.numel() * t.element_size() for m in modules if m is not None
               for t in m.state_dict().values())


def sends_weights(cfg: ExperimentConfig) -> bool:
    """Whether cfg's run sends client parts over the network to average them: SplitFed's, and
    EdgeSplit's whole-model average (unless edgesplit.every_rounds is 0; its server-side average
    moves nothing)."""
    algorithm = cfg.train.algorithm
    return algorithm == "splitfed" or (algorithm == "edgesplit" and cfg.edgesplit.every_rounds != 0)


# Training samples of each dataset when data.train_samples is unset (ImageFolder's: unknown).
TRAIN_SAMPLES = {"synthetic": SYNTHETIC_DEFAULT_SAMPLES["train"], "cifar10": 50_000,
                 "cifar100": 50_000, "stl10": 5_000}


def rounds_per_average(cfg: ExperimentConfig) -> int:
    """Rounds between two averages: splitfed.every_rounds (SplitFed) or edgesplit.every_rounds,
    else the rounds of an epoch (the steps of an even shard, capped by train.steps_per_epoch; the
    planner's round holds every client, so clients.per_round is not modelled)."""
    every_rounds = (cfg.splitfed.every_rounds if cfg.train.algorithm == "splitfed"
                    else cfg.edgesplit.every_rounds)
    if every_rounds:
        return every_rounds
    samples = cfg.data.train_samples or TRAIN_SAMPLES.get(cfg.data.name)
    if samples is None:
        raise ConfigError(f"data.train_samples: None is not allowed when the planner prices an "
                          f"average every epoch on {cfg.data.name} data; give the sample count")
    steps = max(1, samples // cfg.clients.count // cfg.train.batch_size)
    return min(steps, cfg.train.steps_per_epoch or steps)


def _model_table(cfg: ExperimentConfig) -> tuple[Any, tuple]:
    """cfg's model on the meta device and its per-unit table (`_unit_flops`), from cfg alone."""
    input_shape, num_classes = data_shape(cfg)
    name = cfg.model.name
    if min(input_shape[1:]) < min_input_px(name):
        raise ConfigError(f"data.image_size: {cfg.data.image_size!r} is not allowed; {name} needs "
                          f"images of at least {min_input_px(name)} px, the data has "
                          f"{input_shape[1]} x {input_shape[2]}")

    def count() -> tuple[Any, tuple]:
        with torch.device("meta"):  # no arithmetic, and the global RNG stays untouched
            model = build_model(name, num_classes=num_classes, input_shape=input_shape,
                                head=cfg.model.head)
        return model, _unit_flops(model, input_shape)

    return _memo(("units", name, input_shape, num_classes, cfg.model.head), count)


def split_channels(cfg: ExperimentConfig) -> tuple[int, list[int]]:
    """Channels the compressor chooses from at model.split_layer and at each client's split
    point, from cfg alone (no data loaded). Raises ConfigError for an image too small for the
    model, a split point it lacks or without a C x H x W activation, a phase's budget above the
    channels, and different split points outside EdgeSplit."""
    _, (shapes, *_) = _model_table(cfg)
    name, c = cfg.model.name, cfg.compression

    def channels_at(split_layer: int, where: str) -> int:
        if split_layer > len(shapes) - 1:
            raise ConfigError(f"{where}: {split_layer} is not allowed; {name} has split points "
                              f"0..{len(shapes) - 1}")
        if len(shapes[split_layer]) != 3:
            raise ConfigError(f"{where}: {split_layer} is not allowed; the activation there has "
                              f"shape {shapes[split_layer]}, not C x H x W")
        return c.channels if c.enabled and c.channels else shapes[split_layer][0]

    channels = channels_at(cfg.model.split_layer, "model.split_layer")
    for i, p in enumerate(cfg.schedule.phases):
        if p.budget is not None and p.budget > channels:
            raise ConfigError(f"schedule.phases[{i}].budget: {p.budget} is not allowed; must be "
                              f"<= {channels}, the channels at split {cfg.model.split_layer} "
                              f"of {name}")
    layers = cfg.clients.split_layers or []
    at_layer = {s: channels_at(s, f"clients.split_layers[{k}]") for k, s in enumerate(layers)}
    if len(set(layers)) > 1 and cfg.train.algorithm != "edgesplit":
        raise ConfigError(f"clients.split_layers: {layers} is not allowed with train.algorithm "
                          f"{cfg.train.algorithm}; different split points need edgesplit (a "
                          "server part per client, averaged layer by layer)")
    return channels, [at_layer.get(split_layer_of(cfg, i), channels)
                      for i in range(cfg.clients.count)]


def _normalises_one_value(module: torch.nn.Module, run: Callable[[], object]) -> bool:
    """Whether `run()` (a forward at batch 1 on the meta device) feeds any BatchNorm layer of
    `module` one value per channel: a 1 x 1 map, which BatchNorm refuses to train on."""
    per_channel: list[int] = []

    def record(_: torch.nn.Module, args: tuple) -> None:
        per_channel.append(args[0].numel() // (args[0].shape[0] * args[0].shape[1]))

    norms = [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    hooks = [m.register_forward_pre_hook(record) for m in norms]
    training = [m.training for m in module.modules()]
    module.eval()  # shapes only; in training mode BatchNorm would raise before we look
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
        for m, was in zip(module.modules(), training, strict=True):
            m.training = was
    return 1 in per_channel


def _one_value_batch_norms(cfg: ExperimentConfig, split_layer: int) -> tuple[str | None,
                                                                            str | None]:
    """The first unit (or codec) on the client side and on the server side of `split_layer` whose
    BatchNorm would see one value per channel in a one-sample batch; None where none would."""
    model, (shapes, *_) = _model_table(cfg)
    shape = shapes[split_layer]

    def count() -> tuple[str | None, str | None]:
        at = [_normalises_one_value(unit, lambda u=unit, k=k: u(torch.empty((1, *shapes[k]),
                                                                              device="meta")))
              for k, unit in enumerate(model.units)]
        client = next((model.unit_names[k] for k in range(split_layer) if at[k]), None)
        server = next((model.unit_names[k] for k in range(split_layer, len(at)) if at[k]), None)
        comp, decomp = _codec_modules(cfg, shape)
        if comp is not None:
            encoded = []  # what the compressor sends, for the decompressor's probe
            x = torch.empty((1, *shape), device="meta")
            if _normalises_one_value(comp, lambda: encoded.append(comp(x, 1))) and client is None:
                client = "the compressor"
            if _normalises_one_value(decomp, lambda: decomp(*encoded[0])):
                server = "the decompressor"
        return client, server

    return _memo(("one value", cfg.model.name, data_shape(cfg), cfg.model.head,
                  repr(cfg.compression), split_layer), count)


def check_batch_norm_batches(cfg: ExperimentConfig, shard_samples: list[int]) -> None:
    """ConfigError when a training batch of one sample would reach a BatchNorm layer on a 1 x 1
    map, which torch refuses in training: a shard of one sample, train.batch_size 1, or one of
    the two parts EPSL's server splits each batch into."""
    t = cfg.train
    m = t.shared_positions()
    for client_id, samples in enumerate(shard_samples):
        n = batch_samples(samples, t.batch_size)
        server_batches = {n} if m == 0 else {x for x in (m, n - m) if x > 0}
        if n > 1 and 1 not in server_batches:
            continue
        client, server = _one_value_batch_norms(cfg, split_layer_of(cfg, client_id))
        where = (client and n == 1 and f"{client} (client side)") or (
            server and 1 in server_batches and f"{server} (server side)")
        if not where:
            continue
        if t.batch_size == 1:
            why, fix = f"train.batch_size: {t.batch_size} is not allowed", "raise it"
        elif n < t.batch_size:
            why = (f"data.partition: client {client_id}'s shard of {samples} sample(s) is not "
                   f"allowed" + (f" with train.phi {t.phi}; EPSL's server trains on parts of {m} "
                                 f"and {n - m} positions" if n > 1 else ""))
            fix = "raise data.train_samples or lower the partition's skew"
        else:
            why = (f"train.phi: {t.phi} is not allowed with train.batch_size {t.batch_size}; EPSL's "
                   f"server trains on parts of {m} and {n - m} positions")
            fix = "raise train.batch_size or change train.phi"
        raise ConfigError(f"{why}: a one-sample training batch reaches the BatchNorm of {where} "
                          f"on a 1 x 1 map, which needs more than one value per channel ({fix})")


def split_costs(cfg: ExperimentConfig) -> list[SplitCosts]:
    """Per-sample costs of every valid split point (activation C x H x W) at cfg's batch and codecs.

    Budget, the project's choice: at model.split_layer the first phase's budget as configured; at
    any other split point the same fraction of that split point's channels, rounded up (None: all
    channels), so that every client sends the same fraction of what it could send.
    """
    channels_at_split, _ = split_channels(cfg)
    model, (shapes, forward, client_train, server_train, grad_flows) = _model_table(cfg)
    c = cfg.compression
    costs = []
    for n, shape in enumerate(shapes):
        if len(shape) != 3:
            continue
        comp_forward, comp_backward, decomp = _memo(
            ("codec", repr(c), shape, grad_flows[n]),
            lambda shape=shape, grad=grad_flows[n]: _codec_flops(cfg, shape, grad))
        client_forward = int(forward[:n].sum()) + comp_forward
        client_backward = int(client_train[:n].sum() - forward[:n].sum()) + comp_backward
        if c.enabled:
            channels, height, width = encoded_shape(shape, c.resolution_factor, c.channels)
        else:
            channels, height, width = shape
        sent = _budget(cfg, channels_at_split, channels)
        up = [payload_nbytes(k, sent, height, width, c.codec_up, c.enabled, True) for k in (1, 2)]
        # A client with nothing to train (no compressor, no parameters before the split) gets no
        # gradient, and the server computes none at the cut.
        learns = bool(grad_flows[n]) or c.enabled
        down = ([payload_nbytes(k, sent, height, width, c.codec_down, False, False)
                 for k in (1, 2)] if learns else [0, 0])
        server_train_flops = int((server_train if learns else client_train)[n:].sum())
        costs.append(SplitCosts(
            split_layer=n, shape=shape, wire_shape=(sent, height, width),
            client_trains=bool(grad_flows[n]),
            client_forward_flops_per_sample=float(client_forward),
            client_backward_flops_per_sample=float(client_backward),
            server_flops_per_sample=float(decomp + server_train_flops),
            server_forward_flops_per_sample=float(forward[n:].sum()),
            up_bytes_per_sample=up[1] - up[0], up_bytes_per_batch=2 * up[0] - up[1],
            down_bytes_per_sample=down[1] - down[0], down_bytes_per_batch=2 * down[0] - down[1],
            client_weights_bytes=_state_bytes([*model.units[:n], _codec_modules(cfg, shape)[0]])))
    return costs


# ------------------------------------------------------------------------------------ times

@dataclass(frozen=True)
class _Times:
    """Seconds of one batch for every client (rows) and split point (columns); drains at full capacity."""

    forward_s: np.ndarray
    backward_s: np.ndarray
    server_s: np.ndarray
    up_s: np.ndarray
    down_s: np.ndarray
    latency_up_s: float
    latency_down_s: float
    server_forward_s: np.ndarray  # the server part's forward of one batch
    shared_fraction: float    # EPSL: the share of each batch's positions aggregated (m / b)
    model_up_s: np.ndarray    # model averaging's upload at the whole capacity (0: no averaging)
    model_down_s: np.ndarray
    period: int               # rounds between two averages
    # Seeded draws (draws x clients) of a round's two link delays' jitter less its mean, which
    # latency_*_s hold; None without jitter.
    jitter_draws_s: np.ndarray | None = None

    def slowest_s(self, rounds: np.ndarray) -> float:
        """The expected longest of the clients' rounds: each draws its links' jitter, and the
        slowest of K draws is later than the mean every entry of `rounds` holds."""
        if self.jitter_draws_s is None:
            return float(rounds.max())
        return float(np.mean(np.max(rounds + self.jitter_draws_s, axis=1)))

    @property
    def exchange_s(self) -> np.ndarray:
        """Model averaging's uploads + downloads, spread over the rounds between two averages."""
        return (self.model_up_s + self.model_down_s) / self.period

    def fixed_s(self) -> np.ndarray:
        """Everything but the transfers: compute and latencies."""
        return (self.forward_s + self.backward_s + self.server_s
                + self.latency_up_s + self.latency_down_s)

    def drain_s(self) -> np.ndarray:
        """Up + down drain seconds at the whole capacity; divide by the share."""
        return self.up_s + self.down_s + self.exchange_s


def shared_medium(cfg: ExperimentConfig) -> SharedMedium:
    """The medium all clients share (network.shared); a ConfigError when there is none."""
    spec = cfg.network.shared
    if spec is None:
        raise ConfigError("network.shared: None is not allowed; planning divides one shared "
                          "medium among the clients, set network.shared (e.g. wifi6_shared)")
    if isinstance(spec, dict) and spec.get("allocation") == "planned":
        # The medium's capacity; how it is divided is what the plan decides.
        spec = {k: v for k, v in spec.items() if k not in ("allocation", "shares")}
    try:
        link = build_link(spec, cfg.network.traces_root)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(f"network.shared: {e}") from None
    if not isinstance(link, SharedMedium):
        raise ConfigError(f"network.shared: {spec!r} is not allowed; planning needs a link of kind "
                          "shared, whose capacity the clients divide")
    return link


def device_profiles(cfg: ExperimentConfig) -> tuple[list[DeviceProfile], DeviceProfile]:
    """Each client's device profile (clients.devices, cycled) and the server's."""
    devices = cfg.clients.devices
    try:
        clients = [get_device_profile(devices[i % len(devices)]) for i in range(cfg.clients.count)]
    except ValueError as e:
        raise ConfigError(f"clients.devices: {e}") from None
    try:
        server = get_device_profile(cfg.server.device)
    except ValueError as e:
        raise ConfigError(f"server.device: {e}") from None
    return clients, server


def _times(cfg: ExperimentConfig, costs: list[SplitCosts], devices: list[DeviceProfile],
           server: DeviceProfile, medium: SharedMedium, averages: bool) -> _Times:
    """Every client's seconds at every split point; `averages`: model averaging (SplitFed's,
    EdgeSplit's), whose transfers are charged to the rounds between two averages."""
    b, share = cfg.train.batch_size, cfg.clients.cpu_share

    def client_s(flops: list[float]) -> np.ndarray:
        return np.array([[compute_time_s(b * f, d, share) for f in flops] for d in devices])

    def per_client(row: list[float]) -> np.ndarray:
        return np.tile(np.array(row), (len(devices), 1))

    delay_s = medium.latency_s + _MEAN_ABS_NORMAL * medium.jitter_s
    jitter_draws_s = None
    if medium.jitter_s > 0:  # each transfer's delay: latency + |N(0, 1)| x jitter
        draws = max(256, min(4096, 4_000_000 // len(devices)))
        normal = np.random.default_rng(0).standard_normal((draws, len(devices), 2))
        jitter_draws_s = medium.jitter_s * (np.abs(normal).sum(axis=2) - 2 * _MEAN_ABS_NORMAL)
    return _Times(
        forward_s=client_s([c.client_forward_flops_per_sample for c in costs]),
        backward_s=client_s([c.client_backward_flops_per_sample for c in costs]),
        server_s=per_client([compute_time_s(b * c.server_flops_per_sample, server) for c in costs]),
        server_forward_s=per_client([compute_time_s(b * c.server_forward_flops_per_sample, server)
                                     for c in costs]),
        shared_fraction=cfg.train.shared_positions() / b,
        up_s=per_client([8.0 * c.up_bytes(b) / medium.rate_bps("up") for c in costs]),
        down_s=per_client([8.0 * c.down_bytes(b) / medium.rate_bps("down") for c in costs]),
        latency_up_s=delay_s, latency_down_s=delay_s,
        model_up_s=per_client([8.0 * c.client_weights_bytes / medium.rate_bps("up")
                               if averages else 0.0 for c in costs]),
        model_down_s=per_client([8.0 * c.client_weights_bytes / medium.rate_bps("down")
                                 if averages else 0.0 for c in costs]),
        period=rounds_per_average(cfg) if averages else 1, jitter_draws_s=jitter_draws_s)


def _bisect(feasible: Callable[[float], bool], lo: float, hi: float) -> float:
    """The smallest feasible value in (lo, hi] to float precision; `hi` must be feasible."""
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if feasible(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _deadline(fixed_s: np.ndarray, drain_s: np.ndarray) -> float:
    """The T with sum_i drain_i / (T - fixed_i) = 1: all finish at T when client i gets that share."""
    lo = float(fixed_s.max())
    return _bisect(lambda t: float(np.sum(drain_s / np.maximum(t - fixed_s, 1e-300))) <= 1.0,
                   lo, lo + float(drain_s.sum()))


# ------------------------------------------------------------------------------------ plans

def _edgesplit(times: _Times) -> tuple[np.ndarray, np.ndarray, int]:
    """METHODS.md §5's alternation: split points for the shares, shares so all finish together.

    Each pass can only lower the round time, and a fixed point is optimal: no client can then meet
    the common deadline with a smaller share at another split point. Returns (split column per
    client, shares, passes).
    """
    fixed, drain = times.fixed_s(), times.drain_s()
    rows = np.arange(fixed.shape[0])
    shares = np.full(fixed.shape[0], 1.0 / fixed.shape[0])
    columns = np.full(fixed.shape[0], -1)
    for iteration in range(1, MAX_ITERATIONS + 1):
        chosen = np.argmin(fixed + drain / shares[:, None], axis=1)
        if np.array_equal(chosen, columns):
            return columns, shares, iteration - 1
        columns = chosen
        t = _deadline(fixed[rows, columns], drain[rows, columns])
        shares = drain[rows, columns] / (t - fixed[rows, columns])
    return columns, shares, MAX_ITERATIONS


def _server_queue(arrival_s: np.ndarray, server_s: np.ndarray) -> np.ndarray:
    """Seconds each payload waits for the one server, served in arrival order (ties by client id)."""
    wait = np.zeros(len(arrival_s))
    free_s = 0.0
    for i in sorted(range(len(arrival_s)), key=lambda i: (arrival_s[i], i)):
        begin_s = max(arrival_s[i], free_s)
        wait[i] = begin_s - arrival_s[i]
        free_s = begin_s + server_s[i]
    return wait


def _plan_edgesplit(times: _Times) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Split columns, shares and server waits of the EdgeSplit plan, and its passes.

    With averaging, rounds wait for the slowest client while the averaging's transfers come once
    per period, so the alternation's balance is not always the best mean round: the plan is the
    better of it and every single split point with balanced shares (the project's choice)."""
    columns, shares, passes = _edgesplit(times)
    candidates = [(columns, shares)]
    if times.exchange_s.any():
        fixed, drain = times.fixed_s(), times.drain_s()
        for k in range(fixed.shape[1]):
            t = _deadline(fixed[:, k], drain[:, k])
            candidates.append((np.full(len(columns), k), drain[:, k] / (t - fixed[:, k])))
    best = min(candidates, key=lambda c: _served(times, *c)[1])
    return best[0], best[1], _served(times, *best)[0], passes


def _served(times: _Times, columns: np.ndarray, shares: np.ndarray
            ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """A round where the server serves each payload as it comes (parallel SL, EdgeSplit): each
    client's server wait, the mean round (see `_mean_round_s`), its compute and transfer."""
    rows = np.arange(len(columns))
    arrival_s = (times.forward_s[rows, columns] + times.up_s[rows, columns] / shares
                 + times.latency_up_s)
    wait = _server_queue(arrival_s, times.server_s[rows, columns])
    compute = (times.forward_s[rows, columns] + times.backward_s[rows, columns]
               + times.server_s[rows, columns])
    transfer = times.drain_s()[rows, columns] / shares
    rounds = compute + transfer + times.latency_up_s + times.latency_down_s + wait
    return wait, _mean_round_s(times, rows, columns, shares, rounds), compute, transfer


def _epsl_shares(ready_s: np.ndarray, up_s: np.ndarray, tail_s: np.ndarray, down_s: np.ndarray
                 ) -> np.ndarray:
    """Shares minimising max_k(ready_k + up_k / w_k) + max_k(down_k / w_k + tail_k), sum w <= 1.

    For an upload deadline t1 the least download deadline t2 comes by bisection; t1 + t2 is convex
    in t1 (the feasible (t1, t2) form a convex set), so a golden-section search finds its minimum.
    """
    def t2_for(t1: float) -> float:
        uplink = up_s / (t1 - ready_s)
        spare = 1.0 - float(uplink.sum())
        if spare <= 0:
            return math.inf
        lo = float(tail_s.max())
        return _bisect(lambda t2: float(np.maximum(uplink, down_s / np.maximum(t2 - tail_s, 1e-300))
                                        .sum()) <= 1.0, lo, lo + float(down_s.sum()) / spare)

    lo = _deadline(ready_s, up_s)  # the uplink alone takes the whole capacity
    # A feasible point: shares that make every client's up + down end together. The optimum's
    # t2 exceeds max(tail), so its t1 is below that point's t1 + t2 - max(tail).
    together = _deadline(ready_s + tail_s, up_s + down_s)
    w = (up_s + down_s) / (together - ready_s - tail_s)
    hi = float(np.max(ready_s + up_s / w) + np.max(down_s / w + tail_s) - tail_s.max())
    golden = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = c + t2_for(c), d + t2_for(d)
    for _ in range(_GOLDEN_STEPS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = c + t2_for(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = d + t2_for(d)
    t1 = c if fc <= fd else d
    t2 = t2_for(t1)
    shares = np.maximum(up_s / (t1 - ready_s), down_s / (t2 - tail_s))
    return shares / shares.sum()  # any spare capacity goes to everyone in proportion


def _epsl_parts(times: _Times, cut: int, shares: np.ndarray
                ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """§6's round at one cut, in parts: each client's upload end, the server's work for all
    (each batch's own positions, the shared positions' forward, then their one aggregated
    backward), each client's gradient download (its unicast at its share; with shared
    positions, the broadcast of their gradient at the whole capacity once the aggregated
    backward and every unicast are done, the unicasts having begun as their clients were
    served, before the aggregated backward) and its backward with latency."""
    f = times.shared_fraction
    upload = times.forward_s[:, cut] + times.up_s[:, cut] / shares + times.latency_up_s
    aggregated_s = float(times.server_s[0, cut] * f)
    server_all = float(np.sum(times.server_s[:, cut] * (1 - f) + times.server_forward_s[:, cut] * f)
                       + aggregated_s)
    download = times.down_s[:, cut] * (1 - f) / shares
    if f > 0:
        download = np.full_like(download, max(download.max() - aggregated_s, 0.0)
                                + times.down_s[0, cut] * f)
    return upload, server_all, download, times.backward_s[:, cut] + times.latency_down_s


def _plan_epsl(times: _Times) -> tuple[int, np.ndarray]:
    """The cut (column) with the shortest §6 round at its best shares, and those shares."""
    best: tuple[float, int, np.ndarray] | None = None
    f = times.shared_fraction
    for cut in range(times.forward_s.shape[1]):
        tail_s = times.backward_s[:, cut] + times.latency_down_s
        # With a broadcast every backward waits for it, after the last unicast: the tails no
        # longer depend on the shares.
        shares = _epsl_shares(times.forward_s[:, cut] + times.latency_up_s, times.up_s[:, cut],
                              tail_s if f == 0 else np.zeros_like(tail_s),
                              times.down_s[:, cut] * (1 - f) + 1e-12)
        upload, server_all, download, tail = _epsl_parts(times, cut, shares)
        round_s = float(upload.max() + server_all + (download + tail).max())
        if best is None or round_s < best[0]:
            best = (round_s, cut, shares)
    assert best is not None
    return best[1], best[2]


def candidate_splits(cfg: ExperimentConfig, costs: list[SplitCosts]) -> list[int]:
    """Indices into `costs` of the split points the planner may choose: plan.split_layers, or
    every split point whose client part has weights (the raw input never leaves a device)."""
    allowed = cfg.plan.split_layers
    picked = [k for k, c in enumerate(costs)
              if (c.split_layer in allowed if allowed is not None else c.client_trains)]
    known = {c.split_layer for c in costs}
    if not picked or (allowed is not None and not set(allowed) <= known):
        valid = ", ".join(str(c.split_layer) for c in costs)
        raise ConfigError(f"plan.split_layers: {allowed!r} is not allowed; {cfg.model.name} can "
                          f"split at {valid}")
    return picked


def plan(cfg: ExperimentConfig, objective: str = "edgesplit") -> Plan:
    """Each client's split point and share of network.shared that minimise the round time.

    "edgesplit": METHODS.md §5, a split point per client; "epsl": §6, one cut layer for all. The
    predicted times are one round from idle under `resolved_config`, the server's FIFO queue
    included, though the choice ignores that queue; device memory is no constraint (device
    profiles carry no memory size).
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective: {objective!r} is not allowed; choose one of "
                          f"{', '.join(OBJECTIVES)}")
    medium = shared_medium(cfg)
    devices, server = device_profiles(cfg)
    costs = split_costs(cfg)
    picked = candidate_splits(cfg, costs)
    costs = [costs[k] for k in picked]
    times = _times(cfg, costs, devices, server, medium, averages=sends_weights(cfg))
    n = len(devices)
    if objective == "edgesplit":
        columns, shares, wait, passes = _plan_edgesplit(times)
        return _plan_served(objective, times, costs, devices, columns, shares, wait, passes)
    cut, shares = _plan_epsl(times)
    upload, server_all, download, _ = _epsl_parts(times, cut, shares)
    compute = times.forward_s[:, cut] + times.backward_s[:, cut] + server_all
    transfer = times.up_s[:, cut] / shares + download
    wait = upload.max() - upload  # for the slowest upload
    return _plan_of(objective, times, costs, devices, np.full(n, cut), shares, compute, transfer,
                    wait, 1)


def predict(cfg: ExperimentConfig) -> Plan:
    """The round the planner's model predicts for cfg as it stands: each client's split point
    (clients.split_layers or model.split_layer) and network.shared's shares (equal shares
    unless `allocation: shares`), served by the server one payload at a time."""
    medium = shared_medium(cfg)
    devices, server = device_profiles(cfg)
    costs = split_costs(cfg)
    times = _times(cfg, costs, devices, server, medium, averages=sends_weights(cfg))
    n = len(devices)
    column_of = {c.split_layer: k for k, c in enumerate(costs)}
    columns = np.array([column_of[split_layer_of(cfg, i)] for i in range(n)])
    shares = np.array(medium.shares if medium.allocation == "shares" else [1.0 / n] * n)
    wait = _served(times, columns, shares)[0]
    return _plan_served("given", times, costs, devices, columns, shares, wait, 0)


def baseline_config(cfg: ExperimentConfig, split_layer: int) -> ExperimentConfig:
    """cfg as the baseline plans are measured against: parallel SL, every client split at
    `split_layer` and sending the same fraction of its channels as a plan's client there (each
    phase's budget scaled as `split_costs` scales it), network.shared divided in equal fixed
    shares."""
    data = cfg.to_dict()
    at_split = config_from_dict({**data, "clients": {**data["clients"],
                                                     "split_layers": [split_layer]}})
    reference, [channels, *_] = split_channels(at_split)
    for phase in data["schedule"]["phases"]:
        if phase["budget"] is not None:
            phase["budget"] = scaled_budget(phase["budget"], reference, channels)
    data["train"]["algorithm"] = "parallel_sl"
    data["train"]["phi"] = 0.0
    data["model"]["split_layer"] = split_layer
    data["clients"]["split_layers"] = None
    spec = _medium_spec(cfg.network.shared)
    spec.update(allocation="shares", shares=[1.0 / cfg.clients.count] * cfg.clients.count)
    data["network"]["shared"] = spec
    return config_from_dict(data)


def best_single_split(cfg: ExperimentConfig) -> Plan:
    """The predicted round of parallel SL at the best single split point (among the planner's
    candidates) with equal shares: what EdgeSplit and EPSL are compared with."""
    costs = split_costs(cfg)
    return min((predict(baseline_config(cfg, costs[k].split_layer))
                for k in candidate_splits(cfg, costs)), key=lambda p: p.round_s)


def default_objective(cfg: ExperimentConfig) -> str:
    """The planner's objective for cfg's algorithm: epsl for EPSL, else edgesplit."""
    return "epsl" if cfg.train.algorithm == "epsl" else "edgesplit"


def plan_and_baseline(cfg: ExperimentConfig, objective: str | None = None) -> tuple[Plan, Plan]:
    """The plan for cfg (objective: `default_objective` unless given) and what it is compared
    with: parallel SL at its best single split point with equal shares (`best_single_split`)."""
    return plan(cfg, objective or default_objective(cfg)), best_single_split(cfg)


@dataclass(frozen=True)
class GridPoint:
    """One point of a planning grid: the grid's values there (as given), the plan and its
    baseline (see `plan_and_baseline`)."""

    values: tuple[str, ...]
    plan: Plan
    baseline: Plan

    @property
    def speedup(self) -> float:
        """How many times shorter the plan's round is than the baseline's."""
        return self.baseline.round_s / self.plan.round_s


def grid_values(text: str) -> tuple[str, list[str]]:
    """`key=v1,v2,...` as the key and its values' texts; commas inside [] or {} belong to one
    value (e.g. `clients.devices=[jetson_nano],[laptop_cpu, raspberry_pi_4]`)."""
    key, sep, raw = text.partition("=")
    values, depth, start = [], 0, 0
    for k, char in enumerate(raw):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(raw[start:k].strip())
            start = k + 1
    values.append(raw[start:].strip())
    if not sep or not key.strip() or depth != 0 or not all(values):
        raise ConfigError(f"--grid: {text!r} is not allowed; expected key=value1,value2,... e.g. "
                          "network.shared.up_bps=5e6,2e7,1e8")
    return key.strip(), values


def plan_grid(data: dict, axes: list[tuple[str, list[str]]], objective: str | None = None
              ) -> Iterator[GridPoint]:
    """The plan and its baseline at every combination of the axes' values (each axis a config key
    and the YAML texts of its values) applied to the config `data`, the last axis varying
    fastest. Every point's config is checked before the first is planned."""
    points = []
    for values in itertools.product(*(texts for _, texts in axes)):
        point = copy.deepcopy(data)
        for (key, _), text in zip(axes, values, strict=True):
            set_dotted(point, *parse_override(f"{key}={text}"))
        points.append((values, config_from_dict(point)))
    for values, cfg in points:
        yield GridPoint(values, *plan_and_baseline(cfg, objective))


def format_grid(axes: list[str], points: list[GridPoint]) -> str:
    """A grid's points as an aligned text table: the axes' values, the plan's and the baseline's
    round and split points, and the speed-up, one point a row."""
    header = (*axes, "round s", "baseline s", "speed-up", "baseline split", "split points")
    rows = [header] + [
        (*p.values, f"{p.plan.round_s:.4f}", f"{p.baseline.round_s:.4f}", f"{p.speedup:.2f}x",
         str(p.baseline.clients[0].split_layer), _split_counts(p.plan))
        for p in points]
    return _aligned(rows, left=set(range(len(axes))) | {len(header) - 1})


def _split_counts(plan: Plan) -> str:
    """The plan's split points with how many clients take each, e.g. `3x2 5x6`."""
    counts = Counter(c.split_layer for c in plan.clients)
    return " ".join(f"{split}x{n}" for split, n in sorted(counts.items()))


def _plan_served(objective: str, times: _Times, costs: list[SplitCosts],
                 devices: list[DeviceProfile], columns: np.ndarray, shares: np.ndarray,
                 wait: np.ndarray, passes: int) -> Plan:
    """A Plan where the server serves each payload as it comes (parallel SL, EdgeSplit)."""
    _, _, compute, transfer = _served(times, columns, shares)
    return _plan_of(objective, times, costs, devices, columns, shares, compute, transfer, wait,
                    passes)


def _plan_of(objective: str, times: _Times, costs: list[SplitCosts],
             devices: list[DeviceProfile], columns: np.ndarray, shares: np.ndarray,
             compute: np.ndarray, transfer: np.ndarray, wait: np.ndarray, passes: int) -> Plan:
    """A Plan from every client's split column, share and predicted seconds."""
    rows = np.arange(len(devices))
    latency = times.latency_up_s + times.latency_down_s
    clients = tuple(
        ClientPlan(client_id=i, device=devices[i].name, split_layer=costs[columns[i]].split_layer,
                   share=float(shares[i]), compute_s=float(compute[i]),
                   transfer_s=float(transfer[i]), latency_s=latency, wait_s=float(wait[i]),
                   round_s=float(compute[i] + transfer[i] + latency + wait[i]))
        for i in rows)
    rounds = np.array([c.round_s for c in clients])
    return Plan(objective, clients, _mean_round_s(times, rows, columns, shares, rounds), passes)


def _mean_round_s(times: _Times, rows: np.ndarray, columns: np.ndarray, shares: np.ndarray,
                  rounds: np.ndarray) -> float:
    """The mean round of a period between two averages, as the rounds run: each round waits for
    the slowest client; the period's last round adds each client's model upload, its first the
    download of the average (steady state: every period has both). Without averaging, the round."""
    model_up = times.model_up_s[rows, columns] / shares
    model_down = times.model_down_s[rows, columns] / shares
    if not (model_up.any() or model_down.any()):
        return times.slowest_s(rounds)
    # A client's round without the averaging's share of the transfers.
    step = rounds - times.exchange_s[rows, columns] / shares
    up = model_up + times.latency_up_s
    down = model_down + times.latency_down_s
    period, slowest = times.period, times.slowest_s
    if period == 1:
        return slowest(down + step + up)
    return ((period - 2) * slowest(step) + slowest(step + up) + slowest(down + step)) / period


# ------------------------------------------------------------------------------------ output

def format_plan(plan: Plan) -> str:
    """The plan as an aligned text table, one client a row, and its predicted round time."""
    header = ("client", "device", "split", "share", "compute s", "transfer s", "latency s",
              "wait s", "round s")
    rows = [header] + [
        (str(c.client_id), c.device, str(c.split_layer), f"{c.share:.4f}", f"{c.compute_s:.4f}",
         f"{c.transfer_s:.4f}", f"{c.latency_s:.4f}", f"{c.wait_s:.4f}", f"{c.round_s:.4f}")
        for c in plan.clients]
    return (_aligned(rows, left={1})
            + f"\npredicted round time: {plan.round_s:.4f} s ({plan.objective}, "
            f"{plan.iterations} iteration{'s' if plan.iterations != 1 else ''})")


def _aligned(rows: list[tuple[str, ...]], left: set[int]) -> str:
    """Rows of cells as lines of aligned columns: the columns in `left` flush left, the rest
    flush right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i in left else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths, strict=True))).rstrip()
                     for row in rows)


def _medium_spec(spec: object) -> dict:
    """A shared link as a mapping spec: a LINK_PROFILES name is expanded to its mapping."""
    return dict(LINK_PROFILES[spec]) if isinstance(spec, str) else dict(spec)


def asks_for_plan(cfg: ExperimentConfig) -> bool:
    """Whether the config leaves split points or shares to the planner: EdgeSplit without
    clients.split_layers, or network.shared with `allocation: planned`."""
    shared = cfg.network.shared
    planned = isinstance(shared, dict) and shared.get("allocation") == "planned"
    return planned or (cfg.train.algorithm == "edgesplit" and cfg.clients.split_layers is None)


def planned_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """cfg with the planner's choices applied when it asks for them (see `asks_for_plan`): EPSL
    plans one cut layer and the shares, EdgeSplit a split point per client and the shares, any
    other algorithm the shares at its model.split_layer. Else cfg itself."""
    if not asks_for_plan(cfg):
        return cfg
    if cfg.network.shared is None:
        raise ConfigError("clients.split_layers: None is not allowed for edgesplit with own links "
                          "(network.links); give each client's split point, or set "
                          "network.shared so that the planner chooses them and the shares")
    if cfg.train.algorithm == "epsl":
        return config_from_dict(resolved_config(cfg, plan(cfg, "epsl")))
    if cfg.train.algorithm == "edgesplit":
        return config_from_dict(resolved_config(cfg, plan(cfg, "edgesplit")))
    data = cfg.to_dict()
    data["plan"]["split_layers"] = [split_layer_of(cfg, 0)]  # one split point for all here
    return config_from_dict(resolved_config(cfg, plan(config_from_dict(data), "edgesplit")))


def resolved_config(cfg: ExperimentConfig, plan: Plan) -> dict:
    """cfg as plain data with the plan applied: clients.split_layers per client and network.shared
    with `allocation: shares` and the plan's shares; loads back with `config_from_dict`."""
    if len(plan.clients) != cfg.clients.count:
        raise ConfigError(f"clients.count: {cfg.clients.count} is not allowed; the plan has "
                          f"{len(plan.clients)} clients")
    shared_medium(cfg)
    data = cfg.to_dict()
    data["clients"]["split_layers"] = [c.split_layer for c in plan.clients]
    shares = [c.share for c in plan.clients]
    total = sum(shares)
    spec = _medium_spec(cfg.network.shared)
    spec["allocation"] = "shares"
    spec["shares"] = [s / total for s in shares] if total > 1.0 else shares
    data["network"]["shared"] = spec
    config_from_dict(data)  # the plan's config must be valid as it stands
    return data
