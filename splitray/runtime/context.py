"""What an algorithm sees while it runs: the peers, the timeline and the result tables."""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import io
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from splitray.availability import Availability, sample_clients
from splitray.config import ExperimentConfig, ceil_product
from splitray.metrics import (
    CLIENT_EVALS_TABLE,
    EVALS_TABLE,
    RUN_TABLES,
    STEPS_TABLE,
    append_part,
    atomic_output,
    drop_parts_after,
    join_path,
    read_bytes,
    table_exists,
    table_parts,
)
from splitray.roles import (
    BackwardInfo,
    ClientRole,
    ForwardInfo,
    ServerInfo,
    ServerRole,
    StepCost,
    batch_samples,
)
from splitray.runtime.peers import Peer, Peers
from splitray.runtime.timeline import Broadcast, ServerWork, StepJob, StepTimes, Timeline
from splitray.schedules import EpochPlan, epoch_plans, reset_kind, scaled_budget

T = TypeVar("T")


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c")).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None


MALLOC_TRIM = _malloc_trim()


def release_freed_heap() -> None:
    """Give the pages of freed memory in glibc's heaps back to the OS. The driver frees an epoch's
    rows, task results and small client states from several threads' heaps, and glibc keeps such
    pages (30-90 MB of a 2,000-client tiny_cnn run's driver after each epoch)."""
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


# Called after each epoch with its evals row and, when a checkpoint was just written, its path.
EpochCallback = Callable[[dict, str | None], None]
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = 2
MODELS_DIR = "models"  # prune's model set: one file per budget
MODEL_FORMAT = 1


def load_tensors(path: str, what: str) -> dict:
    """A checkpoint or model file, read with `torch.load(weights_only=True)`: tensors and plain
    values only, never pickled code; a ConfigError naming the file when it is anything else."""
    from splitray.config import ConfigError

    try:
        return torch.load(io.BytesIO(read_bytes(path)), weights_only=True)
    except Exception as e:  # truncated, or not plain tensors and values
        first_line = str(e).partition("\n")[0][:120]  # empty for an empty file's EOFError
        raise ConfigError(f"{path} is not a {what} splitray can load safely "
                          f"({type(e).__name__}: {first_line})") from None


class RunDiverged(RuntimeError):
    """The training loss became NaN or infinite; the rows up to that step are kept."""

    run_dir: str | None = None


class RunFailed(RuntimeError):
    """The run cannot go on: more actors died than `faults.max_failures` allows (it can go on
    with --resume), or no client is online again for the rest of the availability trace."""

    run_dir: str | None = None


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (`timeout`, `ray job stop`) stopped the run: its manifest says
    `interrupted`; with a checkpoint written, `splitray run --resume RUN_DIR` continues it.
    `exit_code` is the shell's for the signal (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, run_dir: str | None, resumable: bool, exit_code: int) -> None:
        super().__init__(run_dir)
        self.run_dir = run_dir
        self.resumable = resumable
        self.exit_code = exit_code


class Progress:
    """One line per epoch; on a terminal, a live line of the round in progress, elsewhere (a
    log, `ray job logs`) a line every LOG_EVERY_S of a long epoch."""

    LOG_EVERY_S = 30.0

    def __init__(self, total_epochs: int, enabled: bool = True) -> None:
        self.total_epochs = total_epochs
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()
        self._logged_s = time.monotonic()

    def round(self, epoch: int, done: int, total: int, sim_s: float) -> None:
        line = f"  epoch {epoch + 1}/{self.total_epochs}  step {done}/{total}  sim {sim_s:9.1f} s"
        if self.live:
            print(f"\r{line}", end="", flush=True)
        elif self.enabled and (now := time.monotonic()) - self._logged_s >= self.LOG_EVERY_S:
            self._logged_s = now
            print(line, flush=True)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        self._logged_s = time.monotonic()
        mb = 1e6
        print(("\r" if self.live else "") +
              f"epoch {row['epoch'] + 1:>3}/{self.total_epochs}  budget {row['budget']:>4}  "
              f"acc {row['test_accuracy']:.4f}  loss {row['train_loss']:.4f}  "
              f"up {row['cum_bytes_up'] / mb:9.2f} MB  down {row['cum_bytes_down'] / mb:9.2f} MB  "
              f"sim {row['sim_time_s']:9.1f} s  wall {row['wall_time_s']:7.1f} s", flush=True)


