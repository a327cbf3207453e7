"""Run directories: the versioned Parquet schema, atomic table writes and the run manifest."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import uuid
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 5  # 4: run directories hold client_evals.parquet; 5: steps' cut column
STEPS_TABLE = "steps.parquet"  # in a run directory: a directory of part files
EVALS_TABLE = "evals.parquet"
CLIENT_EVALS_TABLE = "client_evals.parquet"
PARAM_PREFIX = "param."  # a sweep's tables carry each trial's parameter values as param.<key>
RUN_CONFIG_FILE = "config.yaml"  # a run directory's resolved config
SWEEP_FILE = "sweep.json"  # in a sweep directory, written when the sweep ends: each trial's outcome

# Column -> (arrow type, meaning with unit). One row per client step.
STEP_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "run_id": (pa.string(), "id of the run"),
    "algorithm": (pa.string(), "training scheme, e.g. parallel_sl"),
    "client_id": (pa.int32(), "client index, 0-based"),
    "device": (pa.string(), "device profile name of the client"),
    "epoch": (pa.int32(), "epoch index, 0-based"),
    "step": (pa.int32(), "client step within the epoch, 0-based"),
    "round": (pa.int64(), "global round index: the steps the algorithm handed the timeline at once"),
    "client_state": (pa.string(), "A: full step; B: sends activations only, client frozen; "
                                  "C: sends nothing, the server trains on its cache (async_sl)"),
    "phase": (pa.int32(), "index of the budget phase in the schedule"),
    "budget": (pa.int32(), "channels sent (B); equals all channels when uncompressed"),
    "split_layer": (pa.int32(), "split point n of the client"),
    "batch_size": (pa.int32(), "samples the server trained on in the step (0: dropped before)"),
    "dropped": (pa.string(), "why the step was dropped: offline (the client left during it) or "
                             "late (over-selection: not among the first payloads); empty: not"),
    "cut": (pa.string(), "the transfer a dropped step cut: model_down, up, down or model_up "
                         "(sent or arrived in part); empty: none"),
    "lr": (pa.float64(), "learning rate used in the step"),
    "bytes_up": (pa.int64(), "payload bytes client -> server (activations, indices, labels, scale)"),
    "bytes_down": (pa.int64(), "payload bytes server -> client (gradient, scale)"),
    "bytes_model_up": (pa.int64(), "client-part weight bytes client -> server after the step"),
    "bytes_model_down": (pa.int64(), "client-part weight bytes server -> client before the step"),
    "client_flops": (pa.float64(), "client FLOPs of the step (forward + backward)"),
    "server_flops": (pa.float64(), "server FLOPs of the step (forward + backward)"),
    "loss": (pa.float64(), "task loss (cross-entropy) of the step"),
    "prune_loss": (pa.float64(), "prune loss of the step (0 when uncompressed; NaN when "
                                "a failed run lost the backward's report)"),
    "sim_start_s": (pa.float64(), "simulated time the step started, s"),
    "sim_time_s": (pa.float64(), "simulated time the step finished (its last transfer or "
                                 "update done), s"),
    "sim_model_down_s": (pa.float64(), "simulated weight download before the step, s"),
    "sim_client_compute_s": (pa.float64(), "simulated client compute, forward + backward, s"),
    "sim_client_backward_s": (pa.float64(), "of which the backward, s"),
    "sim_uplink_s": (pa.float64(), "simulated uplink transfer incl. latency and sharing, s"),
    "sim_server_wait_s": (pa.float64(), "simulated wait for the busy server, s"),
    "sim_server_compute_s": (pa.float64(), "simulated server compute, s"),
    "sim_downlink_s": (pa.float64(), "simulated downlink transfer incl. latency and sharing, s"),
    "sim_model_up_s": (pa.float64(), "simulated weight upload after the step, s"),
    "wall_time_s": (pa.float64(), "host wall-clock seconds since the run started"),
}

# One row per evaluation (end of each epoch).
EVAL_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "run_id": (pa.string(), "id of the run"),
    "algorithm": (pa.string(), "training scheme"),
    "epoch": (pa.int32(), "epoch index, 0-based; evaluated after it"),
    "phase": (pa.int32(), "index of the budget phase in the schedule"),
    "budget": (pa.int32(), "channels sent (B) during the epoch"),
    "test_accuracy": (pa.float64(), "top-1 accuracy on the test set, fraction in [0, 1]"),
    "test_loss": (pa.float64(), "mean cross-entropy on the test set"),
    "train_loss": (pa.float64(), "mean task loss of the epoch's steps"),
    "samples_seen": (pa.int64(), "training samples processed so far, all clients"),
    "cum_bytes_up": (pa.int64(), "bytes client -> server so far (payloads and weights), all clients"),
    "cum_bytes_down": (pa.int64(), "bytes server -> client so far (payloads and weights), all "
                                   "clients"),
    "sim_time_s": (pa.float64(), "simulated time at the end of the epoch (slowest client), s"),
    "wall_time_s": (pa.float64(), "host wall-clock seconds since the run started"),
}


# One row per client and evaluation: the evals row split by whose test slice it scored.
CLIENT_EVAL_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "run_id": (pa.string(), "id of the run"),
    "algorithm": (pa.string(), "training scheme"),
    "epoch": (pa.int32(), "epoch index, 0-based; evaluated after it"),
    "client_id": (pa.int32(), "client index, 0-based"),
    "device": (pa.string(), "device profile name of the client"),
    "split_layer": (pa.int32(), "split point n of the client"),
    "test_samples": (pa.int64(), "samples of the client's test slice"),
    "test_accuracy": (pa.float64(), "top-1 accuracy of the client's model (its client part and "
                                    "the server part that serves it) on its slice, fraction"),
    "test_loss": (pa.float64(), "mean cross-entropy on the client's slice"),
}

# The tables a run directory holds, written as part files while the run goes on.
RUN_TABLES: dict[str, dict[str, tuple[pa.DataType, str]]] = {
    STEPS_TABLE: STEP_COLUMNS, EVALS_TABLE: EVAL_COLUMNS, CLIENT_EVALS_TABLE: CLIENT_EVAL_COLUMNS,
}


def arrow_schema(columns: Mapping[str, tuple[pa.DataType, str]]) -> pa.Schema:
    """Arrow schema of a table, with each column's meaning as field metadata."""
    fields = [pa.field(name, typ, metadata={"doc": doc}) for name, (typ, doc) in columns.items()]
    return pa.schema(fields, metadata={"splitray_schema_version": str(SCHEMA_VERSION)})


