"""Which runs buy the most accuracy for the fewest bytes on the network?

Usage: python analysis/network_vs_accuracy.py RESULTS_DIR [--target 0.8] [--plot out.png]

RESULTS_DIR is a run directory, a directory of runs or a sweep directory. Prints every run's
traffic and accuracy, cheapest first, then the runs on the bytes/accuracy Pareto frontier.
"""

from __future__ import annotations

import argparse

import pandas as pd

from splitray.analysis import load, plot_accuracy_vs_bytes, summary_table

MB = 1e6


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="run dir, dir of runs, or sweep dir (local path or URI)")
    parser.add_argument("--target", type=float, default=None,
                        help="test accuracy (fraction) to report bytes-to-target for")
    parser.add_argument("--plot", default=None, help="write accuracy vs bytes to this PNG")
    args = parser.parse_args(argv)

    results = load(args.results)
    summary = summary_table(results, args.target).sort_values("bytes_total", kind="stable")
    cols = [results.key, *results.params, "algorithm", "best_accuracy", "final_accuracy"]
    table = summary[cols].assign(traffic_MB=summary["bytes_total"] / MB,
                                 sim_time_s=summary["sim_time_s"])
    if args.target is not None:
        table["MB_to_target"] = summary["bytes_to_target"] / MB
    table["on_frontier"] = summary["on_frontier"]
    with pd.option_context("display.width", 160, "display.max_columns", None):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    front = summary[summary["on_frontier"]]
    print(f"\n{len(front)} of {len(summary)} runs on the Pareto frontier "
          "(fewest bytes for their best accuracy):")
    for _, row in front.iterrows():
        print(f"  {row[results.key]}: {row['bytes_total'] / MB:.4g} MB, "
              f"best accuracy {row['best_accuracy']:.4f}")
    if args.plot:
        print(f"\nwrote {plot_accuracy_vs_bytes(results, args.plot)}")


if __name__ == "__main__":
    main()
