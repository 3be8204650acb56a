"""Run reports without a plotting library: SVG charts that are valid XML, draw the numbers they are given, and
inline into one self-contained report.html."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from dlforge.core.errors import DlforgeError
from dlforge.report import plot_confusion, plot_curves, plot_range_test, write_report
from dlforge.report.svg import heatmap, line_chart, scatter_chart
from dlforge.training.lr_find import LRFindResult

SVG = "{http://www.w3.org/2000/svg}"


def polyline_points(svg: str) -> list[list[tuple[float, float]]]:
    root = ET.fromstring(svg)
    return [[tuple(map(float, p.split(","))) for p in line.get("points").split()]
            for line in root.iter(f"{SVG}polyline")]


def test_line_chart_draws_each_series_in_order_with_higher_values_higher():
    svg = line_chart({"a": ([1, 2, 3], [0.1, 0.5, 0.9]), "b": ([1, 2, 3], [0.9, 0.5, 0.1])}, title="t", xlabel="epoch")
    a, b = polyline_points(svg)
    assert [x for x, _ in a] == sorted(x for x, _ in a)  # x grows left to right
    assert a[0][1] > a[1][1] > a[2][1]  # SVG y points down: a larger value sits higher (smaller y)
    assert a[0][1] == pytest.approx(b[2][1]) and a[2][1] == pytest.approx(b[0][1])
    assert "epoch" in svg and ">a<" in svg and ">b<" in svg  # axis label and legend


def test_non_finite_and_missing_values_leave_gaps_not_garbage():
    svg = line_chart({"loss": ([1, 2, 3, 4], [1.0, float("nan"), None, float("inf")])}, title="t")
    (points,) = polyline_points(svg)
    assert len(points) == 1 and all(math.isfinite(v) for v in points[0])
    assert "no finite values" in line_chart({"x": ([1], [float("nan")])}, title="t")


def test_log_axis_places_decades_evenly():
    svg = line_chart({"l": ([1e-4, 1e-3, 1e-2], [3.0, 2.0, 1.0])}, title="t", log_x=True)
    (points,) = polyline_points(svg)
    assert points[1][0] - points[0][0] == pytest.approx(points[2][0] - points[1][0])


def test_scatter_draws_a_dot_per_finite_pair_and_its_reference_line():
    svg = scatter_chart([1.0, 2.0, 3.0, float("nan")], [1.1, 1.9, 3.2, 5.0], title="pva", reference="diagonal")
    root = ET.fromstring(svg)
    dots = [(float(c.get("cx")), float(c.get("cy"))) for c in root.iter(f"{SVG}circle")]
    assert len(dots) == 3 and dots[0][0] < dots[1][0] < dots[2][0] and dots[0][1] > dots[2][1]
    diagonal = next(line for line in root.iter(f"{SVG}line") if line.get("stroke-dasharray"))
    slope = (float(diagonal.get("y2")) - float(diagonal.get("y1"))) / (float(diagonal.get("x2")) - float(diagonal.get("x1")))
    assert slope < 0  # y = x rises on screen (SVG y points down)


def test_heatmap_has_a_cell_and_a_count_per_entry():
    svg = heatmap([[5, 1], [0, 7]], ["cat", "dog"], title="cm")
    root = ET.fromstring(svg)
    cells = [r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None]
    assert len(cells) == 4
    assert "true dog, predicted dog: 7" in svg
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert {"5", "1", "0", "7", "cat", "dog"} <= set(texts)


def test_curves_keep_unit_metrics_off_the_unit_free_axis(tmp_path):
    history = [{"epoch": e, "train.loss": 1 / e, "val.loss": 1.2 / e, "val.r2": 0.1 * e, "val.rmse": 5000.0 / e}
               for e in range(1, 4)]
    history = [{**row, "val.accuracy": 0.5} for row in history]
    written = plot_curves(history, tmp_path)
    assert [p.name for p in written] == ["loss.svg", "metrics.svg", "errors.svg", "val.r2.svg"]
    metrics, errors = (tmp_path / "metrics.svg").read_text(), (tmp_path / "errors.svg").read_text()
    assert "val.accuracy" in metrics and "val.rmse" not in metrics and "val.r2" not in metrics
    assert "val.rmse" in errors and "val.r2" not in errors
    assert "val.r2" in (tmp_path / "val.r2.svg").read_text()  # unbounded below: an axis of its own


def test_plots_must_be_svg_files(tmp_path):
    with pytest.raises(DlforgeError, match="SVG") as err:
        plot_confusion([[1]], ["a"], tmp_path / "cm.png")
    assert "cm.svg" in err.value.hint
    result = LRFindResult([1e-5, 1e-4, 1e-3], [2.0, 1.0, 3.0], 1e-4, 1e-4, False)
    assert plot_range_test(result, tmp_path / "lr.svg") == tmp_path / "lr.svg" == result.plot
    ET.fromstring((tmp_path / "lr.svg").read_text())


def test_report_inlines_its_charts(tmp_path):
    plots = plot_curves([{"epoch": 1, "train.loss": 0.5, "val.accuracy": 0.9}], tmp_path / "plots")
    plots.append(plot_confusion([[3, 1], [0, 4]], ["no", "yes"], tmp_path / "plots" / "confusion.svg"))
    page = write_report(tmp_path, name="r<1>", metrics={"test": {"accuracy": 0.875}}, recipe_yaml="name: r",
                        plots=plots).read_text()
    assert "<img" not in page and page.count("<svg") == 3  # self-contained: no files to carry beside it
    assert "r&lt;1&gt;" in page and "0.8750" in page
    assert re.search(r"<figcaption>plots/confusion\.svg</figcaption>", page)


def test_report_needs_no_matplotlib(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # importing it now raises ImportError
    assert plot_curves([{"epoch": 1, "train.loss": 0.5}], Path(tmp_path))
