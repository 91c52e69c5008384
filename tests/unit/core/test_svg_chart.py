"""core.svg_chart: well-formed SVG, one element per point / bar, positions that follow the data,
nice ticks, escaped labels, and the degenerate inputs (no data, missing bars, flat series)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from core.svg_chart import BarSeries, Mark, Series, VLine, bar_chart, format_number, line_chart, nice_ticks

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)
    assert root.tag == f"{NS}svg"
    return root


def of_class(root: ET.Element, tag: str, cls: str) -> list[ET.Element]:
    return [e for e in root.iter(f"{NS}{tag}") if e.get("class") == cls]


def texts(root: ET.Element) -> list[str]:
    return [e.text or "" for e in root.iter(f"{NS}text")]


@pytest.mark.parametrize("lo,hi,expected", [
    (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (1.0, 3.0, [1.0, 1.5, 2.0, 2.5, 3.0]),
    (0.23, 0.81, [0.2, 0.4, 0.6, 0.8, 1.0]),
    (-0.3, 2.7, [-1.0, 0.0, 1.0, 2.0, 3.0]),
    (0.0, 900.0, [0.0, 200.0, 400.0, 600.0, 800.0, 1000.0]),
])
def test_nice_ticks_are_round_and_cover_the_range(lo, hi, expected):
    assert nice_ticks(lo, hi) == expected


def test_nice_ticks_of_a_single_value_and_a_bad_range():
    ticks = nice_ticks(5.0, 5.0)
    assert ticks[0] < 5.0 < ticks[-1]
    with pytest.raises(ValueError, match="non-finite"):
        nice_ticks(0.0, float("nan"))


def test_format_number():
    assert format_number(0.25, 0.05) == "0.25"
    assert format_number(3.0) == "3"
    assert format_number(12345.0) == "12.3k"
    assert format_number(2_500_000) == "2.5M"
    assert format_number(float("inf")) == "n/a"


def test_line_chart_draws_every_point_line_mark_and_legend():
    loss = Series("loss", [(1, 30.0), (2, 20.0), (3, 15.0), (4, 16.0)])
    other = Series("other <b>&", [(1, 10.0), (2, 25.0)], colour="#123456")
    single = Series("one", [(2.5, 20.0)])
    svg = line_chart([loss, other, single], title="t <x>", x_label="epoch", y_label="loss (nats)",
                     marks=[Mark(3, 15.0, "best")], vlines=[VLine(2, "target")], integer_x=True)
    root = parse(svg)  # escaping keeps "<b>&" from breaking the XML
    assert len(of_class(root, "circle", "point")) == 7
    assert len(of_class(root, "polyline", "series")) == 2  # one-point series has no line
    assert len(of_class(root, "circle", "mark")) == 1 and len(of_class(root, "line", "vline")) == 1
    assert len(of_class(root, "rect", "legend")) == 3
    labels = texts(root)
    assert "other <b>&" in labels and "t <x>" in labels and "best" in labels and "target" in labels
    assert root.find(f"{NS}title").text == "t <x>"
    # integer_x: only whole epochs are labelled on the x axis (y ticks here are 10, 15, ... 30).
    assert {"1", "2", "3", "4"} <= set(labels) and "1.5" not in labels and "2.5" not in labels
    # The polyline has one coordinate pair per point of its series.
    first = of_class(root, "polyline", "series")[0]
    assert len(first.get("points").split()) == 4


def test_line_chart_positions_follow_the_data():
    svg = line_chart([Series("s", [(0.0, 0.0), (0.5, 0.5), (1.0, 1.0)])], x_range=(0.0, 1.0),
                     y_range=(0.0, 1.0), width=400, height=300)
    pts = [(float(c.get("cx")), float(c.get("cy"))) for c in of_class(parse(svg), "circle", "point")]
    xs, ys = zip(*pts)
    assert xs[0] < xs[1] < xs[2] and ys[0] > ys[1] > ys[2]  # SVG y grows downwards
    assert xs[1] == pytest.approx((xs[0] + xs[2]) / 2, abs=0.11)
    assert ys[1] == pytest.approx((ys[0] + ys[2]) / 2, abs=0.11)


def test_log_axis_has_power_of_ten_ticks_and_clamps_nonpositive_values():
    svg = line_chart([Series("qps", [(0.9, 150.0), (0.95, 2_000.0), (1.0, 0.0)])], log_y=True)
    root = parse(svg)
    labels = texts(root)
    assert "100" in labels and "1000" in labels and "10k" in labels
    assert len(of_class(root, "circle", "point")) == 3


def test_line_chart_skips_non_finite_points_and_says_when_there_is_no_data():
    root = parse(line_chart([Series("s", [(1, float("nan")), (2, 1.0), (None, 2.0)])]))
    assert len(of_class(root, "circle", "point")) == 1
    root = parse(line_chart([Series("empty", [])], title="nothing"))
    assert not of_class(root, "circle", "point") and "no data" in texts(root)
    root = parse(line_chart([Series("flat", [(1, 0.5), (2, 0.5)])]))  # zero y range still draws
    assert len(of_class(root, "circle", "point")) == 2


def test_bar_chart_one_rect_per_value_heights_proportional_and_missing_as_na():
    svg = bar_chart(["recall@10", "recall@50", "ndcg@10"],
                    [BarSeries("model", [0.5, 1.0, 0.25]), BarSeries("popularity", [0.1, None, 0.0])],
                    title="metrics", y_label="score (fraction)", y_range=(0.0, 1.0))
    root = parse(svg)
    bars = of_class(root, "rect", "bar")
    assert len(bars) == 5  # six values, one missing
    heights = [float(b.get("height")) for b in bars]
    assert heights[0] == pytest.approx(heights[1] / 2, abs=0.1)  # 0.5 vs 1.0
    assert heights[2] == pytest.approx(heights[1] / 4, abs=0.1)  # 0.25 vs 1.0
    assert heights[4] == pytest.approx(0.0, abs=0.1)  # a zero is a bar of height 0, not n/a
    labels = texts(root)
    assert labels.count("n/a") == 1 and {"recall@10", "recall@50", "ndcg@10", "model", "popularity"} <= set(labels)
    assert [b.find(f"{NS}title").text for b in bars][:1] == ["model recall@10: 0.5"]


def test_bar_chart_rejects_mismatched_series():
    with pytest.raises(ValueError, match="2 values for 3 categories"):
        bar_chart(["a", "b", "c"], [BarSeries("s", [1.0, 2.0])])


def test_bar_chart_with_no_values_still_renders():
    root = parse(bar_chart(["head", "cold"], [BarSeries("model", [None, None])]))
    assert not of_class(root, "rect", "bar") and texts(root).count("n/a") == 2
