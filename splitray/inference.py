"""Split inference with prune's model set Θ: each client gets the budget its link can carry.

A prune run writes one model M_B per budget (RUN_DIR/models/budget-B.pt). For every client (its
device and link from the run's config, or overrides) and every B, this runs the client's test
slice through its client part and compressor at B and the server part, and models each request's
latency: client forward FLOPs on the device, the payload's bytes on the link, its latency, the
server's forward FLOPs. The predicted latency uses the link's mean rate (its share of a shared
medium); the simulated one sends the requests on the network model, every client sending its next
once the last is answered, all from t = 0, so a trace link's rate at that moment counts and
clients on one medium contend as the prediction assumes. The rule of METHODS.md section 8 (a
project extension): with a deadline, each client takes the largest B whose predicted latency fits
it (the smallest B when none does).
"""

from __future__ import annotations

import heapq
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from splitray.config import ConfigError, load_config, parse_override
from splitray.metrics import (
    INFERENCE_COLUMNS,
    INFERENCE_TABLE,
    RUN_CONFIG_FILE,
    join_path,
    read_bytes,
    table_exists,
    write_table,
)
from splitray.network import SharedMedium, Transfer, compute_time_s
from splitray.roles import ClientRole, ServerRole
from splitray.runtime.context import MODEL_FORMAT, load_tensors
from splitray.runtime.orchestrator import Prepared, prepare, start_peers

# What `infer --set` may change: where the saved models run and what they are tested on, never
# the models themselves (their architecture, split points or client count).
WHAT_IF_KEYS = ("network", "clients.devices", "clients.cpu_share", "server", "data.root",
                "data.test_samples", "engine")


@dataclass
class ModelEntry:
    """One model of Θ: its budget and the weights of every client part and server side."""

    budget: int
    clients: list[dict[str, np.ndarray]]
    servers: list[dict[str, np.ndarray]]


def load_model_set(run_dir: str) -> list[ModelEntry]:
    """Θ of a prune run, largest budget first; read with `torch.load(weights_only=True)`."""
    path = join_path(run_dir, "manifest.json")
    if not table_exists(path):
        raise ConfigError(f"RUN_DIR: {run_dir!r} is not allowed; it holds no manifest.json")
    listed = json.loads(read_bytes(path)).get("summary", {}).get("models")
    if not listed:
        raise ConfigError(f"RUN_DIR: {run_dir!r} is not allowed; its run wrote no model set "
                          "(train.algorithm: prune writes one model per budget)")
    entries = []
    for item in listed:
        file = join_path(run_dir, item["path"])
        saved = load_tensors(file, "model file")
        if saved.get("format") != MODEL_FORMAT:
            raise ConfigError(f"{file}: model format {saved.get('format')!r}; this splitray reads "
                              f"{MODEL_FORMAT}")
        to_numpy = [{k: t.numpy() for k, t in w.items()} for w in saved["clients"]]
        servers = [{k: t.numpy() for k, t in w.items()} for w in saved["servers"]]
        entries.append(ModelEntry(int(saved["budget"]), to_numpy, servers))
    return sorted(entries, key=lambda e: -e.budget)


def _uplink_bps(p: Prepared, client_id: int) -> float:
    """The rate a client's requests get on average: its link's, or its share of a medium."""
    network = p.network
    link = network.link(client_id)
    rate = link.rate_bps("up")
    if isinstance(link, SharedMedium):
        if link.allocation == "shares":
            return rate * network.share(client_id)
        return rate / sum(other is link for other in network.links.values())
    return rate


def _latencies_s(p: Prepared, requests: list[int], client_s: list[float],
                 server_s: list[float], nbytes: list[int]) -> list[np.ndarray]:
    """Each client's requests' simulated latencies: every client sends its next request once
    the last is answered, all of them from t = 0 on one network."""
    traffic = p.network.traffic()
    latencies = [np.empty(n) for n in requests]
    answered = [0] * len(requests)
    began_s = [0.0] * len(requests)  # when the request each client has in flight began
    sends = [(client_s[i], i) for i, n in enumerate(requests) if n]  # (send time, client)
    heapq.heapify(sends)
    sender: dict[int, int] = {}
    while sends or not traffic.idle():
        # Starts must come in time order: a payload drained at t is delivered before sends at t.
        if sends and sends[0][0] < traffic.next_drain_s():
            sent_s, i = heapq.heappop(sends)
            sender[traffic.start("up", Transfer(i, sent_s, nbytes[i]))] = i
            continue
        delivery = traffic.pop()
        i = sender.pop(delivery.handle)
        answered_s = delivery.arrival_s + server_s[i]
        latencies[i][answered[i]] = answered_s - began_s[i]
        answered[i] += 1
        if answered[i] < requests[i]:
            began_s[i] = answered_s
            heapq.heappush(sends, (answered_s + client_s[i], i))
    return latencies


def _latency_cells(sim_s: np.ndarray, deadline_ms: float | None) -> dict[str, float]:
    """A row's simulated latency columns from its requests' latencies."""
    return {"sim_latency_ms_mean": 1e3 * float(sim_s.mean()),
            "sim_latency_ms_p95": 1e3 * float(np.percentile(sim_s, 95)),
            "deadline_met_share": (float(np.mean(1e3 * sim_s <= deadline_ms))
                                   if deadline_ms is not None else float("nan"))}


