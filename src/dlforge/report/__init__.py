"""Run reports: SVG charts and one self-contained HTML page."""

from dlforge.report.html import write_report
from dlforge.report.plots import plot_confusion, plot_curves, plot_range_test

__all__ = ["plot_confusion", "plot_curves", "plot_range_test", "write_report"]
