"""Analysis of splitray results: load runs and sweeps, summarise them, plot the paper's figures."""

from splitray.analysis.plots import (
    plot_accuracy_vs_bytes,
    plot_accuracy_vs_epoch,
    plot_bytes_vs_sim_time,
    plot_client_accuracy_vs_epoch,
    plot_samples_vs_sim_time,
)
from splitray.analysis.report import analyze, markdown_table
from splitray.analysis.results import Results, load
from splitray.analysis.summary import (
    accuracy_by_device,
    bytes_to_target,
    pareto_frontier,
    summary_table,
)

__all__ = [
    "Results",
    "accuracy_by_device",
    "analyze",
    "bytes_to_target",
    "load",
    "markdown_table",
    "pareto_frontier",
    "plot_accuracy_vs_bytes",
    "plot_accuracy_vs_epoch",
    "plot_bytes_vs_sim_time",
    "plot_client_accuracy_vs_epoch",
    "plot_samples_vs_sim_time",
    "summary_table",
]
