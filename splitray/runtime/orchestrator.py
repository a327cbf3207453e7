"""Build a run from its config (data, clients, server, network, timeline) and drive the algorithm."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from splitray.algorithms import ALGORITHMS
from splitray.availability import Availability
from splitray.config import ConfigError, ExperimentConfig, load_config, split_layer_of
from splitray.data import (
    ArrayDataset,
    ClientShards,
    DataFileError,
    DownloadError,
    SampleCountError,
    load_dataset,
    partition,
)
from splitray.metrics import (
    CLIENT_EVALS_TABLE,
    EVALS_TABLE,
    RUN_CONFIG_FILE,
    RUN_TABLES,
    SCHEMA_VERSION,
    STEPS_TABLE,
    check_output_dir,
    claim_dir,
    drop_parts_after,
    join_path,
    manifest,
    now_iso,
    read_bytes,
    read_table,
    table_exists,
    write_manifest,
    write_text,
)
from splitray.network import (
    DeviceProfile,
    Link,
    NetworkModel,
    TraceLink,
    build_link,
)
from splitray.planning import (
    check_batch_norm_batches,
    device_profiles,
    planned_config,
    split_channels,
)
from splitray.roles import ClientRole, ServerRole
from splitray.runtime.context import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT,
    EpochCallback,
    RunContext,
    RunDiverged,
    RunFailed,
    RunInterrupted,
    load_tensors,
)
from splitray.runtime.peers import (
    ActorRestarted,
    LocalPeer,
    Peer,
    Peers,
    PoolClient,
    RayPeer,
    get_local,
    get_ray,
)
from splitray.runtime.timeline import Timeline

ENGINES = ("ray", "local")


@dataclass
class RunResult:
    """A finished run: where it was written and its tables."""

    run_id: str
    run_dir: str | None
    steps: pd.DataFrame
    evals: pd.DataFrame
    client_evals: pd.DataFrame  # each client's accuracy on its own test slice, every epoch
    summary: dict  # algorithm-specific results, also in the manifest (e.g. async SL's savings)


@dataclass
class Prepared:
    """Everything a run needs, built and checked before any training or writing starts."""

    cfg: ExperimentConfig
    train: ArrayDataset
    test: ArrayDataset
    train_parts: list[np.ndarray]  # each client's sample indices into `train`
    test_parts: list[np.ndarray]   # each client's test slice of `test`
    num_classes: int
    input_shape: tuple[int, int, int]
    num_channels: int  # at model.split_layer
    client_channels: list[int]  # at each client's split point
    devices: list[DeviceProfile]
    server_device: DeviceProfile
    network: NetworkModel
    availability: Availability

    def shards(self) -> ClientShards:
        return ClientShards(self.train, self.test, self.train_parts, self.test_parts)


def _load(cfg: ExperimentConfig, split: str) -> ArrayDataset:
    d = cfg.data
    field_name = "train_samples" if split == "train" else "test_samples"
    try:
        return load_dataset(
            d.name, split, d.root, download=d.download, num_samples=getattr(d, field_name),
            image_size=d.image_size, num_classes=d.num_classes, channels=d.channels,
            seed=cfg.seed)
    except SampleCountError as e:
        raise ConfigError(f"data.{field_name}: {getattr(d, field_name)} is not allowed; the "
                          f"{d.name} {split} split has {e.available} samples") from None
    except DownloadError as e:
        raise ConfigError(f"data.download: {e} (check the network and data.root, or copy the "
                          "files into data.root by hand)") from None
    except (FileNotFoundError, DataFileError) as e:
        raise ConfigError(f"data.root: {d.root!r} is not allowed; {e}") from None


def prepare(cfg: ExperimentConfig) -> Prepared:
    """Load data, partition it, build the network and devices; every check before any work.
    A config that leaves split points or shares to the planner gets them here."""
    cfg = planned_config(cfg)
    num_channels, client_channels = split_channels(cfg)
    train = _load(cfg, "train")
    test = _load(cfg, "test")
    input_shape = tuple(train.images.shape[1:])
    n = cfg.clients.count
    if n > len(train):
        raise ConfigError(f"clients.count: {n} is not allowed; the {len(train)} training samples "
                          "give each client at most one")
    if cfg.data.partition == "shards" and n * cfg.data.shards_per_client > len(train):
        raise ConfigError(f"data.shards_per_client: {cfg.data.shards_per_client} is not allowed; "
                          f"{n} clients x {cfg.data.shards_per_client} shards exceed the "
                          f"{len(train)} training samples")
    parts = partition(train.labels.numpy(), n, cfg.data.partition, alpha=cfg.data.dirichlet_alpha,
                      shards_per_client=cfg.data.shards_per_client, seed=cfg.seed)
    if any(len(p) < 1 for p in parts):
        raise ConfigError(f"clients.count: {n} is not allowed; some clients get no training data")
    shared = cfg.train.shared_positions()
    smallest = min(range(n), key=lambda i: len(parts[i]))
    if len(parts[smallest]) < shared:
        raise ConfigError(
            f"train.phi: {cfg.train.phi} is not allowed with these shards; EPSL aggregates the "
            f"first {shared} positions of every batch, and client {smallest}'s batch holds only "
            f"its {len(parts[smallest])} samples (raise data.train_samples or lower train.phi, "
            "train.batch_size or the partition's skew)")
    check_batch_norm_batches(cfg, [len(p) for p in parts])
    if n > len(test):
        raise ConfigError(f"data.test_samples: {len(test)} test samples are not allowed for "
                          f"{n} clients; every client evaluates on its own slice, give >= {n}")
    test_parts = np.array_split(np.arange(len(test)), n)
    devices, server_device = device_profiles(cfg)
    try:
        network = network_model(cfg)
    except FileNotFoundError as e:
        raise ConfigError(f"{_network_key(cfg)}: {e}") from None
    return Prepared(cfg, train, test, parts, test_parts, train.num_classes, input_shape,
                    num_channels, client_channels, devices, server_device, network,
                    _availability(cfg))


def _availability(cfg: ExperimentConfig) -> Availability:
    """When each client is online, from the config's availability section."""
    a, n = cfg.availability, cfg.clients.count
    if a.kind == "synthetic":
        return Availability.synthetic(n, a.mean_on_s, a.mean_off_s, cfg.seed)
    if a.kind == "file":
        try:
            return Availability.from_file(a.path, n)
        except (OSError, ValueError) as e:
            raise ConfigError(f"availability.path: {a.path!r} is not allowed; {e}") from None
    return Availability.always_online(n)


