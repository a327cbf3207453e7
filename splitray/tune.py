"""Ray Tune integration: the search-space file format, one trial per simulation, combined results.

A space file (YAML) names a base experiment, fixed overrides and the keys to sweep:

    base: ../experiments/quickstart.yaml     # relative to the space file; optional
    set: {data.train_samples: 256}           # fixed overrides for every trial; optional
    metric: test_accuracy                    # an evals.parquet column, reported every epoch
    mode: max                                # optional: max for test_accuracy, else min
    num_samples: 2                           # optional: samples (x the grid), default 1
    space:
      compression.epsilon: {loguniform: [0.1, 10]}
      compression.delta: {grid: [0.001, 0.01]}
      schedule.phases[0].budget: {choice: [2, 4, 8]}
      model.split_layer: {randint: [3, 6]}   # Tune's randint: upper bound excluded

Keys are dotted config paths; `[i]` indexes a list that the base config holds. The kinds map onto
Tune's own domains: grid -> tune.grid_search, choice -> tune.choice, uniform -> tune.uniform,
loguniform -> tune.loguniform, randint -> tune.randint.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from splitray.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    dump_yaml,
    parse_key,
    read_yaml,
    read_yaml_file,
    set_dotted,
)
from splitray.metrics import (
    EVAL_COLUMNS,
    RUN_TABLES,
    SWEEP_FILE,
    check_output_dir,
    param_cell,
    param_cells,
    read_table,
    write_manifest,
    write_table,
    write_text,
)
from splitray.planning import asks_for_plan, device_profiles, shared_medium, split_channels

SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SPACE_FILE_KEYS = ("base", "set", "metric", "mode", "num_samples", "space")
SCHEDULERS = ("fifo", "asha")
SWEEP_SETTINGS = "settings.yaml"  # in the sweep directory: what `--resume` needs to go on
TUNE_EXPERIMENT = "sweep"  # Tune's experiment directory under SWEEP_DIR/tune
# Logical CPUs of a trial's first bundle, where Tune runs the trial driver (the orchestrator, which
# mostly waits on its actors); the server and client actors get bundles of their own num_cpus.
TRIAL_DRIVER_CPUS = 0.25


@dataclass
class SearchSpace:
    """A validated space file: the base experiment (with `set` applied) and the swept keys."""

    path: str
    base: dict
    params: dict[str, tuple[str, list]]  # key -> (kind, values or bounds)
    metric: str = "test_accuracy"
    mode: str = "max"
    num_samples: int = 1


@dataclass
class TrialRecord:
    """One trial's outcome: `status` is finished, stopped (by the scheduler), diverged (the loss
    became NaN or infinite) or failed."""

    trial_id: str
    status: str
    error: str | None
    params: dict
    epochs: int
    final_metric: float | None


@dataclass
class SweepResult:
    """A finished sweep: where it was written, its trials and the combined tables."""

    out_dir: str
    trials: list[TrialRecord]
    evals: pd.DataFrame
    steps: pd.DataFrame
    metric: str
    mode: str
    best_trial_id: str | None
    wall_time_s: float  # all attempts': the first run and every --resume


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM (`timeout`, `ray job stop`) stopped a sweep; `splitray tune --resume
    out_dir` continues it from Tune's last state and the trials' checkpoints. `exit_code` is the
    shell's for the signal."""

    def __init__(self, out_dir: Path, exit_code: int) -> None:
        super().__init__(f"sweep in {out_dir} interrupted")
        self.out_dir, self.exit_code = out_dir, exit_code


def _apply(base: dict, params: dict[str, Any]) -> dict:
    data = copy.deepcopy(base)
    # Parents before children, so `schedule.phases` and `schedule.phases[0].budget` compose.
    for key in sorted(params, key=lambda k: len(parse_key(k))):
        set_dotted(data, key, params[key])
    return data


def trial_config(base: dict, params: dict[str, Any]) -> ExperimentConfig:
    """The experiment config of one trial: the base with the trial's sampled values applied."""
    return config_from_dict(_apply(base, params))


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{what}: {value!r} is not allowed; expected a number")
    return float(value)