INFERENCE_TABLE = "inference.parquet"  # written by `splitray infer` into a prune run's directory
INFERENCE_COLUMNS: dict[str, tuple[pa.DataType, str]] = {
    "client_id": (pa.int32(), "client index"),
    "device": (pa.string(), "client device profile"),
    "link": (pa.string(), "client link, described"),
    "budget": (pa.int32(), "channels sent (B): the model M_B of the set"),
    "chosen": (pa.bool_(), "the budget the deadline rule picks for this client"),
    "test_samples": (pa.int64(), "samples of the client's test slice"),
    "test_accuracy": (pa.float64(), "top-1 accuracy of M_B on the slice, fraction"),
    "bytes_per_sample": (pa.int64(), "bytes of one request's payload, bytes"),
    "predicted_latency_ms": (pa.float64(), "client compute + bytes at the mean rate + latency + "
                             "server compute, ms"),
    "sim_latency_ms_mean": (pa.float64(), "mean simulated request latency on the link, ms"),
    "sim_latency_ms_p95": (pa.float64(), "95th percentile of the simulated latency, ms"),
    "deadline_met_share": (pa.float64(), "share of requests within the deadline (NaN: none)"),
}


def schema_markdown() -> str:
    """The schema as Markdown tables, for the docs."""
    out = []
    for title, cols in (*RUN_TABLES.items(), (INFERENCE_TABLE, INFERENCE_COLUMNS)):
        out += [f"### {title}", "", "| column | type | meaning |", "|---|---|---|"]
        out += [f"| `{n}` | {t} | {d} |" for n, (t, d) in cols.items()]
        out.append("")
    return "\n".join(out)


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path within it for a local path or a URI (s3://, gs://,
    file://); a scheme pyarrow does not know is the user's input, a ConfigError."""
    if "://" not in path:
        return pafs.LocalFileSystem(), path
    try:
        return pafs.FileSystem.from_uri(path)
    except pa.ArrowInvalid as e:  # a scheme pyarrow does not know (ftp://): the user's input
        from splitray.config import ConfigError

        raise ConfigError(f"{path!r} is not allowed; {e}") from None


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[pa.NativeFile]:
    """A binary stream whose file appears at `path` only once complete. Local paths and file://
    URIs are written under a hidden temporary name (readers of a table directory skip names
    starting with '.') and moved into place. For object stores the bytes gather in memory and
    go up in one piece once the writer returns (closing a stream stores whatever it holds, so a
    write cut short would leave a truncated object)."""
    fs, p = filesystem(path)
    parent, name = p.rsplit("/", 1) if "/" in p else (".", p)
    fs.create_dir(parent, recursive=True)
    if fs.type_name != "local":
        buffer = pa.BufferOutputStream()
        yield buffer
        with fs.open_output_stream(p) as f:
            f.write(buffer.getvalue())
        return
    tmp = f"{parent}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with fs.open_output_stream(tmp) as f:
            yield f
        fs.move(tmp, p)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
        raise


def _arrow_table(rows: list[dict], columns: Mapping[str, tuple[pa.DataType, str]]) -> pa.Table:
    schema = arrow_schema(columns)
    extra = [k for k in (rows[0] if rows else {}) if k not in columns]
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    for name in extra:  # e.g. trial parameters added by a sweep
        table = table.append_column(name, pa.array([r.get(name) for r in rows]))
    return table


def write_table(rows: list[dict], columns: Mapping[str, tuple[pa.DataType, str]],
                path: str) -> None:
    """Write rows as one Parquet file, atomically."""
    with atomic_output(path) as f:
        pq.write_table(_arrow_table(rows, columns), f)


def append_part(rows: list[dict], columns: Mapping[str, tuple[pa.DataType, str]],
                table_dir: str) -> str:
    """Add `rows` to the table directory `table_dir` as its next part file; returns its path.

    A run's tables are directories of part files: a flush writes only its new rows (O(new
    rows), not a rewrite), and once the first part exists, a run killed at any moment leaves a
    table pandas reads (`pd.read_parquet(table_dir)`): a part appears only once complete."""
    fs, p = filesystem(table_dir)
    fs.create_dir(p, recursive=True)
    path = join_path(table_dir, f"part-{len(table_parts(table_dir)):05d}.parquet")
    write_table(rows, columns, path)
    return path


def claim_dir(path: str) -> bool:
    """Create the directory `path` for this process alone: False when it exists. Atomic on a
    local filesystem (file:// URIs too); in an object store, where a directory is only a prefix,
    it is taken once anything is under it."""
    fs, p = filesystem(path)
    if fs.type_name != "local":
        return fs.get_file_info(p).type == pafs.FileType.NotFound
    try:
        Path(p).parent.mkdir(parents=True, exist_ok=True)
        Path(p).mkdir()
    except FileExistsError:
        return False
    return True


def table_exists(path: str) -> bool:
    """Whether a table (one Parquet file or a directory of part files) is at `path`."""
    fs, p = filesystem(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def write_text(text: str, path: str) -> None:
    """Write a small text file atomically (local) or as one object (URI)."""
    write_bytes(text.encode(), path)


def write_bytes(data: bytes, path: str) -> None:
    """Write a file atomically (see `atomic_output`), local path or URI."""
    with atomic_output(path) as f:
        f.write(data)


def read_bytes(path: str) -> bytes:
    """The bytes of a file at a local path or URI."""
    fs, p = filesystem(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def table_parts(table_dir: str) -> list[str]:
    """The part files of a table directory, in order (none when it does not exist)."""
    fs, p = filesystem(table_dir)
    if fs.get_file_info(p).type != pafs.FileType.Directory:
        return []
    return sorted(join_path(table_dir, i.base_name) for i in fs.get_file_info(pafs.FileSelector(p))
                  if i.base_name.startswith("part-"))


def drop_parts_after(run_dir: str | None, kept: dict[str, int]) -> None:
    """Delete each run table's part files past the first `kept[table]`: the rows written after a
    checkpoint, before a run continues from it. A table the checkpoint does not count (one added
    to splitray after it was written) keeps none."""
    if run_dir is None:
        return
    for name in RUN_TABLES:
        for part in table_parts(join_path(run_dir, name))[kept.get(name, 0):]:
            fs, p = filesystem(part)
            fs.delete_file(p)


def read_table(path: str) -> pd.DataFrame:
    """Read a Parquet table (one file or a directory of part files), local path or URI."""
    fs, p = filesystem(path)
    return pq.read_table(p, filesystem=fs).to_pandas()


def param_cells(values: Mapping[str, Mapping[str, Any]],
                keys: list[str]) -> dict[str, dict[str, Any]]:
    """run -> {param.key: cell} from each run's parameter values (a sweep's trials, or the runs of
    a folder): lists and dicts become JSON strings, and so do the values of a column that mixes
    types, so that each column has one Arrow type; a value a run lacks is None."""
    cells_of: dict[str, dict[str, Any]] = {run: {} for run in values}
    for key in keys:
        cells = [param_cell(v.get(key)) for v in values.values()]
        kinds = {"number" if isinstance(c, int | float) and not isinstance(c, bool)
                 else type(c).__name__ for c in cells if c is not None}
        for run, c in zip(values, cells, strict=True):
            if len(kinds) > 1 and c is not None and not isinstance(c, str):
                c = json.dumps(c)
            cells_of[run][PARAM_PREFIX + key] = c
    return cells_of


def param_cell(value: Any) -> Any:
    """A parameter value as a table cell: lists and dicts as JSON strings."""
    return json.dumps(value) if isinstance(value, list | dict) else value


def check_output_dir(path: str, flag: str) -> None:
    """Create the local directory `path` (and its parents) if needed, or raise ConfigError naming
    `flag` when it cannot hold output (not a directory, not writable): before any work starts.
    A URI's scheme must be one pyarrow knows; the rest is left to its filesystem."""
    from splitray.config import ConfigError

    if "://" in path:
        try:
            filesystem(path)
        except ConfigError as e:
            raise ConfigError(f"{flag}: {e}") from None
        return
    problem = _unwritable_dir(Path(path))
    if problem:
        raise ConfigError(f"{flag}: {path!r} is not allowed; {problem}")


def check_output_file(path: str, flag: str) -> None:
    """As `check_output_dir`, for the file `path`: its folder is created if needed, or
    ConfigError names `flag` when the file could not be written there."""
    from splitray.config import ConfigError

    if "://" in path:
        return
    local = Path(path)
    if local.is_dir():
        raise ConfigError(f"{flag}: {path!r} is not allowed; it is a directory, not a file")
    problem = _unwritable_dir(local.parent)
    if problem:
        raise ConfigError(f"{flag}: {path!r} is not allowed; its folder {str(local.parent)!r}: "
                          f"{problem}")


def _unwritable_dir(local: Path) -> str | None:
    """Why the local directory `local` cannot hold output (after creating it if needed), or
    None when it can."""
    if local.exists() and not local.is_dir():
        return "it is a file, not a directory"
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return f"it cannot hold output ({e.strerror or e})"
    if not os.access(local, os.W_OK | os.X_OK):
        return "it cannot hold output (not writable)"
    return None


def join_path(base: str, name: str) -> str:
    """Join a run directory (local path or URI) and a file name. A URI's options (the query
    string, e.g. `?endpoint_override=...`) stay at its end."""
    if "://" not in base:
        return str(Path(base) / name)
    head, mark, options = base.partition("?")
    return f"{head.rstrip('/')}/{name}{mark}{options}"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def manifest(run_id: str, seed: int, started: str, ended: str | None, status: str,
             extra: Mapping | None = None) -> dict:
    """Facts a reader needs to trust a run: versions, seed, host, times and the table schema."""
    import numpy
    import ray
    import torch

    from splitray import __version__

    return {
        "run_id": run_id,
        "status": status,
        "seed": seed,
        "started": started,
        "ended": ended,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {"splitray": __version__, "torch": torch.__version__, "ray": ray.__version__,
                     "numpy": numpy.__version__, "pandas": pd.__version__, "pyarrow": pa.__version__},
        "schema_version": SCHEMA_VERSION,
        "tables": {"steps": STEPS_TABLE, "evals": EVALS_TABLE, "client_evals": CLIENT_EVALS_TABLE},
        **(dict(extra) if extra else {}),
    }


def write_manifest(data: dict, run_dir: str) -> None:
    write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", join_path(run_dir, "manifest.json"))