def network_model(cfg: ExperimentConfig) -> NetworkModel:
    """cfg's network as a run builds it; a ConfigError naming the key for a bad link spec (a
    missing trace file raises FileNotFoundError, as missing data does)."""
    try:
        return NetworkModel(_links(cfg), seed=cfg.seed)
    except ValueError as e:
        raise ConfigError(f"{_network_key(cfg)}: {e}") from None


def _network_key(cfg: ExperimentConfig) -> str:
    return "network.shared" if cfg.network.shared is not None else "network.links"


def _links(cfg: ExperimentConfig) -> dict[int, Link]:
    """Each client's link: the one shared medium, or own links cycled over the clients (trace
    links replayed from a seeded random offset each when network.trace_offset is random)."""
    net, n = cfg.network, cfg.clients.count
    if net.shared is not None:
        return dict.fromkeys(range(n), build_link(net.shared, net.traces_root))
    links: dict[int, Link] = {}
    for i in range(n):
        link = build_link(net.links[i % len(net.links)], net.traces_root)
        if isinstance(link, TraceLink) and net.trace_offset == "random":
            period_ms = max(link.up.period_ms, link.down.period_ms)
            offset_ms = np.random.default_rng([cfg.seed, i]).integers(period_ms)
            link = link.shifted(int(offset_ms))
        links[i] = link
    return links


def run_id_for(cfg: ExperimentConfig) -> str:
    digest = hashlib.sha1(cfg.to_yaml().encode()).hexdigest()[:8]
    return f"{cfg.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}-{digest}"


def start_ray(address: str | None, quiet: bool) -> None:
    """Start or join the Ray cluster at `address` (None: a local one) from this driver. `quiet`:
    Ray's own info and warning lines (its start, token authentication) stay out of the driver's
    output; errors and the actors' output still show."""
    import threading

    import ray

    ray.init(address=address, log_to_driver=True,
             logging_level=logging.ERROR if quiet else logging.INFO)
    if threading.current_thread() is threading.main_thread():
        # Ray's C++ core installs a crash handler for SIGTERM over Ray's Python one: it prints a
        # stack dump and, when the signal reaches the driver alone (`ray job stop`), the driver
        # aborted (exit 134) without ending the run. Installing the Python handler again
        # replaces the C++ one: the run ends `interrupted` with splitray's line alone.
        signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGTERM))