def _check_domain(key: str, spec: Any) -> tuple[str, list]:
    """Check one `space` entry's shape and bounds; return (kind, values or bounds)."""
    kinds = ", ".join(SPACE_KINDS)
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{key}: {spec!r} is not allowed; expected one of {{{kinds}: ...}}, "
                          "e.g. {grid: [0.001, 0.01]}")
    (kind, args), = spec.items()
    if kind not in SPACE_KINDS:
        raise ConfigError(f"{key}: {kind!r} is not a search kind; choose one of {kinds}")
    if kind in ("grid", "choice"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"{key}: {kind} {args!r} is not allowed; expected a non-empty list")
        return kind, args
    if not isinstance(args, list) or len(args) != 2:
        raise ConfigError(f"{key}: {kind} {args!r} is not allowed; expected [lower, upper]")
    if kind == "randint":
        lo, hi = args
        for v in args:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ConfigError(f"{key}: randint bound {v!r} is not allowed; expected integers")
        if lo >= hi:
            raise ConfigError(f"{key}: randint [{lo}, {hi}] is not allowed; need lower < upper "
                              "(the upper bound is excluded)")
        return kind, [lo, hi]
    lo, hi = (_number(v, f"{key}: {kind} bound") for v in args)
    if lo >= hi:
        raise ConfigError(f"{key}: {kind} [{lo:g}, {hi:g}] is not allowed; need lower < upper")
    if kind == "loguniform" and lo <= 0:
        raise ConfigError(f"{key}: loguniform [{lo:g}, {hi:g}] is not allowed; need lower > 0")
    return kind, [lo, hi]


MAX_CHECKED_INTEGERS = 64  # a randint range this short is checked value by value


def candidate_values(kind: str, args: list) -> list:
    """Values that stand for a domain when checking it: every grid/choice value and every integer
    of a short randint range (split points), else the bounds."""
    if kind in ("grid", "choice"):
        return list(args)
    if kind == "randint":
        lo, hi = args
        return list(range(lo, hi)) if hi - lo <= MAX_CHECKED_INTEGERS else [lo, hi - 1]
    return list(args)


def tune_domain(kind: str, args: list) -> Any:
    """Map one checked space entry onto Ray Tune's search-space function of the same kind."""
    from ray import tune

    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    if kind == "randint":
        return tune.randint(*args)
    raise ValueError(f"kind: {kind!r} is not allowed; choose one of {', '.join(SPACE_KINDS)}")


def param_space(space: SearchSpace) -> dict[str, Any]:
    """Tune's param_space for the sweep: one domain per swept key."""
    return {key: tune_domain(kind, args) for key, (kind, args) in space.params.items()}


# A sample takes 1-8 ms to check (the model's split table, the links): a few seconds in all.
MAX_CHECKED_COMBINATIONS = 4096  # beyond this, every pair of keys' candidates
MAX_CHECKED_PAIRS = 2048  # beyond this too, all keys' first values together


def _validation_samples(space: SearchSpace) -> list[dict[str, Any]]:
    """Candidate assignments to check: each key's candidates alone (an error names that key),
    then every combination of all keys' candidates, or if there are too many, every pair of
    keys' (a budget and a split point, CPUs and a client count) with the other keys at their
    first candidates, or if even those are too many, all keys' first candidates together."""
    keys = list(space.params)
    candidates = [candidate_values(*space.params[key]) for key in keys]
    samples = [{key: v} for key, values in zip(keys, candidates, strict=True) for v in values]
    if len(keys) < 2:
        return samples
    if math.prod(len(values) for values in candidates) <= MAX_CHECKED_COMBINATIONS:
        return samples + [dict(zip(keys, c, strict=True)) for c in itertools.product(*candidates)]
    first = {key: values[0] for key, values in zip(keys, candidates, strict=True)}
    pairs = list(itertools.combinations(range(len(keys)), 2))
    if sum(len(candidates[a]) * len(candidates[b]) for a, b in pairs) > MAX_CHECKED_PAIRS:
        return [*samples, first]
    return samples + [{**first, keys[a]: va, keys[b]: vb} for a, b in pairs
                      for va, vb in itertools.product(candidates[a], candidates[b])]


def _check_trial(cfg: ExperimentConfig) -> None:
    """What a run checks from its config before loading data: the model's split table, the
    device profiles and the network links (only the shared medium where the planner is to
    choose split points or shares)."""
    from splitray.runtime.orchestrator import network_model

    split_channels(cfg)
    device_profiles(cfg)
    if asks_for_plan(cfg):
        shared_medium(cfg)
        return
    try:
        network_model(cfg)
    except FileNotFoundError:
        pass  # a missing trace file, like missing data, fails the trial that meets it