@dataclass
class ClientStep:
    """What the algorithm asks of one client for one step."""

    client_id: int
    step: int
    state: str = "A"             # A: full step; B: send only, client frozen; C: server uses cache
    ready_s: float = 0.0         # earliest simulated start
    bytes_model_down: int = 0    # weights the client receives before it computes
    bytes_model_up: int = 0      # weights the client sends after its step
    offline_s: float = math.inf  # when the client goes offline (availability, round deadline)


# The transfers of a step in order, as `StepTimes.cut` names them.
_TRANSFERS = ("model_down", "up", "down", "model_up")


def _bytes_sent(times: StepTimes, planned: list[int]) -> list[int]:
    """Bytes each transfer of a step (model down, payload up, gradient down, model up) sent:
    all of them, or, for a dropped step, those that left the link whole and the cut one's sent
    share."""
    if not times.dropped:
        return planned
    return [planned[k] if name in times.drained
            else int(planned[k] * times.cut_share) if name == times.cut else 0
            for k, name in enumerate(_TRANSFERS)]


@dataclass
class Round:
    """The steps of one round (one per taking part client) and how many payloads the server
    keeps (over-selection; None: all)."""

    steps: list[ClientStep]
    keep_first: int | None = None


class RunContext:
    """Holds the run's peers, timeline and rows; algorithms hand it client steps to run and time."""

    def __init__(self, cfg: ExperimentConfig, run_id: str, run_dir: str | None,
                 peers: Peers, timeline: Timeline, devices: list[str], num_channels: int,
                 split_layers: list[int], client_channels: list[int], train_samples: list[int],
                 on_epoch: EpochCallback | None = None, progress: bool = True,
                 availability: Availability | None = None) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.run_dir = run_dir
        self.peers = peers
        self.clients = peers.clients
        self.server = peers.server
        self.get = peers.get
        self.timeline = timeline
        self.devices = devices
        self.num_channels = num_channels  # at model.split_layer, where phase budgets count
        self.split_layers = split_layers  # each client's split point
        self.client_channels = client_channels  # the channels at each client's split point
        self.train_samples = train_samples  # each client's shard size
        self.on_epoch = on_epoch
        self.availability = availability or Availability.always_online(len(peers.clients))
        c = cfg.clients
        # Rounds draw their clients (and may drop steps) instead of taking every client.
        self.sampled = (c.per_round is not None or cfg.availability.kind != "always"
                        or c.over_selection > 1 or c.round_deadline_s is not None)
        self.progress = Progress(cfg.total_epochs, progress)
        # Each table's rows not yet written (all of them when the run writes no directory).
        self.rows: dict[str, list[dict]] = {name: [] for name in RUN_TABLES}
        self.summary: dict[str, Any] = {}  # algorithm-specific results for the manifest
        self.cum_bytes_up = 0
        self.cum_bytes_down = 0
        self.samples_seen = 0
        self.round = 0
        self.wall_start = time.perf_counter()
        self.eval_wall_s = 0.0  # host time spent evaluating, outside the simulated timeline
        self._epoch_losses: list[float] = []
        self._epoch_steps = 0
        self._epoch_done = 0
        self._budget: int | None = None  # the budget of the epoch in progress
        self.epochs_done = 0
        self._algorithm_state: Any = None
        self._resumed_algorithm: dict | None = None
        self._committed: dict | None = None  # what a fault rolls back to
        self._epoch_row: dict | None = None  # the evals row of the epoch in progress
        # A step's cost by (split point, budget, batch size): see _step_costs.
        self._cost_of_kind: dict[tuple[int, int, int], StepCost] = {}
        # Steps rows whose client backward the driver did not wait for, with its future and
        # FLOPs: see settle.
        self._unsettled: list[tuple[dict, Any, float]] = []

    def wall_s(self) -> float:
        return time.perf_counter() - self.wall_start

    # ---------------------------------------------------------------- epochs and checkpoints
    def epochs(self) -> Iterator[EpochPlan]:
        """The schedule's epochs from where the run stands (after `--resume`, the first not
        done). When the algorithm asks for the next one, the last is complete, and a checkpoint
        follows every `checkpoint.every_epochs`-th epoch and the last epoch of each phase."""
        plans = list(epoch_plans(self.cfg.schedule, self.cfg.train.lr))
        every = self.cfg.checkpoint.every_epochs
        for k in range(self.epochs_done, len(plans)):
            self._epoch_row = None
            yield plans[k]
            self.settle()
            self.peers.check_restarts()  # an epoch run partly on a restarted actor is not done
            self.epochs_done = k + 1
            self.availability.forget_before(self.timeline.now_s)
            release_freed_heap()
            saved = every is not None and (self.epochs_done % every == 0 or plans[k].phase_end)
            if saved:
                self.save_checkpoint()
            if self.on_epoch is not None and self._epoch_row is not None:
                checkpoint = join_path(self.run_dir, CHECKPOINT_FILE) if saved and self.run_dir else None
                self.on_epoch(self._epoch_row, checkpoint)

    def keep(self, state: T) -> T:
        """Register the algorithm's state across epochs (a dataclass of plain values) so that
        checkpoints hold it; after `--resume`, returns the state the checkpoint held."""
        if self._resumed_algorithm is not None:
            state = type(state)(**self._resumed_algorithm)
        self._algorithm_state = state
        return state

    def commit(self) -> dict:
        """The run's state now, kept as the point a fault rolls back to: every role's state, the
        timeline, the run's counters, the algorithm's state and how many rows were written."""
        self.settle()
        self.flush()
        committed = {
            "format": CHECKPOINT_FORMAT, "epochs_done": self.epochs_done,
            "parts": ({name: len(table_parts(join_path(self.run_dir, name)))
                       for name in RUN_TABLES} if self.run_dir else {}),
            "rows": {name: len(rows) for name, rows in self.rows.items()},
            "clients": self.peers.client_states(),
            "server": self.get(self.server.call(ServerRole.checkpoint)),
            "timeline": self.timeline.checkpoint(),
            "context": {"cum_bytes_up": self.cum_bytes_up, "cum_bytes_down": self.cum_bytes_down,
                        "samples_seen": self.samples_seen, "round": self.round,
                        "budget": self._budget},
            "algorithm": (dataclasses.asdict(self._algorithm_state)
                          if self._algorithm_state is not None else None),
        }
        # Every state above came from the actors noted at the run's start or last rollback:
        # an actor restarted since would have handed over its constructor's state (or failed,
        # without the run's data).
        self.peers.check_restarts()
        self._committed = committed
        return committed

    def save_checkpoint(self) -> None:
        """Commit, and write the state to RUN_DIR/checkpoint.pt for `--resume`."""
        state = self.commit()
        if self.run_dir is not None:
            with atomic_output(join_path(self.run_dir, CHECKPOINT_FILE)) as f:
                torch.save({**state, "clients": self.peers.saved(state["clients"])}, f)

    def restore(self, state: dict) -> None:
        """Continue from a checkpoint: every role, the timeline and the counters (the algorithm's
        state is handed back by `keep`)."""
        self.peers.restore_clients(state["clients"])
        self.get(self.server.call(ServerRole.restore, state["server"]))
        self.timeline.restore(state["timeline"])
        saved = state["context"]
        self.cum_bytes_up, self.cum_bytes_down = saved["cum_bytes_up"], saved["cum_bytes_down"]
        self.samples_seen, self.round, self._budget = (saved["samples_seen"], saved["round"],
                                                       saved["budget"])
        self.epochs_done = state["epochs_done"]
        self._resumed_algorithm = state["algorithm"]
        self._committed = state

    def has_checkpoint(self) -> bool:
        return self.run_dir is not None and table_exists(join_path(self.run_dir, CHECKPOINT_FILE))

    def has_committed(self) -> bool:
        """Whether a commit (or a checkpoint to resume from) gives the run a state to roll back
        to."""
        return self._committed is not None

    def resume_from(self, state: dict) -> None:
        """Make a checkpoint the state to roll back to; the run's first step is that rollback
        (every actor ready, then restored), so a restart before it costs nothing."""
        self._committed = state

    def committed_epochs(self) -> int:
        """The epochs done at the last commit: where a rollback continues."""
        if self._committed is None:
            raise RuntimeError("no state committed: nothing to roll back to")
        return self._committed["epochs_done"]

    def rollback(self) -> None:
        """Return to the last committed state after a fault: drop the rows written since (part
        files and rows in memory) and restore every role and counter."""
        state = self._committed
        if state is None:
            raise RuntimeError("no state committed: nothing to roll back to")
        self.peers.wait_ready()
        drop_parts_after(self.run_dir, state["parts"])
        for name, rows in self.rows.items():  # a checkpoint from before a table counts none
            del rows[state["rows"].get(name, 0):]
        self._unsettled = []  # their rows are gone, their backwards may have died
        self._algorithm_state = None
        self.restore(state)

    def each_client(self, submit: Callable[[int, Peer], Any]) -> list:
        """`submit(client_id, peer)` for every client, in runs a worker pool holds live, and
        their results in client order."""
        results: list = []
        for ids in self.peers.chunks():
            results += self.get([submit(i, self.clients[i]) for i in ids])
            self.peers.between_rounds()
        return results

    def client_budget(self, client_id: int, budget: int) -> int:
        """A phase's budget at this client's split point (the same fraction of its channels)."""
        return scaled_budget(budget, self.num_channels, self.client_channels[client_id])

    def save_model(self, budget: int) -> str | None:
        """Write the run's model at this budget, M_B (every client part and compressor, the
        server side of each client), as tensors to RUN_DIR/models/budget-B.pt; returns that path
        relative to the run directory (None when the run writes nothing)."""
        if self.run_dir is None:
            return None
        clients = self.each_client(lambda i, c: c.call(ClientRole.get_weights))
        servers = self.get([self.server.call(ServerRole.get_weights, i)
                            for i in range(len(self.clients))])
        # torch.tensor copies: arrays from the object store are read-only.
        state = {"format": MODEL_FORMAT, "budget": budget, "split_layers": self.split_layers,
                 "clients": [{k: torch.tensor(a) for k, a in w.items()} for w in clients],
                 "servers": [{k: torch.tensor(a) for k, a in w.items()} for w in servers]}
        relative = f"{MODELS_DIR}/budget-{budget}.pt"
        if "://" not in self.run_dir:
            os.makedirs(join_path(self.run_dir, MODELS_DIR), exist_ok=True)
        with atomic_output(join_path(self.run_dir, relative)) as f:
            torch.save(state, f)
        return relative

    def begin_epoch(self, plan: EpochPlan) -> tuple[int, list[int]]:
        """Start an epoch on every client and the server: reset the filter at a phase change
        (deprune or prune), shuffle, set lr and budget. Returns the budget and each client's steps."""
        budget = plan.budget or self.num_channels
        previous = self._budget
        if plan.phase_start and previous is not None and self.cfg.schedule.reset_filter:
            kind = reset_kind(previous, budget)
            if kind:
                self.each_client(lambda i, c: c.call(ClientRole.reset_filter, kind,
                                                     self.client_budget(i, previous)))
        self._budget = budget
        steps = self.each_client(lambda i, c: c.call(ClientRole.begin_epoch, plan.epoch, plan.lr,
                                                     self.client_budget(i, budget)))
        self.get(self.server.call(ServerRole.set_lr, plan.lr))
        self._epoch_losses = []
        # The steps the epoch's rounds run: each client's, or with sampling what its rounds draw
        # (late ones included; fewer when fewer clients are online).
        self._epoch_steps = (self.round_count(steps) * min(self._draw(len(steps)), len(steps))
                             if self.sampled else sum(steps))
        self._epoch_done = 0
        return budget, steps

    def _draw(self, n: int) -> int:
        """Clients a sampled round of `n` draws: clients.per_round (all n when unset),
        over-selected by clients.over_selection."""
        c = self.cfg.clients
        return ceil_product(c.per_round or n, c.over_selection)

    def round_count(self, steps: list[int]) -> int:
        """Rounds in an epoch whose clients have `steps` steps each: the most steps, or with
        clients.per_round as many rounds as all the steps need at that many per round."""
        per_round = self.cfg.clients.per_round
        return math.ceil(sum(steps) / min(per_round, len(steps))) if per_round else max(steps)

    def rounds(self, steps: list[int]) -> Iterator[Round]:
        """The epoch's rounds. Unsampled, every client with steps left takes part and the round
        starts when the slowest is free. Sampled, each round starts when the last one ended (or
        when a client is next online) and draws clients.per_round of the clients online then
        (seeded by the round; over-selected by clients.over_selection); each takes its next step
        (cycling through its epoch's steps) and drops it if it goes offline first or misses
        clients.round_deadline_s."""
        n = len(steps)
        if not self.sampled:
            for step in range(max(steps)):
                start_s = self.timeline.barrier(range(n))  # the round waits for everyone
                yield Round([ClientStep(i, step, ready_s=start_s)
                             for i, k in enumerate(steps) if step < k])
            return
        c = self.cfg.clients
        per_round = c.per_round or n
        draw = self._draw(n)
        cursor = [0] * n
        for _ in range(self.round_count(steps)):
            t = self.timeline.now_s
            online = self.availability.online_clients(t)
            if not online:
                t = self.availability.next_online_s(t)
                if math.isinf(t):
                    raise RunFailed(f"no client is online after simulated second "
                                    f"{self.timeline.now_s:.1f}, and none comes back")
                online = self.availability.online_clients(t)
            chosen = sample_clients(online, draw, np.random.default_rng([self.cfg.seed, self.round]))
            start_s = self.timeline.barrier(chosen, not_before_s=t)
            deadline_s = start_s + c.round_deadline_s if c.round_deadline_s else math.inf
            round_steps = []
            for i in chosen:
                round_steps.append(ClientStep(
                    i, cursor[i] % steps[i], ready_s=start_s,
                    offline_s=min(self.availability.offline_after(i, start_s), deadline_s)))
                cursor[i] += 1
            yield Round(round_steps, per_round if draw > per_round else None)

    def _step_costs(self, sending: list[ClientStep], budget: int) -> list[StepCost]:
        """Each step's cost without running it. A step's bytes and FLOPs depend only on the
        client's split point, budget and batch size, so one client of each such kind is asked
        once per run; run_steps and settle check every forward and backward against its cost."""
        bs = self.cfg.train.batch_size
        ids = [s.client_id for s in sending]
        kinds = [(self.split_layers[i], self.client_budget(i, budget),
                  batch_samples(self.train_samples[i], bs)) for i in ids]
        ask = {k: i for k, i in zip(kinds, ids, strict=True) if k not in self._cost_of_kind}
        answers = self.get([self.clients[i].call(ClientRole.step_cost) for i in ask.values()])
        self._cost_of_kind.update(zip(ask, answers, strict=True))
        return [StepCost(dataclasses.replace(self._cost_of_kind[k].forward, client_id=i),
                         self._cost_of_kind[k].backward_flops)
                for k, i in zip(kinds, ids, strict=True)]

    def run_steps(self, plan: EpochPlan, budget: int, steps: list[ClientStep],
                  shared_positions: int = 0, keep_first: int | None = None) -> list[dict]:
        """Run one step of each listed client on the peers and the timeline; record the rows.

        The server takes the payloads in simulated-arrival order, each gradient going straight
        back to its client; a client's forward runs just before the server needs its payload,
        with `peers.prefetch` more ahead of it (Ray runs those in parallel).
        With `shared_positions` m > 0 (EPSL) the server trains each batch's positions from m on
        as it arrives and, once all are in, the first m positions once for all at their mean;
        that gradient goes down as one broadcast on each shared medium (one transfer per own
        link: `Timeline.broadcast_groups`), its bytes charged to the lowest client id's row of
        each, the server's pass to the lowest of all.
        A step whose client goes offline before it ends, or whose payload arrives after the
        first `keep_first`, is dropped (see `splitray.runtime.timeline`): no client update (but
        a step cut in its model upload has run its backward: its weights stay out of the
        average), the bytes sent counted, its row's `dropped` says why.
        With FLOP-timed compute every step's cost is known beforehand, so the driver does not
        wait for the clients' backwards: the next round's forwards queue right behind them, and
        their reports fill the rows at the next `settle`.
        """
        timeline, get = self.timeline, self.get
        if len({s.client_id for s in steps}) != len(steps):
            raise ValueError("run_steps takes at most one step per client")
        sending = [s for s in steps if s.state != "C"]
        fwd: dict[int, Any] = {}  # each sending client's forward, once submitted

        def submit_forward(s: ClientStep) -> None:
            if s.client_id not in fwd:
                fwd[s.client_id] = self.clients[s.client_id].call(
                    ClientRole.forward, s.step, s.state == "A", num_returns=2)

        # With FLOP-timed compute the timeline needs only each forward's cost, known beforehand:
        # a forward then runs when the server is about to take its payload (plus a few ahead),
        # so a round of a thousand clients never holds a thousand autograd graphs at once.
        lazy = timeline.compute_time == "flops"
        bwd_flops: dict[int, float] = {}  # FLOP-timed: each backward's, known beforehand
        if lazy:
            costs = self._step_costs(sending, budget)
            forward_reports = [c.forward for c in costs]
            bwd_flops = {s.client_id: c.backward_flops for s, c in zip(sending, costs, strict=True)}
        else:
            for s in sending:
                submit_forward(s)
            forward_reports = get([fwd[s.client_id][1] for s in sending])
        fwd_info: dict[int, ForwardInfo] = {
            s.client_id: f for s, f in zip(sending, forward_reports, strict=True)}
        ahead = iter(sorted(sending, key=lambda s: (
            s.ready_s + timeline.client_compute_s(s.client_id, fwd_info[s.client_id].flops, 0.0),
            s.client_id)))

        def forward(s: ClientStep) -> Any:
            """The payload of the step's forward: submitted now if it was not, with the next
            `peers.prefetch` forwards in expected arrival order."""
            submit_forward(s)
            while len(fwd) - served_forwards <= self.peers.prefetch:
                nxt = next(ahead, None)
                if nxt is None:
                    break
                submit_forward(nxt)
            return fwd[s.client_id][0]

        srv_info: dict[int, ServerInfo] = {}
        served_forwards = 0  # forwards the server has taken (the rest run ahead of it)
        bwd_info: dict[int, BackwardInfo] = {}  # reports waited for (measured compute times)
        bwd: dict[int, Any] = {}  # each learning client's backward, once submitted
        gradients: dict[int, Any] = {}  # EPSL: each client's own gradient, until the broadcast
        waiting: dict[int, Any] = {}  # gradients whose backward waits until the step is due

        def serve(job: StepJob) -> ServerWork:
            nonlocal served_forwards
            s: ClientStep = job.tag
            i = s.client_id
            if s.state == "C":
                srv = self.server.call(ServerRole.step_cached, i, s.step, num_returns=2)
            elif shared_positions:
                srv = self.server.call(ServerRole.step_epsl, forward(s), i, s.step,
                                       shared_positions, num_returns=2)
            else:
                srv = self.server.call(ServerRole.step, forward(s), i, s.step, num_returns=2)
            if s.state == "A" and shared_positions:
                gradients[i] = srv[0]
            elif s.state == "A" and math.isinf(s.offline_s):
                bwd[i] = self.clients[i].call(ClientRole.backward, srv[0])
            elif s.state == "A":  # a client that may go offline: its update waits for the gradient
                waiting[i] = srv[0]
            info = srv_info[i] = get(srv[1])
            served_forwards += s.state != "C"
            if i in fwd:  # the server has taken the payload: the object store may free it now
                fwd[i] = (None, fwd[i][1])

            def backward_s() -> float:
                if i not in bwd:
                    bwd[i] = self.clients[i].call(ClientRole.backward, waiting.pop(i))
                self.peers.finished(i)
                if lazy:
                    return timeline.client_compute_s(i, bwd_flops[i], 0.0)
                b = bwd_info[i] = get(bwd[i])
                return timeline.client_compute_s(i, b.flops, b.compute_s)

            return ServerWork(timeline.server_compute_s(info.flops, info.compute_s),
                              info.bytes_down, backward_s)

        aggregated: list[ServerInfo] = []

        def broadcast() -> Broadcast:
            agg = self.server.call(ServerRole.step_aggregated, num_returns=2)
            for i, grad in gradients.items():
                bwd[i] = self.clients[i].call(ClientRole.backward, grad, agg[0])
            info = get(agg[1])
            aggregated.append(info)
            return Broadcast(timeline.server_compute_s(info.flops, info.compute_s), info.bytes_down)

        jobs = []
        for s in steps:
            f = fwd_info.get(s.client_id)
            jobs.append(StepJob(
                s.client_id, s.ready_s,
                forward_s=timeline.client_compute_s(s.client_id, f.flops, f.compute_s) if f else 0.0,
                bytes_up=f.bytes_up if f else None, learn=s.state == "A",
                bytes_model_down=s.bytes_model_down, bytes_model_up=s.bytes_model_up, tag=s,
                offline_s=s.offline_s))
        rows = []
        timed = timeline.run(jobs, serve, broadcast=broadcast if shared_positions else None,
                             keep_first=keep_first)
        if lazy:  # what the forwards sent is what their costs said
            for i, info in zip(fwd, get([f[1] for f in fwd.values()]), strict=True):
                said = fwd_info[i]
                if (info.bytes_up, info.batch_size, info.flops) != (said.bytes_up, said.batch_size,
                                                                    said.flops):
                    raise RuntimeError(f"client {i}'s forward sent {info.bytes_up} bytes of "
                                       f"{info.batch_size} samples ({info.flops:.0f} FLOPs), its "
                                       f"cost said {said.bytes_up}, {said.batch_size} "
                                       f"({said.flops:.0f})")
        dropped = [job.client_id for job, t in timed
                   if t.dropped and job.learn and job.client_id in fwd]
        if dropped:
            get([self.clients[i].call(ClientRole.drop_step) for i in dropped])
        self.settle()  # the last round's backwards, done by now (this round's forwards followed)
        # The rows that carry the broadcast: one per transfer the timeline sent.
        charged = {ids[0] for ids in timeline.broadcast_groups(gradients)}
        first_charged = min(charged, default=None)  # the row that carries the server's pass
        wall = self.wall_s()
        for job, t in timed:
            s, i = job.tag, job.client_id
            f, srv, b = fwd_info.get(i), srv_info.get(i), bwd_info.get(i)
            backward_flops = b.flops if b else bwd_flops[i] if i in bwd else 0.0
            sent = _bytes_sent(t, [s.bytes_model_down, f.bytes_up if f else 0,
                                   srv.bytes_down if srv and s.state == "A" else 0,
                                   s.bytes_model_up])
            model_down, bytes_up, bytes_down, model_up = sent
            server_flops = srv.flops if srv else 0.0
            if i in charged and aggregated:
                bytes_down += aggregated[0].bytes_down
                if i == first_charged:  # the server's one pass, on whatever network
                    server_flops += aggregated[0].flops
            self.cum_bytes_up += bytes_up + model_up
            self.cum_bytes_down += bytes_down + model_down
            if srv is not None:
                self.samples_seen += srv.batch_size
                self._epoch_losses.append(srv.loss)
            rows.append({
                "run_id": self.run_id, "algorithm": self.cfg.train.algorithm, "client_id": i,
                "device": self.devices[i], "epoch": plan.epoch, "step": s.step, "round": self.round,
                "client_state": s.state, "phase": plan.phase,
                "budget": self.client_budget(i, budget), "split_layer": self.split_layers[i],
                "batch_size": srv.batch_size if srv else 0, "dropped": t.dropped, "cut": t.cut,
                "lr": plan.lr, "bytes_up": bytes_up, "bytes_down": bytes_down,
                "bytes_model_up": model_up, "bytes_model_down": model_down,
                "client_flops": (f.flops if f else 0.0) + backward_flops,
                "server_flops": server_flops, "loss": srv.loss if srv else math.nan,
                "prune_loss": b.prune_loss if b else math.nan if i in bwd else 0.0,
                "sim_start_s": t.start_s,
                "sim_time_s": t.end_s, "sim_model_down_s": t.model_down_s,
                "sim_client_compute_s": t.client_compute_s,
                "sim_client_backward_s": t.client_backward_s, "sim_uplink_s": t.uplink_s,
                "sim_server_wait_s": t.server_wait_s, "sim_server_compute_s": t.server_compute_s,
                "sim_downlink_s": t.downlink_s, "sim_model_up_s": t.model_up_s,
                "wall_time_s": wall,
            })
            if i in bwd and b is None:
                self._unsettled.append((rows[-1], bwd[i], backward_flops))
        self.rows[STEPS_TABLE] += rows
        # Every step the server trained on, dropped afterwards or not (its update stands).
        diverged = next((r for r in rows if r["batch_size"] and not math.isfinite(r["loss"])),
                        None)
        if diverged is not None:
            self.settle()
            raise RunDiverged(f"loss {diverged['loss']} at epoch {plan.epoch} step "
                              f"{diverged['step']} (client {diverged['client_id']})")
        self.round += 1
        self._epoch_done += len(steps)
        self.peers.between_rounds()
        if self.cfg.engine.time_mode == "realtime":
            # Emulate: hold the next round until the host clock has caught up with the model.
            lag_s = timeline.now_s - (self.wall_s() - self.eval_wall_s)
            if lag_s > 0:
                time.sleep(lag_s)
        self.progress.round(plan.epoch, self._epoch_done, self._epoch_steps, timeline.now_s)
        return rows

    def evaluate(self, plan: EpochPlan, budget: int) -> dict:
        """Test every client's encoder with the server on its test slice; record each client's
        accuracy and the run's (their samples-weighted mean), and report."""
        self.settle()
        t0 = time.perf_counter()
        counts = self.each_client(lambda i, c: c.call(ClientRole.num_eval_batches))
        # Per client: [correct, summed loss, samples] over its test slice.
        per_client: dict[int, list] = {}
        for ids in self.peers.chunks():
            batches = [(i, b) for i in ids for b in range(counts[i])]
            results = self.get([
                self.server.call(ServerRole.evaluate,
                                 self.clients[i].call(ClientRole.encode_eval, b), i)
                for i, b in batches])
            for (i, _), result in zip(batches, results, strict=True):
                sums = per_client.setdefault(i, [0, 0.0, 0])
                for k, value in enumerate(result):
                    sums[k] += value
            self.peers.between_rounds()
        correct, loss_sum, n = (sum(s[k] for s in per_client.values()) for k in range(3))
        self.eval_wall_s += time.perf_counter() - t0
        self.rows[CLIENT_EVALS_TABLE] += [{
            "run_id": self.run_id, "algorithm": self.cfg.train.algorithm, "epoch": plan.epoch,
            "client_id": i, "device": self.devices[i], "split_layer": self.split_layers[i],
            "test_samples": c_n, "test_accuracy": c_correct / max(c_n, 1),
            "test_loss": c_loss / max(c_n, 1),
        } for i, (c_correct, c_loss, c_n) in sorted(per_client.items())]
        losses = self._epoch_losses
        row = {
            "run_id": self.run_id, "algorithm": self.cfg.train.algorithm, "epoch": plan.epoch,
            "phase": plan.phase, "budget": budget, "test_accuracy": correct / max(n, 1),
            "test_loss": loss_sum / max(n, 1),
            "train_loss": sum(losses) / len(losses) if losses else float("nan"),
            "samples_seen": self.samples_seen, "cum_bytes_up": self.cum_bytes_up,
            "cum_bytes_down": self.cum_bytes_down, "sim_time_s": self.timeline.now_s,
            "wall_time_s": self.wall_s(),
        }
        self.rows[EVALS_TABLE].append(row)
        self.flush()
        self.progress.epoch(row)
        self._epoch_row = row
        return row

    def settle(self) -> None:
        """Wait for the client backwards that `run_steps` went on without and put their reports
        (the prune loss) into their rows, checking their FLOPs against the step's cost. Each
        round settles the one before; an epoch, evaluation or commit everything so far. A run
        that fails leaves NaN as the prune loss of steps whose backward never reported."""
        if not self._unsettled:
            return
        reports: list[BackwardInfo] = self.get([ref for _, ref, _ in self._unsettled])
        for (row, _, flops), report in zip(self._unsettled, reports, strict=True):
            if report.flops != flops:
                raise RuntimeError(f"client {report.client_id}'s backward did {report.flops:.0f} "
                                   f"FLOPs, its cost said {flops:.0f}")
            row["prune_loss"] = report.prune_loss
        self._unsettled = []

    def flush(self) -> None:
        """Append the rows since the last flush to each table as a new part file, then let them
        go: the driver's memory does not grow with the rows already written."""
        if self.run_dir is None:
            return
        for name, rows in self.rows.items():
            if rows:
                append_part(rows, RUN_TABLES[name], join_path(self.run_dir, name))
                rows.clear()