def _ray_peers(p: Prepared, quiet: bool = False) -> Peers:
    import ray

    from splitray.runtime.actors import ACTOR_RUNTIME_ENV, ClientActor, ServerActor, put_shards
    from splitray.runtime.pool import ClientPool, PoolWorker, pool_size, uses_pool

    cfg = p.cfg
    if not ray.is_initialized():
        start_ray(cfg.engine.ray_address, quiet)
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    num_gpus = {"auto": 1 if gpus >= 1 else 0, "0": 0, "1": 1}[cfg.server.num_gpus]
    if num_gpus > gpus:
        raise ConfigError(f"server.num_gpus: {cfg.server.num_gpus!r} is not allowed; the Ray "
                          "cluster has no GPU")
    need = cfg.clients.count * cfg.clients.num_cpus + cfg.server.num_cpus
    on_pool = uses_pool(cfg, cpus)
    num_workers = pool_size(cfg, cpus)
    trial = ray.util.get_current_placement_group()
    if trial is not None:  # a Tune trial: its bundles are the driver, the server, the clients'
        processes = len(trial.bundle_specs) - 2
        on_pool, num_workers, cpus = processes < cfg.clients.count or on_pool, processes, math.inf
    if on_pool and num_workers * cfg.clients.num_cpus + cfg.server.num_cpus > cpus + 1e-9:
        if num_workers > 1:  # only engine.pool_workers asks for more than fit
            raise ConfigError(
                f"engine.pool_workers: {cfg.engine.pool_workers} is not allowed; {num_workers} "
                f"pool workers x clients.num_cpus {cfg.clients.num_cpus} and the server at "
                f"{cfg.server.num_cpus} exceed the cluster's {cpus:g} CPUs (Ray resources are "
                "logical: lower them)")
        raise ConfigError(
            f"clients.num_cpus: {cfg.clients.num_cpus} is not allowed; a pool worker at that and "
            f"the server at {cfg.server.num_cpus} exceed the cluster's {cpus:g} CPUs (Ray "
            "resources are logical: lower them)")
    if not on_pool and need > cpus + 1e-9:
        raise ConfigError(
            f"clients.num_cpus: {cfg.clients.num_cpus} is not allowed; {cfg.clients.count} clients "
            f"x {cfg.clients.num_cpus} + server {cfg.server.num_cpus} = {need} CPUs exceed the "
            f"cluster's {cpus:g} (Ray resources are logical: lower them, or set "
            "engine.clients: pool)")
    client_threads = max(1, math.floor(cfg.clients.num_cpus))
    # A dead actor is restarted by Ray (its constructor runs again); the run then hands it the
    # run's data again and restores it.
    restarts = cfg.faults.max_failures
    server = RayPeer(ServerActor.options(num_cpus=cfg.server.num_cpus, num_gpus=num_gpus,
                                         max_restarts=restarts, runtime_env=ACTOR_RUNTIME_ENV).remote(
        max(1, math.floor(cfg.server.num_cpus)), cfg, p.input_shape, p.num_classes,
        "cuda" if num_gpus else "cpu"), "server")
    data = put_shards(p.shards())  # once: every actor on a node maps the same pages
    if on_pool:
        # SPREAD: on a cluster the workers go to every node, not the head's CPUs first; inside
        # a Tune trial's placement group they take its bundles instead.
        spread = {} if trial is not None else {"scheduling_strategy": "SPREAD"}
        workers = [PoolWorker.options(num_cpus=cfg.clients.num_cpus, max_restarts=restarts,
                                      runtime_env=ACTOR_RUNTIME_ENV, **spread)
                   .remote(client_threads, cfg, first_client=w)
                   for w in range(num_workers)]
        pool = ClientPool(workers, cfg.engine.pool_capacity)
        clients: list[Peer] = [PoolClient(pool, i) for i in range(cfg.clients.count)]
        return Peers(clients, server, get_ray,
                     [server, *(RayPeer(w, f"pool worker {k}", data)
                                for k, w in enumerate(workers))], pool,
                     prefetch=_prefetch(cfg, 2 * len(workers)))
    actors = [RayPeer(ClientActor.options(num_cpus=cfg.clients.num_cpus, max_restarts=restarts,
                                          runtime_env=ACTOR_RUNTIME_ENV)
                      .remote(client_threads, i, cfg), f"client {i}", data)
              for i in range(cfg.clients.count)]
    server_cpus = 0.0 if num_gpus else cfg.server.num_cpus
    if trial is None:
        cpus = min(cpus, _one_node_cores())
    return Peers(list(actors), server, get_ray, [server, *actors],
                 prefetch=_prefetch(cfg, forwards_beside_server(
                     len(actors), cpus, server_cpus, client_threads)))


