"""Run reports: PNG plots and one HTML page."""

from dlforge.report.html import write_report
from dlforge.report.plots import plot_confusion, plot_curves

__all__ = ["plot_confusion", "plot_curves", "write_report"]