def _load_space_unprefixed(path: Path) -> SearchSpace:
    raw = read_yaml_file(path, "space")
    if not isinstance(raw, dict):
        raise ConfigError("must hold a mapping with a `space` section at the top level")
    unknown = sorted(set(raw) - set(SPACE_FILE_KEYS))
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key; allowed keys are "
                          f"{', '.join(SPACE_FILE_KEYS)}")
    base: dict = {}
    if raw.get("base") is not None:
        base_path = path.parent / str(raw["base"])
        loaded = read_yaml_file(base_path, "base")
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"base: {str(base_path)!r} must hold a mapping at the top level")
        base = loaded or {}
    fixed = raw.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"set: {fixed!r} is not allowed; expected a mapping of key: value")
    base = _apply(base, {str(key): value for key, value in fixed.items()})
    config_from_dict(base)  # the base alone must be a valid experiment

    metric = raw.get("metric", "test_accuracy")
    numeric = [c for c, (t, _) in EVAL_COLUMNS.items() if c not in ("epoch", "phase", "budget")
               and str(t).startswith(("int", "double", "float"))]
    if metric not in numeric:
        raise ConfigError(f"metric: {metric!r} is not allowed; choose one of {', '.join(numeric)}")
    mode = raw.get("mode", "max" if metric == "test_accuracy" else "min")
    if mode not in ("max", "min"):
        raise ConfigError(f"mode: {mode!r} is not allowed; choose max or min")
    num_samples = raw.get("num_samples", 1)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples: {num_samples!r} is not allowed; must be an integer >= 1")

    entries = raw.get("space")
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"space: {entries!r} is not allowed; expected a mapping of config key: "
                          "{grid|choice|uniform|loguniform|randint: ...}")
    params: dict[str, tuple[str, list]] = {}
    for key, spec in entries.items():
        key = str(key)
        parse_key(key)
        # A swept key would replace a `set` key at or below it (the other way they compose).
        shadowed = [k for k in map(str, fixed) if parse_key(k)[:len(parse_key(key))]
                    == parse_key(key)]
        if shadowed:
            raise ConfigError(f"{key}: both in `set` (as {shadowed[0]}) and in `space`; keep one")
        params[key] = _check_domain(key, spec)
    space = SearchSpace(str(path), base, params, metric, mode, num_samples)
    for sample in _validation_samples(space):
        try:
            _check_trial(trial_config(base, sample))
        except ConfigError as e:
            msg = str(e)
            if len(sample) > 1:
                values = ", ".join(f"{key}={value!r}" for key, value in sample.items())
                msg = f"space: {values} together give {msg}"
            else:
                (key, value), = sample.items()
                if not msg.startswith(key):
                    msg = f"{key}: {value!r} gives {msg}"
            raise ConfigError(msg) from None
    return space


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a space file; every candidate value is checked by building a config.

    Raises ConfigError (one line: the file, the key, the value and the rule) before any trial runs.
    """
    p = Path(path)
    try:
        return _load_space_unprefixed(p)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None


def trial_bundles(cfg: ExperimentConfig, has_gpu: bool,
                  cluster_cpus: float = math.inf) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: the driver, the server, then one per client actor
    (or per pool worker, when the clients are state on a pool: see `engine.clients`)."""
    gpus = {"auto": 1 if has_gpu else 0, "0": 0, "1": 1}[cfg.server.num_gpus]
    server = {"CPU": cfg.server.num_cpus, **({"GPU": float(gpus)} if gpus else {})}
    _, processes = _client_processes(cfg, cluster_cpus)
    return [{"CPU": TRIAL_DRIVER_CPUS}, server,
            *({"CPU": cfg.clients.num_cpus} for _ in range(processes))]


def _client_processes(cfg: ExperimentConfig, cluster_cpus: float) -> tuple[bool, int]:
    """Whether a trial's clients run on a pool, and its client bundles: pool workers or clients."""
    from splitray.runtime.pool import pool_size, uses_pool

    cpus = cluster_cpus - TRIAL_DRIVER_CPUS
    if uses_pool(cfg, cpus):
        return True, pool_size(cfg, cpus)
    return False, cfg.clients.count