def _one_node_cores() -> float:
    """The cores this process may run on when the Ray cluster is this one node, else inf. Ray's
    CPUs are logical, so a cluster may declare more than the node has; a forward ahead of the
    server gains only on a core the server's step leaves idle."""
    import ray

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) != 1 or nodes[0]["NodeID"] != ray.get_runtime_context().get_node_id():
        return math.inf
    if hasattr(os, "sched_getaffinity"):  # Linux: the cores this process is allowed on
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or math.inf  # macOS has no affinity call


def _prefetch(cfg: ExperimentConfig, default: int) -> int:
    """Client forwards to run ahead of the server: engine.prefetch, else `default`."""
    return default if cfg.engine.prefetch is None else cfg.engine.prefetch


def forwards_beside_server(clients: int, cluster_cpus: float, server_cpus: float,
                           client_threads: int) -> int:
    """Client actors' forwards to run ahead of the server by default: as many as fit on the CPUs
    the server's step leaves free (server_cpus 0 for a GPU server; cluster_cpus at most the
    node's cores when the cluster is one node). Beside a step whose threads fill the cores, a
    forward makes both wait at their OpenMP barriers: 8 client actors on 2 cores ran at 0.82 of
    the fused trainer with every forward ahead, 0.93 with none."""
    if math.isinf(cluster_cpus):  # a Tune trial's placement group: each actor has its CPUs
        return clients
    return min(clients, max(0, math.floor((cluster_cpus - server_cpus) / client_threads + 1e-9)))


def _local_peers(p: Prepared) -> Peers:
    cfg = p.cfg
    server = ServerRole(cfg, p.input_shape, p.num_classes, "cpu")
    shards = p.shards()
    clients = [ClientRole(i, cfg, *shards.of(i), p.num_classes) for i in range(cfg.clients.count)]
    return Peers([LocalPeer(c) for c in clients], LocalPeer(server), get_local)


def start_peers(p: Prepared, engine: str, quiet: bool = False) -> Peers:
    """The clients, the server and the way to wait for their results, on `engine`: Ray actors
    ("ray": an actor per client, or a pool of workers holding the clients as state) or objects
    in this process ("local"); once every actor is built and holds the run's data. `quiet`:
    a Ray started here prints no info or warning lines."""
    peers = _ray_peers(p, quiet) if engine == "ray" else _local_peers(p)
    # Wait until every actor is built, so a run's wall clock starts with training; this also
    # notes each actor's incarnation, which the fault checks compare against.
    peers.wait_ready()
    return peers


