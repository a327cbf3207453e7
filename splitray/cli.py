"""The `splitray` command: run, tune, analyze, split-points."""

from __future__ import annotations

import argparse
import json
import math
import os
import select
import sys

from splitray.config import ConfigError, dump_yaml

EXIT_CONFIG_ERROR = 2  # bad input: nothing ran, nothing was written
EXIT_FAILED = 1        # the run failed (e.g. more actor deaths than faults.max_failures)
EXIT_DIVERGED = 3      # the loss became NaN or infinite; the rows up to it are kept
EXIT_INTERRUPTED = 130  # Ctrl-C (the shell's code for SIGINT); the run stays resumable
EXIT_TERMINATED = 143  # SIGTERM (`timeout`, `ray job stop`): as Ctrl-C
EXIT_BROKEN_PIPE = 141  # stdout closed by its reader (`| head`): the shell's code for SIGPIPE


def _cmd_run(args: argparse.Namespace) -> int:
    from splitray.config import load_config
    from splitray.runtime import (
        RunDiverged,
        RunFailed,
        RunInterrupted,
        resume_experiment,
        run_experiment,
    )

    if (args.config is None) == (args.resume is None):
        raise ConfigError("run: give a config file or --resume RUN_DIR, not both or neither")
    if args.resume is not None and args.set:
        raise ConfigError("--set is not allowed with --resume; a run continues with its config")
    if args.resume is not None and args.out is not None:
        raise ConfigError("--out is not allowed with --resume; a run continues in its own "
                          "directory")
    try:
        if args.resume is not None:
            result = resume_experiment(args.resume, engine=args.engine, progress=not args.quiet,
                                       finished_ok=False)
        else:
            cfg = load_config(args.config, args.set)
            result = run_experiment(cfg, out_dir=args.out or "runs", engine=args.engine,
                                    progress=not args.quiet)
    except RunDiverged as e:
        print(f"splitray: run diverged: {e}; status 'diverged', the rows up to it are in "
              f"{e.run_dir}", file=sys.stderr)
        return EXIT_DIVERGED
    except RunFailed as e:
        print(f"splitray: run failed: {e}; status 'failed', the rows up to the last checkpoint "
              f"are in {e.run_dir}", file=sys.stderr)
        return EXIT_FAILED
    except RunInterrupted as e:
        line = "splitray: run interrupted"
        if e.resumable:
            line += (f"; status 'interrupted' in {e.run_dir}; `splitray run --resume "
                     f"{e.run_dir}` continues it from its last checkpoint")
        elif e.run_dir:
            line += (f"; status 'interrupted' in {e.run_dir}; it wrote no checkpoint to continue "
                     "from (checkpoint.every_epochs)")
        print(line, file=sys.stderr)
        return e.exit_code
    last = result.evals.iloc[-1] if len(result.evals) else None
    if last is not None:
        print(f"done: accuracy {last['test_accuracy']:.4f}, "
              f"{(last['cum_bytes_up'] + last['cum_bytes_down']) / 1e6:.2f} MB, "
              f"simulated {last['sim_time_s']:.1f} s; results in {result.run_dir}")
    for key, value in result.summary.items():
        if isinstance(value, list):  # e.g. prune's model set: one line each
            print(f"  {key}:")
            for item in value:
                print("    " + ("  ".join(f"{k} {_number(v)}" for k, v in item.items())
                                if isinstance(item, dict) else _number(item)))
        else:
            print(f"  {key}: {_number(value)}")
    return 0


