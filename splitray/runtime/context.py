"""What an algorithm sees while it runs: the peers, the virtual clock and the result tables."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from splitray.config import ExperimentConfig
from splitray.metrics import EVAL_COLUMNS, STEP_COLUMNS, join_path, write_table
from splitray.roles import BackwardInfo, ForwardInfo, ServerInfo
from splitray.runtime.clock import VirtualClock
from splitray.runtime.peers import Peer
from splitray.schedules import EpochPlan


class Progress:
    """One line per epoch; on a terminal, a live line of the round in progress."""

    def __init__(self, total_epochs: int, enabled: bool = True) -> None:
        self.total_epochs = total_epochs
        self.enabled = enabled
        self.live = enabled and sys.stdout.isatty()

    def round(self, epoch: int, done: int, total: int, sim_s: float) -> None:
        if self.live:
            print(f"\r  epoch {epoch + 1}/{self.total_epochs}  step {done}/{total}  "
                  f"sim {sim_s:9.1f} s", end="", flush=True)

    def epoch(self, row: dict) -> None:
        if not self.enabled:
            return
        mb = 1e6
        print(("\r" if self.live else "") +
              f"epoch {row['epoch'] + 1:>3}/{self.total_epochs}  budget {row['budget']:>4}  "
              f"acc {row['test_accuracy']:.4f}  loss {row['train_loss']:.4f}  "
              f"up {row['cum_bytes_up'] / mb:9.2f} MB  down {row['cum_bytes_down'] / mb:9.2f} MB  "
              f"sim {row['sim_time_s']:9.1f} s  wall {row['wall_time_s']:7.1f} s", flush=True)


class RunContext:
    """Holds the run's peers, clock and rows; algorithms call it to time rounds and record them."""

    def __init__(self, cfg: ExperimentConfig, run_id: str, run_dir: str | None,
                 clients: list[Peer], server: Peer, get: Callable[[Any], Any],
                 clock: VirtualClock, devices: list[str], num_channels: int,
                 on_epoch: Callable[[dict], None] | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.run_id = run_id
        self.run_dir = run_dir
        self.clients = clients
        self.server = server
        self.get = get
        self.clock = clock
        self.devices = devices
        self.num_channels = num_channels
        self.on_epoch = on_epoch
        self.progress = Progress(cfg.total_epochs, progress)
        self.step_rows: list[dict] = []
        self.eval_rows: list[dict] = []
        self.cum_bytes_up = 0
        self.cum_bytes_down = 0
        self.samples_seen = 0
        self.round = 0
        self.wall_start = time.perf_counter()
        self.eval_wall_s = 0.0  # host time spent evaluating, outside the simulated timeline
        self._epoch_losses: list[float] = []
        self._epoch_steps = 0
        self._epoch_done = 0
        self._fwd_s: dict[int, float] = {}

    def wall_s(self) -> float:
        return time.perf_counter() - self.wall_start

    def begin_epoch(self, total_steps: int) -> None:
        """Start the epoch's loss average and progress count."""
        self._epoch_losses = []
        self._epoch_steps = total_steps
        self._epoch_done = 0

    def uplink(self, fwd: dict[int, ForwardInfo]) -> dict[int, float]:
        """Simulated arrival of each client's payload at the server."""
        self._fwd_s = {i: self.clock.client_compute_s(i, f.flops, f.compute_s) for i, f in fwd.items()}
        return self.clock.uplink(self._fwd_s, {i: f.bytes_up for i, f in fwd.items()})

    def finish_round(self, plan: EpochPlan, step: int, budget: int,
                     fwd: dict[int, ForwardInfo], arrivals: dict[int, float],
                     srv: dict[int, ServerInfo], bwd: dict[int, BackwardInfo]) -> None:
        """Advance the clock over the round and record one row per client step."""
        clock = self.clock
        server_s = {i: clock.server_compute_s(s.flops, s.compute_s) for i, s in srv.items()}
        bwd_s = {i: clock.client_compute_s(i, b.flops, b.compute_s) for i, b in bwd.items()}
        times = clock.finish_round(self._fwd_s, arrivals, server_s,
                                   {i: s.bytes_down for i, s in srv.items()}, bwd_s)
        wall = self.wall_s()
        for i in sorted(fwd):
            t = times[i]
            self.cum_bytes_up += fwd[i].bytes_up
            self.cum_bytes_down += srv[i].bytes_down
            self.samples_seen += fwd[i].batch_size
            self._epoch_losses.append(srv[i].loss)
            self.step_rows.append({
                "run_id": self.run_id, "algorithm": self.cfg.train.algorithm, "client_id": i,
                "device": self.devices[i], "epoch": plan.epoch, "step": step, "round": self.round,
                "phase": plan.phase, "budget": budget, "split_layer": self.cfg.model.split_layer,
                "batch_size": fwd[i].batch_size, "lr": plan.lr, "bytes_up": fwd[i].bytes_up,
                "bytes_down": srv[i].bytes_down, "loss": srv[i].loss,
                "prune_loss": bwd[i].prune_loss, "sim_start_s": t.start_s, "sim_time_s": t.end_s,
                "sim_client_compute_s": t.client_compute_s, "sim_uplink_s": t.uplink_s,
                "sim_server_wait_s": t.server_wait_s, "sim_server_compute_s": t.server_compute_s,
                "sim_downlink_s": t.downlink_s, "wall_time_s": wall,
            })
        self.round += 1
        self._epoch_done += len(fwd)
        if self.cfg.engine.time_mode == "realtime":
            # Emulate: hold the next round until the host clock has caught up with the model.
            lag_s = clock.now_s - (self.wall_s() - self.eval_wall_s)
            if lag_s > 0:
                time.sleep(lag_s)
        self.progress.round(plan.epoch, self._epoch_done, self._epoch_steps, clock.now_s)

    def evaluate(self, plan: EpochPlan, budget: int) -> dict:
        """Test every client's encoder with the server on its test slice; record and report."""
        t0 = time.perf_counter()
        counts = self.get([c.call("num_eval_batches") for c in self.clients])
        futures = [self.server.call("evaluate", c.call("encode_eval", b))
                   for c, n in zip(self.clients, counts, strict=True) for b in range(n)]
        results = self.get(futures)
        correct = sum(r[0] for r in results)
        loss_sum = sum(r[1] for r in results)
        n = sum(r[2] for r in results)
        self.eval_wall_s += time.perf_counter() - t0
        losses = self._epoch_losses
        row = {
            "run_id": self.run_id, "algorithm": self.cfg.train.algorithm, "epoch": plan.epoch,
            "phase": plan.phase, "budget": budget, "test_accuracy": correct / max(n, 1),
            "test_loss": loss_sum / max(n, 1),
            "train_loss": sum(losses) / len(losses) if losses else float("nan"),
            "samples_seen": self.samples_seen, "cum_bytes_up": self.cum_bytes_up,
            "cum_bytes_down": self.cum_bytes_down, "sim_time_s": self.clock.now_s,
            "wall_time_s": self.wall_s(),
        }
        self.eval_rows.append(row)
        self.flush()
        self.progress.epoch(row)
        if self.on_epoch is not None:
            self.on_epoch(row)
        return row

    def flush(self) -> None:
        """Rewrite both tables atomically, so a crash leaves readable results."""
        if self.run_dir is None:
            return
        write_table(self.step_rows, STEP_COLUMNS, join_path(self.run_dir, "steps.parquet"))
        write_table(self.eval_rows, EVAL_COLUMNS, join_path(self.run_dir, "evals.parquet"))