def run_experiment(cfg: ExperimentConfig, out_dir: str | None = "runs", engine: str = "ray",
                   on_epoch: EpochCallback | None = None, progress: bool = True,
                   run_dir: str | None = None, resume: dict | None = None) -> RunResult:
    """Run one simulation and write its run directory under `out_dir` (or exactly at `run_dir`).

    engine "ray": client and server actors exchanging ObjectRefs; engine "local": the fused
    single-process reference trainer, the same step code called directly. With both `out_dir`
    and `run_dir` None nothing is written. A loss that turns NaN or infinite ends the run with
    status "diverged" and raises RunDiverged; the rows up to that step are written. `progress`
    False: no progress display, and a Ray started here prints no info or warning lines. `resume`
    (from `resume_experiment`) continues the run at `run_dir` from its checkpoint.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine: {engine!r} is not allowed; choose one of {', '.join(ENGINES)}")
    prepared = prepare(cfg)
    cfg = prepared.cfg  # with the planner's split points and shares, if it asked for them
    if out_dir is not None and run_dir is None:
        check_output_dir(out_dir, "--out")
    run_id = resume["manifest"]["run_id"] if resume else run_id_for(cfg)
    if run_dir is not None and not resume and _has_tables(run_dir):
        raise ConfigError(f"run_dir: {run_dir!r} is not allowed; it already holds a run's tables "
                          "(continue it with --resume, or choose another directory)")
    peers = start_peers(prepared, engine, quiet=not progress)
    if run_dir is None and out_dir is not None:  # once the actors started: no empty folders
        try:
            run_id, run_dir = _claim_run_dir(out_dir, run_id)
        except BaseException:
            peers.stop()
            raise
    measured = cfg.engine.compute_time == "measured" or cfg.engine.time_mode == "realtime"
    timeline = Timeline(prepared.network, prepared.devices, prepared.server_device,
                         cpu_share=cfg.clients.cpu_share,
                         compute_time="measured" if measured else "flops",
                         measured_scale=cfg.engine.measured_scale)
    ctx = RunContext(cfg, run_id, run_dir, peers, timeline,
                     [d.name for d in prepared.devices], prepared.num_channels,
                     [split_layer_of(cfg, i) for i in range(cfg.clients.count)],
                     prepared.client_channels, [len(p) for p in prepared.train_parts], on_epoch,
                     progress, prepared.availability)
    started = now_iso()
    extra = {"engine": engine, "config": RUN_CONFIG_FILE, "clients": [
        {"client_id": i, "device": d.name, "link": prepared.network.describe(i),
         "train_samples": len(prepared.train_parts[i])} for i, d in enumerate(prepared.devices)]}
    extra["server_device"] = peers.get(peers.server.call(ServerRole.device_name))
    if peers.pool is not None:
        nodes = peers.pool.nodes()
        extra["pool_workers"], extra["pool_nodes"] = len(nodes), len(set(nodes))
    if resume:
        ctx.resume_from(resume["checkpoint"])
        started = resume["manifest"]["started"]
        # The manifest is rewritten: each resume keeps the faults of the attempt it continues.
        extra["resumes"] = [*resume["manifest"].get("resumes", []),
                            {"at": now_iso(), "engine": engine,
                             "epochs_done": resume["checkpoint"]["epochs_done"],
                             "faults_before": resume["manifest"].get("faults", [])}]
    if run_dir is not None:
        if "://" not in run_dir:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
        write_text(cfg.to_yaml(), join_path(run_dir, RUN_CONFIG_FILE))
        write_manifest(manifest(run_id, cfg.seed, started, None, "running", extra), run_dir)
        if progress:
            print(f"run {run_id} -> {run_dir}", flush=True)
    status = "failed"
    t0 = time.perf_counter()
    faults: list[dict] = []
    try:
        # What a fault rolls back to: the checkpoint resumed from, else a commit at the start.
        first_commit = (engine == "ray" and cfg.faults.max_failures > 0
                        and not ctx.has_committed())
        replay_from = ctx.committed_epochs() if ctx.has_committed() else None
        while True:
            try:
                if replay_from is not None:
                    ctx.rollback()
                elif first_commit:
                    if faults:  # an actor restarted before the first commit: it needs its data
                        peers.wait_ready()
                    ctx.commit()
                ALGORITHMS[cfg.train.algorithm](ctx)
                peers.check_restarts()  # the last rows came from the actors the run started with
                break
            except Exception as error:
                e = error if is_actor_fault(error) else _restart_behind(peers)
                if e is None:
                    raise
                faults.append({"at": now_iso(), "error": fault_line(e),
                               "epochs_done": ctx.epochs_done})
                extra["faults"] = faults
                if len(faults) > cfg.faults.max_failures:
                    raise RunFailed(
                        f"{fault_line(e)}; {len(faults)} faults exceed faults.max_failures = "
                        f"{cfg.faults.max_failures}" + (f"; continue with --resume {run_dir}"
                                                        if ctx.has_checkpoint() else "")) from e
                # Before the first commit nothing ran yet: the run starts again.
                replay_from = ctx.committed_epochs() if ctx.has_committed() else None
                if progress:
                    print(f"fault {len(faults)} of at most {cfg.faults.max_failures}: "
                          f"{fault_line(e)}; replaying from epoch {(replay_from or 0) + 1}",
                          flush=True)
        status = "finished"
    except RunFailed as e:
        extra["reason"], e.run_dir = str(e), run_dir
        raise
    except RunDiverged as e:
        status, extra["reason"], e.run_dir = "diverged", str(e), run_dir
        raise
    except KeyboardInterrupt as e:
        status, extra["reason"] = "interrupted", "interrupted by the user (Ctrl-C)"
        raise RunInterrupted(run_dir, ctx.has_checkpoint(), 128 + signal.SIGINT) from e
    except SystemExit as e:
        if e.code != signal.SIGTERM:  # e.g. Tune ending a trial its scheduler stops: sys.exit(0)
            raise
        # Ray's driver turns SIGTERM (`timeout`, `ray job stop`) into sys.exit(15).
        status, extra["reason"] = "interrupted", "stopped by SIGTERM"
        raise RunInterrupted(run_dir, ctx.has_checkpoint(), 128 + signal.SIGTERM) from e
    finally:
        ctx.flush()
        if run_dir is not None:
            extra["wall_time_s"] = time.perf_counter() - t0
            extra["summary"] = ctx.summary
            write_manifest(manifest(run_id, cfg.seed, started, now_iso(), status, extra), run_dir)
        peers.stop()
    if run_dir is None:
        tables = {name: pd.DataFrame(rows) for name, rows in ctx.rows.items()}
    else:  # the rows were flushed to disk as they came
        tables = {name: read_table(join_path(run_dir, name))
                  if table_exists(join_path(run_dir, name)) else pd.DataFrame()
                  for name in RUN_TABLES}
    return RunResult(run_id, run_dir, tables[STEPS_TABLE], tables[EVALS_TABLE],
                     tables[CLIENT_EVALS_TABLE], ctx.summary)


def is_actor_fault(error: BaseException) -> bool:
    """Whether an error is an actor or its worker process dying (a task that took a dead actor's
    result fails with a RayTaskError that is also the actor error) or an actor found restarted,
    not a bug in a role."""
    from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError

    return isinstance(error, RayActorError | WorkerCrashedError | ObjectLostError | ActorRestarted)


def _restart_behind(peers: Peers) -> BaseException | None:
    """After an error in a role or the driver: the actor fault that may have caused it (an actor
    restarted with fresh state, or dead), or None when every actor is the one the run knew (or
    the check itself fails otherwise: the original error is the one to report)."""
    try:
        peers.check_restarts()
    except Exception as e:
        return e if is_actor_fault(e) else None
    return None


def fault_line(error: BaseException) -> str:
    """An actor fault in one line: its kind and the first line of Ray's message."""
    kind = type(error).__name__
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{kind}: {first[:160]}"