def infer(run_dir: str, deadline_ms: float | None = None, overrides: list[str] | None = None,
          engine: str = "ray", write: bool = True) -> pd.DataFrame:
    """Serve Θ to every client: a row per (client, budget) with accuracy, bytes and latencies
    (simulated with every client at that budget); with a deadline, `chosen` marks each client's
    budget, and the chosen rows' latencies are simulated again with each client at its own.
    Writes RUN_DIR/inference.parquet."""
    if deadline_ms is not None and not deadline_ms > 0:
        raise ConfigError(f"--deadline-ms: {deadline_ms!r} is not allowed; give a number > 0")
    for text in overrides or []:
        key = parse_override(text)[0]
        if not any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in WHAT_IF_KEYS):
            raise ConfigError(f"--set {key}: not allowed with infer, which serves the models the "
                              f"run saved as they are; change only {', '.join(WHAT_IF_KEYS)}")
    model_set = load_model_set(run_dir)
    cfg = load_config(join_path(run_dir, RUN_CONFIG_FILE), overrides)
    prepared = prepare(cfg)
    peers = start_peers(prepared, engine)
    clients, server, get = peers.clients, peers.server, peers.get
    n = len(clients)
    rows: list[dict] = []
    request_costs: dict[tuple[int, int], tuple[float, int]] = {}  # client compute s, bytes
    try:
        counts = get([c.call(ClientRole.num_eval_batches) for c in clients])
        server_s = [compute_time_s(f, prepared.server_device)
                    for f in get([server.call(ServerRole.forward_flops, i) for i in range(n)])]
        for entry in model_set:
            get([c.call(ClientRole.set_weights, w) for c, w in zip(clients, entry.clients,
                                                                    strict=True)]
                + [server.call(ServerRole.set_weights, i, w) for i, w in enumerate(entry.servers)]
                + [c.call(ClientRole.set_budget, entry.budget) for c in clients])
            costs = get([c.call(ClientRole.inference_cost) for c in clients])
            flat = get([server.call(ServerRole.evaluate, c.call(ClientRole.encode_eval, b), i)
                        for i, c in enumerate(clients) for b in range(counts[i])])
            starts = np.cumsum([0, *counts])
            results = [flat[starts[i]:starts[i + 1]] for i in range(n)]
            samples = [sum(r[2] for r in results[i]) for i in range(n)]
            client_s = [compute_time_s(flops, prepared.devices[i], cfg.clients.cpu_share)
                        for i, (flops, _) in enumerate(costs)]
            sims_s = _latencies_s(prepared, samples, client_s, server_s,
                                  [nbytes for _, nbytes in costs])
            for i, (_, nbytes) in enumerate(costs):
                request_costs[(i, entry.budget)] = (client_s[i], nbytes)
                correct = sum(r[0] for r in results[i])
                link = prepared.network.link(i)
                predicted_s = (client_s[i] + 8.0 * nbytes / _uplink_bps(prepared, i)
                               + link.latency_s + server_s[i])
                sim_s = sims_s[i]
                rows.append({
                    "client_id": i, "device": prepared.devices[i].name,
                    "link": prepared.network.describe(i), "budget": entry.budget, "chosen": False,
                    "test_samples": samples[i], "test_accuracy": correct / max(samples[i], 1),
                    "bytes_per_sample": nbytes, "predicted_latency_ms": 1e3 * predicted_s,
                    **_latency_cells(sim_s, deadline_ms),
                })
    finally:
        peers.stop()
    table = pd.DataFrame(rows)
    if deadline_ms is not None:
        for _, group in table.groupby("client_id"):
            fits = group[group["predicted_latency_ms"] <= deadline_ms]
            # No budget fits: the fastest, the smallest payload (format_inference says so).
            pick = fits["budget"].idxmax() if len(fits) else group["budget"].idxmin()
            table.loc[pick, "chosen"] = True
        # The chosen budgets side by side: their requests share the network as they would.
        chosen = table[table["chosen"]].sort_values("client_id")
        picked = [request_costs[(i, b)] for i, b in zip(chosen["client_id"], chosen["budget"],
                                                         strict=True)]
        sims_s = _latencies_s(prepared, chosen["test_samples"].tolist(), [c for c, _ in picked],
                              server_s, [nbytes for _, nbytes in picked])
        for row, sim_s in zip(chosen.index, sims_s, strict=True):
            for column, value in _latency_cells(sim_s, deadline_ms).items():
                table.loc[row, column] = value
    if write:
        write_table(table.to_dict("records"), INFERENCE_COLUMNS, join_path(run_dir, INFERENCE_TABLE))
    return table


def format_inference(table: pd.DataFrame, deadline_ms: float | None) -> str:
    """One screen: per client its chosen budget (or every budget without a deadline)."""
    shown = (table[table["chosen"]] if deadline_ms is not None else table).sort_values(
        ["client_id", "budget"], ascending=[True, False], kind="stable")
    columns = ["client_id", "device", "budget", "test_accuracy", "bytes_per_sample",
               "predicted_latency_ms", "sim_latency_ms_mean", "sim_latency_ms_p95"]
    if deadline_ms is not None:
        columns.append("deadline_met_share")
    lines = [shown[columns].to_string(index=False, float_format=lambda v: f"{v:.4g}")]
    if deadline_ms is not None:
        samples = shown["test_samples"]
        accuracy = float((shown["test_accuracy"] * samples).sum() / samples.sum())
        met = float((shown["deadline_met_share"] * samples).sum() / samples.sum())
        lines.append(f"deadline {deadline_ms:g} ms: accuracy {accuracy:.4f} over all clients, "
                     f"{met:.1%} of requests within the deadline")
        late = shown.loc[shown["predicted_latency_ms"] > deadline_ms, "client_id"].tolist()
        if late:
            lines.append(f"no budget fits the deadline for client(s) {', '.join(map(str, late))}:"
                         " each gets its smallest (fastest) budget")
    return "\n".join(lines)