def _number(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _cmd_split_points(args: argparse.Namespace) -> int:
    from splitray.models import (
        MODEL_NAMES,
        build_model,
        format_split_points_table,
        min_input_px,
        split_points,
    )

    if args.model not in MODEL_NAMES:
        raise ConfigError(f"MODEL: {args.model!r} is not allowed; choose one of "
                          f"{', '.join(MODEL_NAMES)}")
    if args.num_classes < 1:
        raise ConfigError(f"--num-classes: {args.num_classes} is not allowed; must be >= 1")
    try:
        shape = tuple(int(v) for v in args.input_shape.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ConfigError(f"--input-shape: {args.input_shape!r} is not allowed; expected C,H,W "
                          "such as 3,32,32")
    if min(shape[1:]) < min_input_px(args.model):
        raise ConfigError(f"--input-shape: {args.input_shape!r} is not allowed; {args.model} "
                          f"needs height and width >= {min_input_px(args.model)}")
    model = build_model(args.model, num_classes=args.num_classes, input_shape=shape)
    points = split_points(model, shape)
    if args.format == "json":
        print(json.dumps([p.to_dict() for p in points], indent=2))
    else:
        print(f"{args.model} on {'x'.join(map(str, shape))}, {args.num_classes} classes "
              "(FLOPs per sample; conv and matmul only)")
        print(format_split_points_table(points))
    return 0


def _cmd_tune(args: argparse.Namespace) -> int:
    from datetime import datetime
    from pathlib import Path

    from splitray.tune import (
        SWEEP_SETTINGS,
        SweepInterrupted,
        format_summary,
        load_space,
        resumable,
        resume_sweep,
        run_sweep,
    )

    if (args.space is None) == (args.resume is None):
        raise ConfigError("tune: give a space file or --resume SWEEP_DIR, not both or neither")
    if args.resume is not None:
        # Each flag's default is None, so that one given is told from one left out.
        options = {"--quiet": args.quiet or None, "--num-samples": args.num_samples,
                   "--scheduler": args.scheduler, "--max-concurrent": args.max_concurrent,
                   "--max-failures": args.max_failures, "--out": args.out}
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise ConfigError(f"{given[0]} is not allowed with --resume; a sweep goes on in its own "
                              "directory with the options it started with (Tune keeps them)")
    if args.resume is None:
        space = load_space(args.space)
    out = args.resume or args.out or str(
        Path("runs") / "sweeps" / f"{Path(args.space).stem}-{datetime.now():%Y%m%d-%H%M%S}")
    try:
        if args.resume is not None:
            result = resume_sweep(args.resume)
        else:
            given = {"scheduler": args.scheduler, "max_failures": args.max_failures}
            result = run_sweep(space, out, num_samples=args.num_samples,
                               max_concurrent=args.max_concurrent, verbose=0 if args.quiet else 1,
                               **{k: v for k, v in given.items() if v is not None})
    except (KeyboardInterrupt, SweepInterrupted) as e:
        if resumable(Path(out)):
            print(f"splitray: sweep interrupted; `splitray tune --resume {out}` continues it",
                  file=sys.stderr)
        elif (Path(out) / SWEEP_SETTINGS).is_file():  # written just before Tune begins
            print(f"splitray: sweep interrupted before Tune saved its first state; remove {out} "
                  "and run the sweep again", file=sys.stderr)
        else:
            print("splitray: sweep interrupted before it began", file=sys.stderr)
        code = e.exit_code if isinstance(e, SweepInterrupted) else EXIT_INTERRUPTED
        if code == EXIT_TERMINATED:
            # `timeout` signals the whole process group, so the Ray processes this driver
            # started are gone too, and Ray's exit would wait a minute for them. Tune's state
            # and the trials' checkpoints are on disk; the Ray processes share this one's fate.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        return code
    print(format_summary(result))
    # As a run that fails: a script or `ray job submit` sees that a trial needs looking at.
    return EXIT_FAILED if any(t.status == "failed" for t in result.trials) else 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from pathlib import Path

    from splitray.analysis import analyze

    if args.timeline:
        return _timeline(args)
    if args.round is not None or args.window is not None:
        raise ConfigError("--round and --window are not allowed without --timeline")
    if args.target_accuracy is not None and not 0.0 <= args.target_accuracy <= 1.0:
        raise ConfigError(f"--target-accuracy: {args.target_accuracy!r} is not allowed; "
                          "give a fraction in [0, 1]")
    try:
        written = analyze(args.path, out_dir=args.out, target_accuracy=args.target_accuracy)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    print(Path(written["summary_md"]).read_text())  # the title and the summary's Markdown table
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


def _parse_pair(flag: str, text: str | None, kind: type, sep: str) -> tuple | None:
    if text is None:
        return None
    try:
        parts = [kind(p) for p in text.split(sep)] if sep in text else [kind(text)] * 2
    except ValueError:
        parts = []
    if (len(parts) != 2 or not all(math.isfinite(p) for p in parts) or parts[0] > parts[1]
            or parts[0] < 0):
        example = "3 or 3-5" if kind is int else "0.5,2.0"
        raise ConfigError(f"{flag}: {text!r} is not allowed; give e.g. {example} (finite, "
                          "0 <= low <= high)")
    return tuple(parts)


def _timeline(args: argparse.Namespace) -> int:
    import pandas as pd

    from splitray.analysis.report import markdown_table, output_dir
    from splitray.analysis.results import load_steps
    from splitray.analysis.timeline import lane_summary, plot_timeline
    from splitray.metrics import check_output_dir, join_path

    if args.target_accuracy is not None:
        raise ConfigError("--target-accuracy is not allowed with --timeline")
    rounds = _parse_pair("--round", args.round, int, "-")
    if args.window is not None and "," not in args.window:
        raise ConfigError(f"--window: {args.window!r} is not allowed; give two times, e.g. 0.5,2.0")
    window = _parse_pair("--window", args.window, float, ",")
    if window and window[0] == window[1]:
        raise ConfigError(f"--window: {args.window!r} is not allowed; the window must have a "
                          "width (low < high)")
    if rounds and window:
        raise ConfigError("--round and --window are not allowed together; choose one")
    try:
        out = output_dir(args.path, args.out)
        steps, key = load_steps(args.path)  # evals not needed: a run may have stopped before
        runs = pd.unique(steps[key])
        if len(runs) != 1:
            raise ValueError(f"{args.path} holds {len(runs)} runs; --timeline draws one run "
                             "directory")
        lanes, label = lane_summary(steps, rounds, window)  # a round not run fails here
        check_output_dir(out, "--out")
        written = plot_timeline(steps, join_path(out, "timeline.png"), rounds, window)
        print(f"simulated seconds of each lane, {label}:")
        print(markdown_table(lanes.round(4)))
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    print(f"timeline: {written}")
    return 0


def _cmd_profiles(args: argparse.Namespace) -> int:
    from splitray.network import DEVICE_PROFILES, LINK_PROFILES

    print("device profiles (clients.devices, server.device):")
    for p in DEVICE_PROFILES.values():
        print(f"  {p.name:18s} {p.flops_per_s / 1e9:9.1f} GFLOP/s  {p.description}")
    print("\nlink profiles (network.links, network.shared):")
    for name, spec in LINK_PROFILES.items():
        if spec["kind"] == "trace":
            rates = f"trace {spec['up']} / {spec['down']}"
        else:
            rates = f"{spec['up_bps'] / 1e6:g}/{spec['down_bps'] / 1e6:g} Mbit/s up/down"
        print(f"  {name:22s} {spec['kind']:8s} {rates}, {spec.get('latency_s', 0) * 1e3:g} ms")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from splitray.config import load_config
    from splitray.metrics import check_output_file, write_text
    from splitray.planning import format_plan, plan_and_baseline, resolved_config

    if args.grid and args.write:
        raise ConfigError("--write is not allowed with --grid; plan one point (--set) to write it")
    if not args.grid and (args.csv or args.plot):
        raise ConfigError("--csv and --plot are only allowed with --grid")
    for flag, path in (("--write", args.write), ("--csv", args.csv), ("--plot", args.plot)):
        if path:
            check_output_file(path, flag)
    if args.plot and not args.plot.lower().endswith(".png"):
        raise ConfigError(f"--plot: {args.plot!r} is not allowed; the figure is a PNG: name it "
                          "*.png")
    if args.grid:
        return _plan_grid(args)
    cfg = load_config(args.config, args.set)
    best, baseline = plan_and_baseline(cfg, args.objective)
    print(format_plan(best))
    print(f"parallel SL with the best single split point ({baseline.clients[0].split_layer}) and "
          f"equal shares: {baseline.round_s:.4f} s per round "
          f"({baseline.round_s / best.round_s:.2f}x the plan's)")
    if args.write:
        write_text(dump_yaml(resolved_config(cfg, best)), args.write)
        print(f"resolved config: {args.write} (splitray run {args.write})")
    return 0


def _plan_grid(args: argparse.Namespace) -> int:
    import csv
    import io
    import math

    from splitray.config import load_config
    from splitray.metrics import write_text
    from splitray.planning import format_grid, grid_values, plan_grid

    axes = [grid_values(text) for text in args.grid]
    data = load_config(args.config, args.set).to_dict()
    total = math.prod(len(values) for _, values in axes)
    points = []
    for k, point in enumerate(plan_grid(data, axes, args.objective), 1):
        points.append(point)
        print(f"\rplanned {k}/{total} grid points", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    keys = [key for key, _ in axes]
    print(format_grid(keys, points))
    if args.csv:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([*keys, "round_s", "baseline_round_s", "speedup", "baseline_split",
                         "split_layers", "shares"])
        for p in points:
            writer.writerow([*p.values, p.plan.round_s, p.baseline.round_s, p.speedup,
                             p.baseline.clients[0].split_layer,
                             " ".join(str(c.split_layer) for c in p.plan.clients),
                             " ".join(f"{c.share:.6g}" for c in p.plan.clients)])
        write_text(out.getvalue(), args.csv)
        print(f"rows: {args.csv}")
    if args.plot:
        from splitray.analysis.plots import plot_plan_grid

        print(f"figure: {plot_plan_grid(keys, points, args.plot)}")
    return 0


def _cmd_infer(args: argparse.Namespace) -> int:
    from splitray.inference import format_inference, infer

    table = infer(args.run_dir, deadline_ms=args.deadline_ms, overrides=args.set,
                  engine=args.engine)
    print(format_inference(table, args.deadline_ms))
    print(f"table: {args.run_dir.rstrip('/')}/inference.parquet")
    return 0


def _cmd_schema(args: argparse.Namespace) -> int:
    from splitray.metrics import schema_markdown

    print(schema_markdown())
    return 0


def _set_option(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a config value, {example} (repeatable)")


def _engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("ray", "local"), default="ray",
                        help="ray: client and server actors exchanging ObjectRefs; local: the "
                             "fused single-process reference [ray]")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="splitray", description="Simulate split learning with heterogeneous clients on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one experiment from a YAML config",
                         description="Run one experiment and write its run directory "
                                     "(config.yaml, manifest.json, steps.parquet, evals.parquet, "
                                     "client_evals.parquet).")
    run.add_argument("config", nargs="?",
                     help="experiment YAML file, e.g. experiments/quickstart.yaml")
    run.add_argument("--resume", default=None, metavar="RUN_DIR",
                     help="continue a killed run from its last checkpoint (instead of a config; "
                          "the run's own config.yaml is used)")
    _set_option(run, "e.g. --set train.lr=0.05")
    run.add_argument("--out", default=None,
                     help="parent directory (local path or URI) of the run directory [runs]")
    _engine_option(run)
    run.add_argument("--quiet", action="store_true",
                     help="only the final summary: no progress display, no Ray info or warning "
                          "lines")
    run.set_defaults(func=_cmd_run)

    tn = sub.add_parser("tune", help="sweep config values with Ray Tune",
                        description="Run a search space (tune_spaces/*.yaml) with Ray Tune: one "
                                    "full simulation per trial, its actors in the trial's "
                                    "placement group; writes DIR/evals.parquet, DIR/steps.parquet, "
                                    "DIR/client_evals.parquet (all trials, with trial_id and "
                                    "param.* columns), "
                                    "DIR/sweep.json, DIR/trials/<trial_id>/ and DIR/tune/.")
    tn.add_argument("space", nargs="?", default=None,
                    help="search-space YAML, e.g. tune_spaces/deprune_small.yaml")
    tn.add_argument("--resume", default=None, metavar="SWEEP_DIR",
                    help="continue an interrupted sweep: finished trials stay, running ones go "
                         "on from their last checkpoint (checkpoint.every_epochs), the rest start")
    tn.add_argument("--out", default=None, metavar="DIR",
                    help="sweep directory, a new or empty local path [runs/sweeps/<space>-<time>]")
    tn.add_argument("--num-samples", type=int, default=None, metavar="N",
                    help="samples drawn from the space, each grid point repeated this often "
                         "[the file's num_samples, else 1]")
    tn.add_argument("--scheduler", choices=("fifo", "asha"), default=None,
                    help="fifo: run every trial to the end; asha: stop weak trials early "
                         "(grace period 1 epoch, on the file's metric) [fifo]")
    tn.add_argument("--max-concurrent", type=int, default=None, metavar="K",
                    help="at most K trials at once [as many as the cluster fits]")
    tn.add_argument("--max-failures", type=int, default=None, metavar="N",
                    help="retry a failed trial up to N times, from its last checkpoint [0]")
    tn.add_argument("--quiet", action="store_true",
                    help="only the final summary: no Tune status tables, no Ray info or warning "
                         "lines")
    tn.set_defaults(func=_cmd_tune)

    pl = sub.add_parser("plan", help="choose split points and bandwidth shares",
                        description="Plan each client's split point and share of the shared "
                                    "access point (EdgeSplit: a split point per client; EPSL: "
                                    "one cut layer for all) from the config's model, devices and "
                                    "network; prints the plan and its predicted round time.")
    pl.add_argument("config", help="experiment YAML with network.shared")
    _set_option(pl, "e.g. --set clients.count=16")
    pl.add_argument("--objective", choices=("edgesplit", "epsl"), default=None,
                    help="edgesplit: a split point per client; epsl: one cut layer for all "
                         "[epsl for train.algorithm epsl, else edgesplit]")
    pl.add_argument("--write", default=None, metavar="FILE",
                    help="also write the config with the plan applied (clients.split_layers, "
                         "network.shared shares), for splitray run")
    pl.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                    help="instead plan at every combination of these values (repeatable), one "
                         "row each: the plan's and the baseline's predicted round and the "
                         "speed-up, e.g. --grid network.shared.up_bps=5e6,2e7,1e8")
    pl.add_argument("--csv", default=None, metavar="FILE",
                    help="with --grid: also write the rows (with every client's split point "
                         "and share) as CSV")
    pl.add_argument("--plot", default=None, metavar="FILE",
                    help="with --grid: also draw the speed-up against the first --grid's values, "
                         "a line per combination of the others (PNG)")
    pl.set_defaults(func=_cmd_plan)

    inf = sub.add_parser("infer", help="split inference with a prune run's model set",
                         description="Serve a prune run's model set (RUN_DIR/models/): for every "
                                     "client and budget B, accuracy on its test slice, bytes and "
                                     "latency per request; with --deadline-ms each client gets "
                                     "the largest B whose predicted latency fits. Writes "
                                     "RUN_DIR/inference.parquet.")
    inf.add_argument("run_dir", help="run directory of a train.algorithm: prune run")
    inf.add_argument("--deadline-ms", type=float, default=None, metavar="D",
                     help="per-request latency deadline; without it every budget is reported")
    _set_option(inf, "of the run's, e.g. --set network.links=[lte]")
    _engine_option(inf)
    inf.set_defaults(func=_cmd_infer)

    an = sub.add_parser("analyze", help="summarise and plot results",
                        description="Summarise a run directory, a directory of runs or a sweep "
                                    "directory: writes summary.csv, summary.md, the figures "
                                    "and, for runs with client_evals.parquet, by_device.csv "
                                    "(each device's and split point's accuracy) and "
                                    "client_accuracy_vs_epoch.png.")
    an.add_argument("path", help="results directory (local path or URI)")
    an.add_argument("--target-accuracy", type=float, default=None, metavar="X",
                    help="also report bytes and simulated time to reach test accuracy X (0..1)")
    an.add_argument("--out", default=None, help="output directory [<path>/analysis]")
    an.add_argument("--timeline", action="store_true",
                    help="instead, draw one run's timeline as a Gantt chart (timeline.png): one "
                         "lane per client plus the server")
    an.add_argument("--round", default=None, metavar="R[-S]",
                    help="with --timeline: the round (or rounds R to S) to draw [first three]")
    an.add_argument("--window", default=None, metavar="T0,T1",
                    help="with --timeline: draw simulated seconds T0 to T1 instead of rounds")
    an.set_defaults(func=_cmd_analyze)

    sp = sub.add_parser("split-points", help="list a model's split points",
                        description="List a model's split points with the activation shape, bytes "
                                    "per sample and client/server FLOPs.")
    sp.add_argument("model", help="model name, e.g. vgg11")
    sp.add_argument("--input-shape", default="3,32,32", help="C,H,W [3,32,32]")
    sp.add_argument("--num-classes", type=int, default=10, help="classes [10]")
    sp.add_argument("--format", choices=("table", "json"), default="table")
    sp.set_defaults(func=_cmd_split_points)

    pr = sub.add_parser("profiles", help="list the named device and link profiles",
                        description="List the device profiles (compute speed and its source) and "
                                    "the link profiles (rates, traces, latency) configs can name.")
    pr.set_defaults(func=_cmd_profiles)

    sc = sub.add_parser("schema", help="print the Parquet schema of run directories",
                        description="Print every column of steps.parquet, evals.parquet, "
                                    "client_evals.parquet and (after splitray infer) "
                                    "inference.parquet with its type and unit, as Markdown.")
    sc.set_defaults(func=_cmd_schema)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"splitray: error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    except KeyboardInterrupt:
        print("splitray: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if not _reader_left():
            raise  # another pipe (a socket, a subprocess): not the reader's doing
        # The reader left (`splitray split-points ... | head`): stop quietly, and keep Python
        # from failing again as it flushes stdout on the way out.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _reader_left() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll here, or no real stdout
        return False


if __name__ == "__main__":
    sys.exit(main())