def _has_tables(run_dir: str) -> bool:
    return any(table_exists(join_path(run_dir, name)) for name in RUN_TABLES)


def _claim_run_dir(out_dir: str, run_id: str) -> tuple[str, str]:
    """The run's id and directory under `out_dir`: `run_id`, or `run_id-2`, `-3`... when taken
    (two runs of one config started in the same second), claimed with `claim_dir`."""
    suffix = 1
    while True:
        name = run_id if suffix == 1 else f"{run_id}-{suffix}"
        if claim_dir(join_path(out_dir, name)):
            return name, join_path(out_dir, name)
        suffix += 1


def resume_experiment(run_dir: str, engine: str = "ray", progress: bool = True,
                      on_epoch: EpochCallback | None = None,
                      finished_ok: bool = True) -> RunResult:
    """Continue a killed run from its last checkpoint: the rows written after it are dropped
    first, so the final tables equal those of an uninterrupted run (wall-clock columns aside).
    A finished run goes on from its last checkpoint again (a Tune trial retried after its run
    ended), unless `finished_ok` is False (the command line: there is nothing to continue)."""
    path = join_path(run_dir, CHECKPOINT_FILE)
    if not table_exists(run_dir):
        raise ConfigError(f"--resume: {run_dir!r} is not allowed; there is no such directory")
    if not table_exists(path):
        raise ConfigError(f"--resume: {run_dir!r} is not allowed; it holds no {CHECKPOINT_FILE} "
                          "(set checkpoint.every_epochs to write one)")
    cfg = load_config(join_path(run_dir, RUN_CONFIG_FILE))
    saved = load_tensors(path, "checkpoint")
    if saved.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"--resume: {path} has checkpoint format {saved.get('format')!r}; "
                          f"this splitray reads format {CHECKPOINT_FORMAT}")
    previous = json.loads(read_bytes(join_path(run_dir, "manifest.json")))
    if previous.get("schema_version") != SCHEMA_VERSION:  # a table holds one version's columns
        raise ConfigError(f"--resume: {run_dir!r} is not allowed; its tables have schema version "
                          f"{previous.get('schema_version')!r} and this splitray writes version "
                          f"{SCHEMA_VERSION}: run it again from the start")
    if not finished_ok and previous.get("status") == "finished":
        raise ConfigError(f"--resume: {run_dir!r} is not allowed; the run has finished (status "
                          "'finished' in its manifest): there is nothing to continue")
    drop_parts_after(run_dir, saved["parts"])
    if progress:
        print(f"resuming {previous['run_id']} after epoch {saved['epochs_done']}", flush=True)
    return run_experiment(cfg, out_dir=None, engine=engine, progress=progress, run_dir=run_dir,
                          on_epoch=on_epoch, resume={"checkpoint": saved, "manifest": previous})
