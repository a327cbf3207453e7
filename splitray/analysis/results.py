"""Load a run directory, a directory of runs or a sweep directory into one set of tables."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import yaml

from splitray.config import read_yaml, yaml_problem
from splitray.metrics import (
    CLIENT_EVALS_TABLE,
    EVAL_COLUMNS,
    EVALS_TABLE,
    PARAM_PREFIX,
    RUN_CONFIG_FILE,
    STEP_COLUMNS,
    STEPS_TABLE,
    SWEEP_FILE,
    filesystem,
    join_path,
    param_cells,
    read_bytes,
    read_table,
    table_exists,
    table_parts,
)

# Step columns added since schema version 1, with the value they have in an older run.
ADDED_COLUMNS: dict[str, object] = {
    "client_state": "A", "bytes_model_up": 0, "bytes_model_down": 0, "client_flops": float("nan"),
    "server_flops": float("nan"), "sim_model_down_s": 0.0, "sim_client_backward_s": float("nan"),
    "sim_model_up_s": 0.0,  # version 2
    "dropped": "",  # version 3
    "cut": "",  # version 5
}


@dataclass
class Results:
    """Step, eval and per-client eval rows of one or more runs; `key` names the column that
    identifies a run, `params` the param.<key> columns that tell the runs apart (a sweep's
    parameters; for a folder of runs, the config keys whose values differ). Runs written before
    schema version 4 have no per-client rows. `left_out`: a folder's subdirectories that hold
    runs of their own one level down (a sweep, a folder of runs), not loaded with it."""

    steps: pd.DataFrame
    evals: pd.DataFrame
    key: str
    params: list[str] = field(default_factory=list)
    client_evals: pd.DataFrame = field(default_factory=pd.DataFrame)
    left_out: list[str] = field(default_factory=list)

    def runs(self) -> list:
        """Run identifiers in the order they first appear in the eval table."""
        return list(pd.unique(self.evals[self.key]))


def _file_type(path: str) -> pafs.FileType:
    fs, p = filesystem(path)
    return fs.get_file_info(p).type


def _is_file(path: str) -> bool:
    return _file_type(path) == pafs.FileType.File


def _subdir_names(path: str) -> list[str]:
    fs, p = filesystem(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=False))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory)


def _read_checked(path: str, columns: dict, key: str) -> pd.DataFrame:
    """Read one table and check it holds the splitray schema and at least one row."""
    if not table_exists(path):
        raise FileNotFoundError(f"missing results table: {path}")
    df = read_table(path)
    if df.empty:  # e.g. an empty directory of part files
        raise ValueError(f"{path} has no rows (did its run stop before writing any?)")
    for column, value in ADDED_COLUMNS.items():  # runs written by an older splitray
        if column in columns and column not in df.columns:
            df[column] = value
    missing = [c for c in dict.fromkeys([*columns, key]) if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing} of the splitray schema")
    return df


def _load_tables(base: str, key: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    steps = _read_checked(join_path(base, STEPS_TABLE), STEP_COLUMNS, key)
    evals = _read_checked(join_path(base, EVALS_TABLE), EVAL_COLUMNS, key)
    client_evals_path = join_path(base, CLIENT_EVALS_TABLE)
    # Optional: runs before schema version 4 have none; a run resumed from such a run's
    # checkpoint has rows for the epochs after it only.
    client_evals = (read_table(client_evals_path) if table_exists(client_evals_path)
                    else pd.DataFrame())
    return steps, evals, client_evals


def _column_names(path: str) -> list[str]:
    fs, p = filesystem(path)
    return pq.read_schema(p, filesystem=fs).names


def _param_columns(evals: pd.DataFrame) -> list[str]:
    return [c for c in evals.columns if c.startswith(PARAM_PREFIX)]


def _load_sweep(path: str) -> Results:
    evals_path = join_path(path, EVALS_TABLE)
    # With no trial rows the combined tables are written without trial_id or param columns.
    if _has_part(evals_path) and read_table(evals_path).empty:
        raise ValueError(f"sweep {path} has no trial rows: {_why_no_trial_rows(path)}")
    steps, evals, client_evals = _load_tables(path, "trial_id")
    return Results(steps=steps, evals=evals, key="trial_id", params=_param_columns(evals),
                   client_evals=client_evals)


def _why_no_trial_rows(path: str) -> str:
    sweep_file = join_path(path, SWEEP_FILE)
    trials = json.loads(read_bytes(sweep_file)).get("trials", []) if _is_file(sweep_file) else []
    if trials and all(t.get("status") == "failed" for t in trials):
        return f"every trial failed ({SWEEP_FILE} names each error)"
    return "no trial reached its first evaluation"


def _run_settings(run_dir: str) -> dict[str, Any]:
    """A run's resolved config (its config.yaml) as dotted keys and values; empty where the run
    directory has none."""
    path = join_path(run_dir, RUN_CONFIG_FILE)
    if not _is_file(path):
        return {}
    settings: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for name, value in node.items():
                walk(f"{prefix}{name}.", value)
        else:
            settings[prefix.rstrip(".")] = node

    try:
        walk("", read_yaml(read_bytes(path).decode()))
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {yaml_problem(e)}") from None
    return settings


def _differing_settings(run_dirs: list[str]) -> dict[str, dict[str, Any]]:
    """run_dir -> {param.key: value} for the config keys whose values differ between the runs
    (none for a single run): what tells a folder's runs apart, as a sweep's params do."""
    settings = {d: _run_settings(d) for d in run_dirs}
    keys = list(dict.fromkeys(k for s in settings.values() for k in s))
    differ = [k for k in keys if len({json.dumps(s.get(k), sort_keys=True, default=str)
                                      for s in settings.values()}) > 1]
    return param_cells(settings, differ)


def _load_runs(path: str, run_dirs: list[str]) -> Results:
    steps, evals, client_evals, seen = [], [], [], {}
    params = _differing_settings(run_dirs)
    for run_dir in run_dirs:
        s, e, c = (df.assign(**params[run_dir]) if not df.empty else df
                   for df in _load_tables(run_dir, "run_id"))
        for run_id in pd.unique(e["run_id"]):
            if run_id in seen:
                raise ValueError(f"run_id {run_id!r} appears in both {seen[run_id]} and {run_dir}; "
                                 "each run directory must hold a distinct run")
            seen[run_id] = run_dir
        steps.append(s)
        evals.append(e)
        client_evals.append(c)
    return Results(steps=pd.concat(steps, ignore_index=True),
                   evals=pd.concat(evals, ignore_index=True), key="run_id",
                   params=list(next(iter(params.values()), {})),
                   client_evals=pd.concat([c for c in client_evals if not c.empty]
                                          or [pd.DataFrame()], ignore_index=True))


def load_steps(path: str) -> tuple[pd.DataFrame, str]:
    """The step rows of one run or sweep directory and the column that tells its runs apart:
    what a timeline needs, which a run stopped before its first evaluation has too."""
    path = str(path)
    steps_path = join_path(path, STEPS_TABLE)
    if not table_exists(steps_path):
        raise FileNotFoundError(f"{path} holds no {STEPS_TABLE}; give a run directory")
    key = "trial_id" if _is_sweep(path) else "run_id"
    return _read_checked(steps_path, STEP_COLUMNS, key), key


def load(path: str) -> Results:
    """Load results from a run dir, a dir of run dirs or a sweep dir (local path or URI)."""
    path = str(path)
    kind = _file_type(path)
    if kind == pafs.FileType.File:
        raise FileNotFoundError(f"{path} is a file; give a run, sweep or results directory")
    if kind != pafs.FileType.Directory:
        raise FileNotFoundError(f"results directory not found: {path}")
    if _is_sweep(path):
        return _load_sweep(path)
    if table_exists(join_path(path, EVALS_TABLE)) or table_exists(join_path(path, STEPS_TABLE)):
        return _load_runs(path, [path])
    subdirs = [join_path(path, name) for name in _subdir_names(path)]
    # A run killed or diverged before its first evaluation has no evals yet, and one rolled back
    # to its start has empty table folders: neither is a result. A sweep is analysed on its own.
    run_dirs = [d for d in subdirs if _has_part(join_path(d, EVALS_TABLE)) and not _is_sweep(d)]
    if not run_dirs:
        raise FileNotFoundError(f"no splitray results in {path}: expected {EVALS_TABLE} and "
                                f"{STEPS_TABLE} there or in its subdirectories")
    results = _load_runs(path, run_dirs)
    results.left_out = [d for d in subdirs if d not in run_dirs and _holds_runs(d)]
    return results


def _has_part(table: str) -> bool:
    """Whether a table is one Parquet file or a directory with at least one part file."""
    return _is_file(table) or bool(table_parts(table))


def _is_sweep(path: str) -> bool:
    """Whether `path` holds a sweep's combined tables: its sweep.json, or (that file missing)
    evals with a trial_id column."""
    evals_path = join_path(path, EVALS_TABLE)
    return _is_file(join_path(path, SWEEP_FILE)) or (
        _is_file(evals_path) and "trial_id" in _column_names(evals_path))


def _holds_runs(path: str) -> bool:
    """Whether `path` is a sweep or a folder of runs (what `load` reads there)."""
    return _is_sweep(path) or any(_has_part(join_path(join_path(path, name), EVALS_TABLE))
                                  for name in _subdir_names(path))