def trial_resources(base: dict, has_gpu: bool, config: dict,
                    cluster_cpus: float = math.inf) -> Any:
    """Tune's resources callable: a PlacementGroupFactory sized by the trial's own config."""
    from ray import tune

    try:
        cfg = trial_config(base, config)
    except ConfigError:  # a bad combination of values: the trial itself fails and is reported
        cfg = config_from_dict(base)
    return tune.PlacementGroupFactory(trial_bundles(cfg, has_gpu, cluster_cpus))


def _report_row(row: dict, metric: str) -> dict[str, float]:
    """The eval row's numbers; the metric, bytes, simulated time and epoch first (Tune's table
    shows the first few)."""
    first = [metric, "cum_bytes_up", "sim_time_s", "epoch"]
    keys = dict.fromkeys([*first, *row])
    return {k: row[k] for k in keys
            if isinstance(row.get(k), int | float) and not isinstance(row.get(k), bool)}


TRIAL_MARKER = "epochs_done.json"  # what a trial's Tune checkpoint holds


def run_trial(config: dict, base: dict, trials_dir: str, metric: str, cwd: str) -> None:
    """Tune function trainable: one full simulation whose epochs are reported to Tune.

    The run's state lives in its own run directory (under the sweep's --out), whose
    checkpoint.pt the run rewrites; Tune gets a marker checkpoint (the epochs done) each time, so
    that it knows the trial can continue. A retried or restored trial continues from its run
    directory's checkpoint (rows after it dropped), or starts over with the directory cleared: a
    trial's tables never hold a step twice. (Tune's own copies of a full checkpoint would have
    to be kept, every one: Tune deletes the older one before its experiment snapshot names the
    newer, and a sweep killed in between cannot be restored from a deleted checkpoint.)"""
    from ray import tune

    from splitray.runtime import RunDiverged, resume_experiment, run_experiment
    from splitray.runtime.context import CHECKPOINT_FILE

    # Tune starts a trial in its own directory: relative paths (data.root, availability.path)
    # mean what they meant where the sweep was started.
    os.chdir(cwd)
    cfg = trial_config(base, config)
    trial_id = tune.get_context().get_trial_id()
    run_dir = Path(trials_dir) / trial_id

    reported: list[int] = []  # the epochs this attempt reported
    last: list[tuple[dict, str | None]] = []  # the last epoch's report, held back

    def report(row: dict, checkpoint: str | None) -> None:
        metrics = _report_row(row, metric)
        reported.append(row["epoch"])
        if checkpoint is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / TRIAL_MARKER).write_text(json.dumps({"epochs_done": row["epoch"] + 1}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    def on_epoch(row: dict, checkpoint: str | None) -> None:
        # A scheduler may end the trial at any report (ASHA at its last rung): the last epoch's
        # goes to Tune once the run has finished writing its manifest and summary.
        if row["epoch"] + 1 == cfg.total_epochs:
            last.append((row, checkpoint))
        else:
            report(row, checkpoint)

    def report_the_rest() -> None:
        for row, checkpoint in last:
            report(row, checkpoint)
        if reported:
            return
        # Nothing this attempt: a retry that resumed with no epoch left (it stopped between
        # its last checkpoint and its manifest) reports the run's last row; a trial that
        # diverged before its first evaluation reports NaN, since Tune fails a trial whose
        # last result lacks the metric (with two swept keys).
        evals = _trial_table(Path(trials_dir), trial_id, "evals.parquet")
        if evals is not None and len(evals):
            report(evals.sort_values("epoch").to_dict("records")[-1], None)
        else:
            tune.report({metric: math.nan})

    if _trial_status(Path(trials_dir), trial_id) in ("finished", "diverged"):
        # It ended before Tune saved that it had (a resumed sweep): tell Tune what it reported.
        evals = _trial_table(Path(trials_dir), trial_id, "evals.parquet")
        for row in ([] if evals is None else evals.sort_values("epoch").to_dict("records")):
            report(row, None)
        report_the_rest()
        return
    try:
        if (run_dir / CHECKPOINT_FILE).is_file() and (run_dir / "manifest.json").is_file():
            resume_experiment(str(run_dir), engine="ray", progress=False, on_epoch=on_epoch)
        else:
            if run_dir.exists():  # an earlier attempt's rows, with no checkpoint to continue
                shutil.rmtree(run_dir)
            run_experiment(cfg, out_dir=None, engine="ray", progress=False, run_dir=str(run_dir),
                           on_epoch=on_epoch)
    except RunDiverged:
        pass  # the trial's manifest says diverged; the sweep goes on
    report_the_rest()


def _mark_stopped(run_dir: Path) -> None:
    """Tune ends a trial its scheduler stops without letting the run finish: say so in the run's
    manifest, which the run left at "running"."""
    path = run_dir / "manifest.json"
    if path.is_file():
        data = json.loads(path.read_text())
        data["status"] = "stopped"
        write_manifest(data, str(run_dir))


def _trial_status(trials_dir: Path, trial_id: str) -> str | None:
    """The status a trial's run wrote into its manifest, if it got that far."""
    path = trials_dir / trial_id / "manifest.json"
    return json.loads(path.read_text()).get("status") if path.is_file() else None


def _trial_table(trials_dir: Path, trial_id: str, name: str) -> pd.DataFrame | None:
    path = trials_dir / trial_id / name
    return read_table(str(path)) if path.exists() else None


def combine_trials(out_dir: str | Path, trials: list[TrialRecord],
                   keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write out_dir/evals.parquet, steps.parquet and client_evals.parquet: every trial's rows,
    trial_id and params; returns the evals and steps."""
    out = Path(out_dir)
    params = param_cells({t.trial_id: t.params for t in trials}, keys)
    tables = {}
    for name, columns in RUN_TABLES.items():
        rows: list[dict] = []
        for t in trials:
            df = _trial_table(out / "trials", t.trial_id, name)
            if df is None:
                continue
            for row in df.to_dict("records"):
                rows.append({**row, "trial_id": t.trial_id, **params[t.trial_id]})
        write_table(rows, columns, str(out / name))
        tables[name] = read_table(str(out / name))
    return tables["evals.parquet"], tables["steps.parquet"]


def _error_line(error: BaseException | None) -> str | None:
    """The root cause of a trial error as `Type: message`, first line only."""
    if error is None:
        return None
    seen = set()
    while getattr(error, "cause", None) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.cause
    lines = [ln for ln in str(error).splitlines() if ln.strip()]
    text = lines[0].strip() if lines else ""
    name = type(error).__name__
    return f"{name}: {text}" if text and not text.startswith(name) else (text or name)


def _max_epochs_bound(space: SearchSpace) -> int:
    """An upper bound of any trial's epochs, for ASHA's rungs (keys' effects added up)."""
    base_epochs = config_from_dict(space.base).total_epochs
    extra = 0
    for key, (kind, args) in space.params.items():
        totals = [trial_config(space.base, {key: v}).total_epochs
                  for v in candidate_values(kind, args)]
        extra += max(0, max(totals) - base_epochs)
    return max(1, base_epochs + extra)


def _check_fits(space: SearchSpace, cluster: dict[str, float], has_gpu: bool) -> None:
    """Fail before any trial when a trial's placement group can never fit the cluster."""
    cpus = cluster.get("CPU", 0.0)

    def need_of(cfg: ExperimentConfig) -> float:
        return sum(b.get("CPU", 0.0) for b in trial_bundles(cfg, has_gpu, cpus))

    # Beyond the validation samples (pairs at most), every key at its own largest need at once:
    # three keys (server, client CPUs, client count) can outgrow the cluster only together.
    largest = {key: max(candidate_values(kind, args),
                        key=lambda v, key=key: need_of(trial_config(space.base, {key: v})))
               for key, (kind, args) in space.params.items()}
    try:
        trial_config(space.base, largest)
        worst = [largest]
    except ConfigError:
        worst = []  # that combination is no trial
    for sample in [*_validation_samples(space), *worst]:
        cfg = trial_config(space.base, sample)
        need = need_of(cfg)
        if need > cpus + 1e-9:
            on_pool, processes = _client_processes(cfg, cpus)
            clients = (f"{processes} pool worker{'s' if processes > 1 else ''} x "
                       f"{cfg.clients.num_cpus:g} for {cfg.clients.count} clients" if on_pool
                       else f"{processes} clients x {cfg.clients.num_cpus:g}")
            raise ConfigError(
                f"{space.path}: a trial needs {need:g} CPUs (driver {TRIAL_DRIVER_CPUS:g} + "
                f"server {cfg.server.num_cpus:g} + {clients}) but the Ray cluster has {cpus:g}; "
                "lower clients.num_cpus or server.num_cpus (Ray resources are logical)")
        if cfg.server.num_gpus == "1" and not has_gpu:
            raise ConfigError(f"{space.path}: server.num_gpus: '1' is not allowed; the Ray "
                              "cluster has no GPU")


def _records(results: Any, space: SearchSpace, trials_dir: Path) -> list[TrialRecord]:
    records = []
    for result in results:
        trial_id = Path(result.path).name
        params = {k: result.config.get(k) for k in space.params}
        evals = _trial_table(trials_dir, trial_id, "evals.parquet")
        epochs = 0 if evals is None else len(evals)
        final = None
        if evals is not None and epochs:
            final = float(evals.sort_values("epoch", kind="stable")[space.metric].iloc[-1])
        if result.error is not None:
            status = "failed"
        elif _trial_status(trials_dir, trial_id) == "diverged":
            status = "diverged"
        else:
            total = trial_config(space.base, params).total_epochs
            status = "finished" if epochs >= total else "stopped"
            if status == "stopped":
                _mark_stopped(trials_dir / trial_id)
        records.append(TrialRecord(trial_id, status, _error_line(result.error), params, epochs,
                                   final))
    return sorted(records, key=lambda r: r.trial_id)


def _best(trials: list[TrialRecord], mode: str) -> str | None:
    """The finished trial with the best final metric: one that ASHA stopped, or that failed,
    ran fewer epochs, and a metric summed over epochs (bytes, time) would favour it."""
    scored = [t for t in trials if t.final_metric is not None and not math.isnan(t.final_metric)
              and t.status == "finished"]
    if not scored:
        return None
    pick = max if mode == "max" else min
    return pick(scored, key=lambda t: t.final_metric).trial_id


def run_sweep(space: SearchSpace, out_dir: str | Path, num_samples: int | None = None,
              scheduler: str = "fifo", max_concurrent: int | None = None,
              max_failures: int = 0, verbose: int = 1) -> SweepResult:
    """Run every trial of the space with Ray Tune and write the combined sweep directory.

    Each trial is one `run_experiment` (engine "ray") in `out_dir/trials/<trial_id>`, its actors
    reserved by the trial's placement group; per-epoch metrics go to Tune, so ASHA can stop
    trials early, and the run's checkpoints too, so a trial that fails is retried from its last
    checkpoint up to `max_failures` times. `out_dir` gets evals.parquet, steps.parquet,
    client_evals.parquet (all trials' rows with `trial_id` and `param.*` columns) and sweep.json;
    Tune's own records go to `out_dir/tune`, from where `resume_sweep` continues an interrupted sweep.
    `verbose` 0: no Tune status tables, and a Ray started here prints no info or warning lines.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from splitray.runtime.orchestrator import start_ray

    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler: {scheduler!r} is not allowed; choose one of "
                          f"{', '.join(SCHEDULERS)}")
    if num_samples is not None and num_samples < 1:
        raise ConfigError(f"--num-samples: {num_samples} is not allowed; must be >= 1")
    samples = num_samples or space.num_samples
    base_cfg = config_from_dict(space.base)
    # Simulated time from FLOPs makes a run a function of its config (wall clock aside).
    deterministic = (base_cfg.engine.compute_time == "flops"
                     and base_cfg.engine.time_mode == "simulated" and space.metric != "wall_time_s")
    if samples > 1 and deterministic and "seed" not in space.params and all(
            kind == "grid" for kind, _ in space.params.values()):
        raise ConfigError(f"num_samples: {samples} is not allowed over a grid alone; a run with "
                          "FLOP-timed compute is deterministic, so each grid point would run the "
                          "same trial again: sweep the seed instead (space: seed: {grid: [0, 1, "
                          "2]})")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent: {max_concurrent} is not allowed; must be >= 1")
    if max_failures < 0:
        raise ConfigError(f"--max-failures: {max_failures} is not allowed; must be >= 0")
    if "://" in str(out_dir):
        raise ConfigError(f"--out: {str(out_dir)!r} is not allowed; give a local directory")
    out = Path(out_dir).resolve()
    if (out / SWEEP_FILE).exists() or (out / SWEEP_SETTINGS).exists():
        raise ConfigError(f"--out: {str(out_dir)!r} already holds a sweep; choose a new directory "
                          "(or continue it with splitray tune --resume)")
    if out.is_dir() and any(out.iterdir()):  # a sweep's tables and trials/ would mix with them
        raise ConfigError(f"--out: {str(out_dir)!r} is not allowed; it holds other files: choose a "
                          "new or empty directory")
    check_output_dir(str(out_dir), "--out")
    if not ray.is_initialized():
        start_ray(base_cfg.engine.ray_address, quiet=verbose == 0)
    cluster = ray.cluster_resources()
    has_gpu = cluster.get("GPU", 0) >= 1
    _check_fits(space, cluster, has_gpu)

    out.mkdir(parents=True, exist_ok=True)
    write_text(dump_yaml({"source": space.path, "base": space.base, "metric": space.metric,
                               "mode": space.mode, "scheduler": scheduler,
                               "space": {k: {kind: args} for k, (kind, args)
                                         in space.params.items()}}),
               str(out / SWEEP_SETTINGS))
    sched = (ASHAScheduler(grace_period=1, max_t=_max_epochs_bound(space), stop_last_trials=False)
             if scheduler == "asha" else FIFOScheduler())
    tuner = tune.Tuner(
        _trainable(space, out, has_gpu),
        param_space=param_space(space),
        tune_config=tune.TuneConfig(
            metric=space.metric, mode=space.mode, scheduler=sched,
            num_samples=samples,
            search_alg=BasicVariantGenerator(max_concurrent=max_concurrent or 0,
                                             random_state=base_cfg.seed),
            trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name=TUNE_EXPERIMENT, storage_path=str(out / "tune"), verbose=verbose,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            # Every marker kept (a few bytes each): see run_trial.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None)),
    )
    return _fit(tuner, space, out, scheduler)


def resume_sweep(out_dir: str | Path) -> SweepResult:
    """Continue an interrupted sweep (`Tuner.restore`): finished trials stay, trials that were
    running continue from their last checkpoint, the rest start; then the sweep's tables and
    sweep.json are written as by `run_sweep`."""
    import ray
    from ray import tune

    from splitray.runtime.orchestrator import start_ray

    out = Path(out_dir).resolve()
    experiment = out / "tune" / TUNE_EXPERIMENT
    if (out / SWEEP_SETTINGS).is_file() and not resumable(out):
        raise ConfigError(f"--resume: {str(out_dir)!r} is not allowed; the sweep stopped before "
                          "Tune saved its first state, so there is nothing to continue: remove "
                          "the directory and run the sweep again")
    if not (out / SWEEP_SETTINGS).is_file() or not tune.Tuner.can_restore(str(experiment)):
        raise ConfigError(f"--resume: {str(out_dir)!r} is not allowed; it holds no sweep that "
                          f"Tune can continue ({SWEEP_SETTINGS} and tune/{TUNE_EXPERIMENT}/)")
    if (out / SWEEP_FILE).is_file():
        ended = json.loads((out / SWEEP_FILE).read_text())["trials"]
        if all(t["status"] != "failed" for t in ended):  # Tune retries failed ones on a resume
            raise ConfigError(f"--resume: {str(out_dir)!r} is not allowed; the sweep has finished "
                              f"(no trial failed, {SWEEP_FILE}): there is nothing to continue")
    settings = read_yaml_file(out / SWEEP_SETTINGS, "--resume")
    params = {str(k): _check_domain(str(k), v) for k, v in settings["space"].items()}
    space = SearchSpace(settings["source"], settings["base"], params, settings["metric"],
                        settings["mode"])
    if not ray.is_initialized():
        start_ray(config_from_dict(space.base).engine.ray_address, quiet=False)
    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    tuner = tune.Tuner.restore(str(experiment), trainable=_trainable(space, out, has_gpu),
                               resume_unfinished=True, resume_errored=True)
    return _fit(tuner, space, out, settings["scheduler"])


def resumable(out: Path) -> bool:
    """Whether Tune saved the state of the sweep in `out` (it does a few seconds in; a sweep
    stopped before then cannot be continued)."""
    return any((out / "tune" / TUNE_EXPERIMENT).glob("experiment_state-*.json"))


def _record_attempt(out: Path, wall_s: float) -> list[float]:
    """Add an attempt's wall seconds to settings.yaml, where a resume finds them; returns every
    attempt's so far (the first run and each resume, interrupted or ended)."""
    settings = read_yaml((out / SWEEP_SETTINGS).read_text())
    settings["attempts_wall_time_s"] = [*settings.get("attempts_wall_time_s", []),
                                        round(wall_s, 3)]
    write_text(dump_yaml(settings), str(out / SWEEP_SETTINGS))
    return settings["attempts_wall_time_s"]


def _fit(tuner: Any, space: SearchSpace, out: Path, scheduler: str) -> SweepResult:
    """Run the sweep's trials and write its tables; raise SweepInterrupted if Ctrl-C or SIGTERM
    stopped it. Both stop it at once (Tune's own Ctrl-C handler would save and return as if the
    sweep had finished, and cannot save once `timeout` has stopped the Ray processes too): Tune's
    state of a moment ago and the trials' checkpoints are what `--resume` continues from."""
    sigterm: list[int] = []

    def stop_now(signum: int, frame: Any) -> None:
        sigterm.append(signum)
        raise KeyboardInterrupt  # the one exception Ray's blocking calls pass on

    on_main_thread = threading.current_thread() is threading.main_thread()  # signals go there
    previous = signal.signal(signal.SIGTERM, stop_now) if on_main_thread else None
    tune_sigint = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    t0 = time.perf_counter()
    try:
        results = tuner.fit()
    except KeyboardInterrupt as e:
        _record_attempt(out, time.perf_counter() - t0)
        raise SweepInterrupted(out, 128 + (sigterm[0] if sigterm else signal.SIGINT)) from e
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)
        if tune_sigint is None:
            del os.environ["TUNE_DISABLE_SIGINT_HANDLER"]
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = tune_sigint
    attempts_s = _record_attempt(out, time.perf_counter() - t0)
    return _finish_sweep(results, space, out, scheduler, attempts_s)


def _trainable(space: SearchSpace, out: Path, has_gpu: bool) -> Any:
    import ray
    from ray import tune

    return tune.with_resources(
        tune.with_parameters(run_trial, base=space.base, trials_dir=str(out / "trials"),
                             metric=space.metric, cwd=os.getcwd()),
        functools.partial(trial_resources, space.base, has_gpu,
                          cluster_cpus=ray.cluster_resources().get("CPU", 0.0)))


def _finish_sweep(results: Any, space: SearchSpace, out: Path, scheduler: str,
                  attempts_s: list[float]) -> SweepResult:
    """Record each trial's outcome, combine the trials' tables and write sweep.json
    (`attempts_s`: the wall seconds of the first run and of each resume)."""
    trials = _records(results, space, out / "trials")
    keys = list(space.params)
    evals, steps = combine_trials(out, trials, keys)
    best = _best(trials, space.mode)
    sweep = {
        "space": space.path, "metric": space.metric, "mode": space.mode, "scheduler": scheduler,
        "params": keys, "best_trial_id": best, "wall_time_s": sum(attempts_s),
        "attempts_wall_time_s": attempts_s,
        "trials": [{"trial_id": t.trial_id, "status": t.status, "error": t.error,
                    "params": t.params, "epochs": t.epochs, "final_metric": t.final_metric}
                   for t in trials],
    }
    write_text(json.dumps(sweep, indent=2) + "\n", str(out / SWEEP_FILE))
    return SweepResult(str(out), trials, evals, steps, space.metric, space.mode, best,
                       sum(attempts_s))


def format_summary(result: SweepResult) -> str:
    """A few lines for the terminal: trials with status and final metric, the best, the failures."""
    counts = {s: sum(t.status == s for t in result.trials)
              for s in ("finished", "stopped", "diverged", "failed")}
    lines = [f"sweep: {len(result.trials)} trials ({counts['finished']} finished, "
             f"{counts['stopped']} stopped early, {counts['diverged']} diverged, "
             f"{counts['failed']} failed) in {result.wall_time_s:.1f} s"]
    if result.trials:
        table = pd.DataFrame([{"trial_id": t.trial_id, "status": t.status, "epochs": t.epochs,
                               f"final {result.metric}": t.final_metric,
                               **{k: param_cell(v) for k, v in t.params.items()}}
                              for t in result.trials])
        lines.append(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    if result.best_trial_id is not None:
        best = next(t for t in result.trials if t.trial_id == result.best_trial_id)
        lines.append(f"best ({result.mode} final {result.metric}): {best.trial_id} "
                     f"{result.metric}={best.final_metric:.4g}")
    for t in result.trials:
        if t.status == "failed":
            lines.append(f"failed {t.trial_id}: {t.error}")
    out = result.out_dir
    lines.append(f"results: {out}/evals.parquet, {out}/steps.parquet, "
                 f"{out}/client_evals.parquet, {out}/sweep.json; "
                 f"trial runs in {out}/trials; next: splitray analyze {out}")
    return "\n".join(lines)
