"""One call that loads results and writes the summary tables and the figures."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from splitray.analysis.plots import (
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_epoch,
    plot_bytes_vs_sim_time,
    plot_client_accuracy_vs_epoch,
    plot_samples_vs_sim_time,
)
from splitray.analysis.results import load
from splitray.analysis.summary import accuracy_by_device, summary_table
from splitray.metrics import check_output_dir, join_path

PLOTS = {
    "accuracy_vs_bytes": plot_accuracy_vs_bytes,
    "bytes_vs_sim_time": plot_bytes_vs_sim_time,
    "samples_vs_sim_time": plot_samples_vs_sim_time,
    "accuracy_vs_epoch": plot_accuracy_vs_epoch,
}


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return ""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else f"{value:.6g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(df: pd.DataFrame) -> str:
    """A DataFrame as a GitHub Markdown table, columns padded to line up in a terminal; whole
    numbers in full, others to 6 significant digits, missing values empty."""
    rows = [[_cell(c) for c in df.columns], *([_cell(v) for v in row]
                                              for row in df.itertuples(index=False))]
    widths = [max(len(r[j]) for r in rows) for j in range(len(rows[0]))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in rows[1:])])


def output_dir(path: str, out_dir: str | None) -> str:
    """The local directory an analysis of `path` writes into: `out_dir`, else `<path>/analysis`;
    ValueError where that is a URI."""
    if out_dir is None:
        if "://" in path:
            raise ValueError(f"results at {path!r} are not local; pass a local out_dir (--out)")
        return join_path(path, "analysis")
    if "://" in str(out_dir):
        raise ValueError(f"out_dir={out_dir!r} must be a local directory")
    return str(out_dir)


def analyze(path: str, out_dir: str | None = None,
            target_accuracy: float | None = None) -> dict[str, str]:
    """Load results at `path`, write summary.csv, summary.md and the figures; when the runs
    have per-client rows, also the clients' accuracy by device and split point (in summary.md
    and by_device.csv) and each client's accuracy curve; return {name: path}.

    Outputs go to `out_dir` (default `<path>/analysis`), which must be a local directory.
    """
    path = str(path)
    out_dir = output_dir(path, out_dir)
    results = load(path)
    summary = summary_table(results, target_accuracy)
    check_output_dir(out_dir, "--out")  # after loading: a missing `path` gets no analysis/ in it
    out = Path(out_dir)
    written = {"summary_csv": str(out / "summary.csv"), "summary_md": str(out / "summary.md")}
    summary.to_csv(written["summary_csv"], index=False)
    title = f"# splitray results: {path}\n\n"
    if target_accuracy is not None:
        title += f"Target test accuracy: {target_accuracy:g}.\n\n"
    if results.left_out:
        title += (f"Left out, each a sweep or a folder of runs to analyze on its own: "
                  f"{', '.join(results.left_out)}.\n\n")
    text = title + markdown_table(summary) + "\n"
    by_device = accuracy_by_device(results.client_evals, results.key, results.params)
    (out / "by_device.csv").unlink(missing_ok=True)  # an earlier analysis's, into the same out
    if not by_device.empty:
        written["by_device_csv"] = str(out / "by_device.csv")
        by_device.to_csv(written["by_device_csv"], index=False)
        text += ("\n## Test accuracy by device and split point, last evaluation\n\n"
                 "Each client is tested on its own slice of the test set with its own model (its "
                 "client part and the server part that serves it).\n\n"
                 + markdown_table(by_device) + "\n")
    Path(written["summary_md"]).write_text(text)
    for name, plot in PLOTS.items():
        written[name] = plot(results, str(out / f"{name}.png"))
    client_plot = out / "client_accuracy_vs_epoch.png"
    client_plot.unlink(missing_ok=True)
    if not results.client_evals.empty:
        written["client_accuracy_vs_epoch"] = plot_client_accuracy_vs_epoch(results,
                                                                            str(client_plot))
    return written
