"""The typed experiment config: YAML files and `--set a.b=c` overrides resolve to one validated object."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}")
_SEGMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)")


# Numbers nearly as YAML 1.2 reads them: `4e6` and `1.0e-3` are floats (PyYAML's 1.1 rules read
# them as strings), `010` and `12:30` strings (not 1.1's octal 8 and base-60 750); as in 1.1,
# `1_000` is 1000, and `0x1F` the only other base.
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_NUMBER_TAGS = ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int")


class _Loader(yaml.SafeLoader):
    """YAML with 1.2-style numbers (above)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NUMBER_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))


class _Dumper(yaml.SafeDumper):
    """Writes every string that `_Loader` would read as a number (`"1e5"`) in quotes."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def dump_yaml(data: Any) -> str:
    """YAML text that `read_yaml` reads back as `data`: how splitray writes configs and settings."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def read_yaml(text: str) -> Any:
    """Parse YAML text the way every splitray file and override is parsed."""
    return yaml.load(text, Loader=_Loader)


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what is wrong and where (PyYAML's message spans lines)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    mark = getattr(error, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


class ConfigError(ValueError):
    """A config value is not allowed; the message is one line naming the field, the value and the rule."""


def _choices(*values: str) -> dict:
    return {"choices": values}


def _range(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> dict:
    return {"lo": lo, "hi": hi, "lo_open": lo_open}


def ceil_product(a: float, b: float) -> int:
    """ceil(a * b) of the decimal values: 0.55 * 100 is 55.00000000000001 in binary floating
    point, whose ceiling would be 56 (a relative margin far above float's rounding error)."""
    return math.ceil(a * b * (1 - 1e-12))


@dataclass
class ModelConfig:
    name: str = "vgg11"
    split_layer: int = field(default=5, metadata=_range(0))
    head: str = field(default="auto", metadata=_choices("auto", "cifar", "imagenet"))


@dataclass
class DataConfig:
    name: str = field(default="synthetic", metadata=_choices(
        "synthetic", "cifar10", "cifar100", "stl10", "imagefolder"))
    root: str | None = None  # None: $SPLITRAY_DATA
    download: bool = False
    num_classes: int = field(default=10, metadata=_range(2))  # synthetic only; real sets fix it
    image_size: int | None = field(default=None, metadata=_range(8))  # None: the set's own size
    channels: int = field(default=3, metadata=_range(1))  # synthetic only
    train_samples: int | None = field(default=None, metadata=_range(1))  # subsample (None: all)
    test_samples: int | None = field(default=None, metadata=_range(1))
    partition: str = field(default="iid", metadata=_choices("iid", "dirichlet", "shards"))
    dirichlet_alpha: float = field(default=0.5, metadata=_range(0, lo_open=True))
    shards_per_client: int = field(default=2, metadata=_range(1))
    augment: bool = False


@dataclass
class CompressionConfig:
    enabled: bool = True
    resolution_factor: int = field(default=1, metadata=_range(1, 4))  # r
    channels: int | None = field(default=None, metadata=_range(1))  # phi; None: keep phi~
    mask: str = field(default="sigmoid", metadata=_choices("sigmoid", "sigmoid_squared"))
    encoder_sigmoid: bool = False
    filter_init: str = field(default="zeros", metadata=_choices("zeros", "authors"))
    # "paper": the module as arXiv 2311.05739 §3.1 states it; "authors": amudvari/VCCprune's code
    # (sent = sigmoid(f^)^3 x sigmoid(BN(conv)) with the sigmoid(f^)^2 mask constant for autograd,
    # BN momentum 0.03 eps 1e-4, raw-f^ resets at 0.9) but for two differences: the wire codec
    # rounds after the mask, not before it, and exactly B channels go (ranked by f^, where their
    # np.partition on tied masks can let more through); implies, and ignores, the three above
    variant: str = field(default="paper", metadata=_choices("paper", "authors"))
    epsilon: float = field(default=1.0, metadata=_range(0))
    delta: float = field(default=0.001, metadata=_range(0, lo_open=True))
    lam: float = field(default=1.0, metadata=_range(0, 1))  # lambda of the prune loss
    codec_up: str = field(default="fp32", metadata=_choices(
        "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8"))
    codec_down: str = field(default="fp32", metadata=_choices(
        "fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8"))


@dataclass
class Phase:
    budget: int | None = field(default=None, metadata=_range(1))  # None: all channels
    epochs: int = field(default=1, metadata=_range(1))


@dataclass
class ScheduleConfig:
    phases: list[Phase] = field(default_factory=lambda: [Phase()])
    gamma: float = field(default=1.0, metadata=_range(0, lo_open=True))  # selectLr boost factor
    boost_epochs: int = field(default=0, metadata=_range(0))  # l_k
    reset_filter: bool = True  # the paper's filter reset between phases


# The training schemes under splitray/algorithms/ (one file each); named here so that a config is
# validated without importing them.
ALGORITHM_NAMES = ("parallel_sl", "vanilla_sl", "splitfed", "async_sl", "edgesplit", "epsl", "prune")


@dataclass
class TrainConfig:
    algorithm: str = field(default="parallel_sl", metadata=_choices(*ALGORITHM_NAMES))
    batch_size: int = field(default=16, metadata=_range(1))
    lr: float = field(default=0.01, metadata=_range(0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0, 1))
    weight_decay: float = field(default=5e-4, metadata=_range(0))
    steps_per_epoch: int | None = field(default=None, metadata=_range(1))  # cap; None: whole shard
    eval_batch_size: int = field(default=256, metadata=_range(1))
    # EPSL's aggregation ratio: the share of each batch's positions whose last-layer gradients the
    # server averages over the clients and back-propagates once (0: parallel SL)
    phi: float = field(default=0.0, metadata=_range(0, 1))
    # EPSL with phi > 0 (any other run shuffles, whatever this says): what a batch position holds.
    # by_class: position j of every client's batch holds class j mod C while its shard has one
    # left (turning with the epoch when a batch is smaller than C), so the server averages like
    # with like; shuffled: the shuffled shard, as parallel SL's
    phi_positions: str = field(default="by_class", metadata=_choices("by_class", "shuffled"))

    def shared_positions(self) -> int:
        """EPSL's m = ceil(phi * batch_size): the positions of each batch whose last-layer
        gradients the server aggregates over the clients (0 for every other algorithm)."""
        return ceil_product(self.phi, self.batch_size) if self.algorithm == "epsl" else 0


@dataclass
class VanillaConfig:
    """Vanilla split learning: clients take turns and hand the client part on via the server."""

    order: str = field(default="sequential", metadata=_choices("sequential", "random"))
    handoff: str = field(default="epoch", metadata=_choices("epoch", "batch"))  # turn length


@dataclass
class SplitFedConfig:
    """SplitFed: FedAvg of the client parts every `every_rounds` rounds (None: every epoch)."""

    every_rounds: int | None = field(default=None, metadata=_range(1))


@dataclass
class EdgeSplitConfig:
    """EdgeSplit: per-client split points and bandwidth shares (from `splitray plan` unless
    clients.split_layers is given); whole models averaged layer by layer every `every_rounds`
    rounds (None: every epoch; 0: never, the client parts stay apart as parallel SL's do), the
    server's copies averaged among themselves every `server_every_rounds` rounds (None: only with
    the whole models), in the server's memory."""

    every_rounds: int | None = field(default=None, metadata=_range(0))
    server_every_rounds: int | None = field(default=1, metadata=_range(1))


@dataclass
class PlanConfig:
    """What `splitray plan` (and EdgeSplit, EPSL, `allocation: planned`) may choose from."""

    # Split points to choose among; None: every one whose client part has weights, so the raw
    # input never leaves a device
    split_layers: list[int] | None = None


@dataclass
class AsyncConfig:
    """Loss-based asynchronous SL (Chen et al.): per-client states A -> B -> C -> A, per epoch."""

    loss_threshold: float = field(default=0.01, metadata=_range(0))  # A -> B below this gain
    min_epochs_a: int = field(default=1, metadata=_range(1))  # epochs in A before a check
    epochs_b: int = field(default=1, metadata=_range(0))  # epochs in B (send only) before C
    epochs_c: int = field(default=1, metadata=_range(0))  # epochs in C (silent) before A


@dataclass
class CheckpointConfig:
    """When a run saves everything it needs to continue (`splitray run --resume RUN_DIR`)."""

    every_epochs: int | None = field(default=None, metadata=_range(1))  # also at each phase end


@dataclass
class FaultsConfig:
    """How many actor deaths (client or server) a run survives; each one rolls the run back to
    its last checkpoint (or its start) and replays from there, so no row is lost or doubled."""

    max_failures: int = field(default=3, metadata=_range(0))


@dataclass
class ClientsConfig:
    count: int = field(default=1, metadata=_range(1))
    # logical CPUs per client; Ray counts them in steps of 0.0001
    num_cpus: float = field(default=1.0, metadata=_range(0.0001))
    devices: list[Any] = field(default_factory=lambda: ["laptop_cpu"])  # cycled over clients
    cpu_share: float = field(default=1.0, metadata=_range(0, 1, lo_open=True))  # e.g. 0.4 core
    # Each client's split point, cycled over clients like devices; None: model.split_layer for all
    split_layers: list[int] | None = None
    # Clients that take part in a round, drawn (seeded, uniform) among those online at its start;
    # None: every client each round. An epoch is as many rounds as its steps need at that rate.
    per_round: int | None = field(default=None, metadata=_range(1))
    # Over-selection: draw ceil(per_round x over_selection) and keep the first per_round payloads
    # to arrive (the others are dropped as late), as FedScale does.
    over_selection: float = field(default=1.0, metadata=_range(1))
    round_deadline_s: float | None = field(default=None, metadata=_range(0, lo_open=True))


@dataclass
class NetworkConfig:
    shared: Any = None  # a link profile or spec all clients share (see SharedMedium); None: own links
    links: list[Any] = field(default_factory=lambda: ["lte"])  # own links, cycled over clients
    traces_root: str | None = None  # None: $SPLITRAY_DATA/net-traces/cellular
    # none: every trace link replays from its start; random: each client from a seeded offset
    # within the trace, so clients on the same trace file are not perfectly correlated
    trace_offset: str = field(default="none", metadata=_choices("none", "random"))


@dataclass
class AvailabilityConfig:
    """When each client is online: always, a seeded synthetic on/off process, or a trace file
    (CSV `client_id,start_s,end_s`, one online interval per line; clients not in it: always)."""

    kind: str = field(default="always", metadata=_choices("always", "synthetic", "file"))
    mean_on_s: float = field(default=600.0, metadata=_range(0, lo_open=True))
    mean_off_s: float = field(default=300.0, metadata=_range(0, lo_open=True))
    path: str | None = None


@dataclass
class ServerConfig:
    device: Any = "server_cpu"
    num_cpus: float = field(default=1.0, metadata=_range(0.0001))
    num_gpus: str = field(default="auto", metadata=_choices("auto", "0", "1"))


@dataclass
class EngineConfig:
    time_mode: str = field(default="simulated", metadata=_choices("simulated", "realtime"))
    compute_time: str = field(default="flops", metadata=_choices("flops", "measured"))
    measured_scale: float = field(default=1.0, metadata=_range(0, lo_open=True))
    ray_address: str | None = None  # None: connect to a running cluster if any, else start one
    # Ray engine: an actor per client, or clients as state on a pool of worker actors; auto:
    # actors when every client's num_cpus fits the cluster next to the server, else the pool.
    clients: str = field(default="auto", metadata=_choices("auto", "actors", "pool"))
    pool_workers: int | None = field(default=None, metadata=_range(1))  # None: from the CPUs
    pool_capacity: int = field(default=64, metadata=_range(1))  # live clients a worker keeps
    # Client forwards the Ray engine runs ahead of the server. None: 2 per pool worker; with an
    # actor each, as many as fit on the CPUs the server leaves free (on a one-node cluster, of
    # the node's cores: Ray's CPUs are logical and may be declared above them). 0 serialises the
    # forwards with the server's steps: faster when a step alone fills the machine's cores (see
    # the README).
    prefetch: int | None = field(default=None, metadata=_range(0))


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = field(default=0, metadata=_range(0, 2**53))  # clients' torch seeds: roles.client_seed
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    vanilla: VanillaConfig = field(default_factory=VanillaConfig)
    splitfed: SplitFedConfig = field(default_factory=SplitFedConfig)
    edgesplit: EdgeSplitConfig = field(default_factory=EdgeSplitConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    async_sl: AsyncConfig = field(default_factory=AsyncConfig)
    clients: ClientsConfig = field(default_factory=ClientsConfig)
    availability: AvailabilityConfig = field(default_factory=AvailabilityConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)

    @property
    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.schedule.phases)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return dump_yaml(self.to_dict())


def split_layer_of(cfg: ExperimentConfig, client_id: int) -> int:
    """The split point of one client: its entry of clients.split_layers (cycled), else
    model.split_layer."""
    layers = cfg.clients.split_layers
    return layers[client_id % len(layers)] if layers else cfg.model.split_layer


def _describe(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check value against a type hint (dataclasses, lists, optionals, scalars) and build the object."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path}: {value!r} is not allowed; expected {_describe(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected a list")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):  # NaN would pass every bound check below
            raise ConfigError(f"{path}: {value!r} is not allowed; expected a finite number")
        return number
    if tp is str:
        if not isinstance(value, str | int) or isinstance(value, bool):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected a string")
        return str(value)
    raise TypeError(f"unsupported config type {tp!r} at {path}")


def _check_field(f: dataclasses.Field, value: Any, path: str, raw: Any) -> None:
    """Check choices and bounds; messages show the value as the user wrote it."""
    meta = f.metadata
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        allowed = ", ".join(meta["choices"])
        raise ConfigError(f"{path}: {raw!r} is not allowed; choose one of {allowed}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value < lo or (meta.get("lo_open") and value == lo)):
        bound = f"> {lo}" if meta.get("lo_open") else f">= {lo}"
        rule = f"must be {bound}" + (f" and <= {hi}" if hi is not None else "")
        raise ConfigError(f"{path}: {raw!r} is not allowed; {rule}")
    if hi is not None and value > hi:
        raise ConfigError(f"{path}: {raw!r} is not allowed; must be <= {hi}")


def _build(cls: type, data: Any, path: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: {data!r} is not allowed; expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed keys are {', '.join(fields)}")
    kwargs = {}
    for name, f in fields.items():
        if name not in data:
            continue
        sub = f"{path}.{name}" if path else name
        if "choices" in f.metadata and not isinstance(data[name], str | int | None):
            raise ConfigError(f"{sub}: {data[name]!r} is not allowed; choose one of "
                              f"{', '.join(f.metadata['choices'])}")
        value = _convert(data[name], hints[name], sub)
        _check_field(f, value, sub, data[name])
        kwargs[name] = value
    return cls(**kwargs)


def _check_semantics(cfg: ExperimentConfig) -> None:
    """Cross-field rules that a single field's type cannot express."""
    from splitray.models import MODEL_NAMES
    from splitray.network import DEVICE_PROFILES, LINK_PROFILES

    if not _RUN_NAME.fullmatch(cfg.name):
        # The name starts the run directory's name: it must not reach outside --out.
        raise ConfigError(f"name: {cfg.name!r} is not allowed; use letters, digits, '.', '_' "
                          "and '-' (at most 64, not starting with '.')")

    if cfg.model.name not in MODEL_NAMES:
        raise ConfigError(f"model.name: {cfg.model.name!r} is not allowed; choose one of "
                          f"{', '.join(MODEL_NAMES)}")
    if not cfg.schedule.phases:
        raise ConfigError("schedule.phases: [] is not allowed; give at least one {budget, epochs}")
    if not cfg.compression.enabled:
        for i, p in enumerate(cfg.schedule.phases):
            if p.budget is not None:
                raise ConfigError(f"schedule.phases[{i}].budget: {p.budget!r} is not allowed when "
                                  "compression.enabled is false; use null (all channels)")
    if not cfg.clients.devices:
        raise ConfigError("clients.devices: [] is not allowed; name at least one device profile")
    for i, d in enumerate(cfg.clients.devices):
        if isinstance(d, str) and d not in DEVICE_PROFILES:
            raise ConfigError(f"clients.devices[{i}]: {d!r} is not allowed; choose one of "
                              f"{', '.join(DEVICE_PROFILES)} or give {{name, flops_per_s}}")
    if cfg.train.algorithm == "prune":
        budgets = [math.inf if p.budget is None else p.budget for p in cfg.schedule.phases]
        for i in range(1, len(budgets)):
            if budgets[i] >= budgets[i - 1]:
                raise ConfigError(f"schedule.phases[{i}].budget: {cfg.schedule.phases[i].budget!r} "
                                  "is not allowed for prune; each phase's budget must be smaller "
                                  "than the one before (null: all channels, the largest)")
    if cfg.data.name == "imagefolder" and cfg.data.download:
        raise ConfigError("data.download: true is not allowed with data.name imagefolder; an "
                          "image folder is read from data.root, never downloaded")
    if cfg.train.phi > 0 and cfg.train.algorithm != "epsl":
        raise ConfigError(f"train.phi: {cfg.train.phi!r} is not allowed with train.algorithm "
                          f"{cfg.train.algorithm}; it is EPSL's (train.algorithm: epsl)")
    if cfg.train.phi > 0 and cfg.compression.enabled:
        raise ConfigError(f"train.phi: {cfg.train.phi!r} is not allowed with compression.enabled "
                          "true; EPSL averages the clients' activations, which needs them whole "
                          "(set compression.enabled: false, or phi: 0)")
    sampled = (cfg.clients.per_round is not None or cfg.availability.kind != "always"
               or cfg.clients.over_selection > 1 or cfg.clients.round_deadline_s is not None)
    if sampled and cfg.train.algorithm in ("vanilla_sl", "async_sl"):
        raise ConfigError(f"train.algorithm: {cfg.train.algorithm!r} is not allowed with client "
                          "sampling or availability (clients.per_round, over_selection, "
                          "round_deadline_s, availability); it takes every client by turn or by "
                          "state: use parallel_sl, splitfed, edgesplit, epsl or prune")
    drops = (cfg.availability.kind != "always" or cfg.clients.over_selection > 1
             or cfg.clients.round_deadline_s is not None)
    if drops and cfg.train.algorithm == "epsl":
        raise ConfigError("train.algorithm: 'epsl' is not allowed with availability, "
                          "over_selection or round_deadline_s; its aggregated gradient waits for "
                          "every client of the round (clients.per_round alone is allowed)")
    shared = cfg.network.shared
    if (cfg.train.algorithm == "vanilla_sl" and isinstance(shared, dict)
            and shared.get("allocation") == "planned"):
        raise ConfigError("network.shared: allocation 'planned' is not allowed with "
                          "train.algorithm vanilla_sl; the planner shares the access point among "
                          "clients that send at once, and vanilla SL's take turns (give shares, "
                          "or leave allocation out for processor sharing)")
    if cfg.clients.over_selection > 1 and cfg.clients.per_round is None:
        raise ConfigError(f"clients.over_selection: {cfg.clients.over_selection!r} is not allowed "
                          "without clients.per_round (the payloads to keep)")
    if cfg.availability.kind == "file" and not cfg.availability.path:
        raise ConfigError("availability.path: null is not allowed with availability.kind file; "
                          "give the CSV file (client_id,start_s,end_s)")
    if cfg.clients.split_layers is not None:
        if not cfg.clients.split_layers:
            raise ConfigError("clients.split_layers: [] is not allowed; give split points or null")
        for i, s in enumerate(cfg.clients.split_layers):
            if s < 0:
                raise ConfigError(f"clients.split_layers[{i}]: {s!r} is not allowed; must be >= 0")
    links = [(f"network.links[{i}]", s) for i, s in enumerate(cfg.network.links)]
    if cfg.network.shared is not None:
        links.append(("network.shared", cfg.network.shared))
    elif not links:
        raise ConfigError("network.links: [] is not allowed; name a link profile or set network.shared")
    for where, spec in links:
        if isinstance(spec, str) and spec not in LINK_PROFILES:
            raise ConfigError(f"{where}: {spec!r} is not allowed; choose one of "
                              f"{', '.join(LINK_PROFILES)} or give a link spec mapping")
        kind = (LINK_PROFILES[spec] if isinstance(spec, str) else spec).get("kind") \
            if isinstance(spec, str | dict) else None  # not a spec: building it says why
        # One medium for all clients goes in network.shared; network.links are each client's own.
        if where == "network.shared" and kind in ("constant", "trace"):
            raise ConfigError(f"network.shared: {spec!r} is not allowed; it is a link of kind "
                              f"{kind!r}, not one medium shared by the clients (e.g. "
                              "wifi6_shared, or kind: shared); own links go in network.links")
        if where != "network.shared" and kind == "shared":
            raise ConfigError(f"{where}: {spec!r} is not allowed; a shared medium goes in "
                              "network.shared (network.links are each client's own link)")
    if isinstance(cfg.server.device, str) and cfg.server.device not in DEVICE_PROFILES:
        raise ConfigError(f"server.device: {cfg.server.device!r} is not allowed; choose one of "
                          f"{', '.join(DEVICE_PROFILES)}")


def config_from_dict(data: dict) -> ExperimentConfig:
    """Build and validate a config from plain data; raises ConfigError on the first bad value."""
    cfg = _build(ExperimentConfig, data, "")
    _check_semantics(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """Split `a.b=value`; the value is read as YAML so numbers, lists and null work."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set: {text!r} is not allowed; expected key=value, e.g. train.lr=0.01")
    try:
        value = read_yaml(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}: {raw!r} is not valid YAML ({yaml_problem(e)})") from None
    return key.strip(), value


def parse_key(key: str) -> list[str | int]:
    """`schedule.phases[0].budget` -> ['schedule', 'phases', 0, 'budget']."""
    parts: list[str | int] = []
    for segment in key.split("."):
        m = _SEGMENT.fullmatch(segment)
        if m is None:
            raise ConfigError(f"{key}: not a config key; expected dotted names such as "
                              "compression.epsilon or schedule.phases[0].budget")
        parts.append(m.group(1))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return parts


def set_dotted(data: dict, key: str, value: Any) -> None:
    """Set a value at a dotted key with optional list indices, e.g. `schedule.phases[0].budget`."""
    parts = parse_key(key)
    node: Any = data
    for depth, part in enumerate(parts[:-1]):
        nxt = parts[depth + 1]
        if isinstance(part, int):
            child = node[part]
        else:
            child = node.get(part)
            if child is None and isinstance(nxt, str):
                child = node[part] = {}
        where = ".".join(str(p) for p in parts[:depth + 1])
        if isinstance(nxt, int):
            if not isinstance(child, list):
                raise ConfigError(f"{key}: {where} is not a list in the config")
            if nxt >= len(child):
                raise ConfigError(f"{key}: index {nxt} is out of range; {where} has "
                                  f"{len(child)} items in the config")
        elif not isinstance(child, dict):
            raise ConfigError(f"{key}: cannot set inside {where}, which is not a mapping")
        node = child
    node[parts[-1]] = copy.deepcopy(value)


def read_yaml_file(path: str | Path, what: str) -> Any:
    """Parse a YAML file, a local path or a URI (a run's config.yaml in an object store, which
    `--resume` and `infer` read); a missing file or bad YAML is a ConfigError naming `what`."""
    path = str(path)
    if "://" in path:
        from splitray.metrics import read_bytes

        try:
            text = read_bytes(path).decode()
        except (OSError, ValueError) as e:
            raise ConfigError(f"{what}: {path!r} cannot be read ({e})") from None
    elif not Path(path).is_file():
        # `splitray run quickstart`: name the experiment file it probably meant
        p = Path(path)
        near = Path("experiments") / (p.name if p.suffix in (".yaml", ".yml") else f"{p.name}.yaml")
        hint = (f" (did you mean {near}?)" if what == "config" and near.is_file() and near != p
                else "")
        raise ConfigError(f"{what}: {path!r} is not a file{hint}")
    else:
        text = Path(path).read_text()
    try:
        return read_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {path!r} is not valid YAML: {yaml_problem(e)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> ExperimentConfig:
    """Read a YAML config (or start from `base`), apply `a.b=c` overrides, validate."""
    data: dict = copy.deepcopy(base) if base else {}
    if path is not None:
        shown = repr(str(path))
        loaded = read_yaml_file(path, "config")
        if loaded is None:
            raise ConfigError(f"config: {shown} is empty; start from a file in experiments/, "
                              "e.g. experiments/quickstart.yaml")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config: {shown} must hold a mapping at the top level")
        data.update(loaded)
    for text in overrides or []:
        set_dotted(data, *parse_override(text))
    return config_from_dict(data)
