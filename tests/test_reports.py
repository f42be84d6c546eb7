"""`pipelines.reports`: the Jinja2 environment, the base page and the SVG chart macros (no services)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from pipelines.reports import Series, environment, render
from pipelines.reports.charts import nice_ticks, time_ticks


class _Svg(HTMLParser):
    """The elements of a rendered chart, by tag, with their attributes and the text inside <text>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.texts: list[str] = []
        self._in_text = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_text = tag == "text"

    def handle_endtag(self, tag: str) -> None:
        self._in_text = False

    def handle_data(self, data: str) -> None:
        if self._in_text:
            self.texts.append(data)

    def all(self, tag: str) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag]


def _chart(macro: str, *args: object, **kwargs: object) -> str:
    return str(getattr(environment().get_template("charts.html.j2").module, macro)(*args, **kwargs))


def test_line_chart_draws_one_polyline_per_series_and_escapes_the_legend() -> None:
    t0 = 1_709_510_400  # 2024-03-04 00:00 UTC
    series = [
        Series("events/s <target>", [(t0 + 10 * i, 1000.0 + i) for i in range(30)]),
        Series("p99 & p50 ms", [(t0 + 10 * i, 5.0 * i) for i in range(12)]),
        Series("lag", [(t0, 3.0)]),
    ]
    svg = _chart("line_chart", series, "throughput <live>", x_axis="time", x_label="time (UTC)")
    parsed = _Svg()
    parsed.feed(svg)
    polylines = parsed.all("polyline")
    assert [len(str(p["points"]).split()) for p in polylines] == [30, 12, 1]
    for p in polylines:
        for pair in str(p["points"]).split():
            x, y = map(float, pair.split(","))
            assert 64 <= x <= 800 and 0 <= y <= 300, pair
    assert len({p["stroke"] for p in polylines}) == 3
    # every text is escaped: the raw markup never reaches the page, the parsed text is the name
    assert "<target>" not in svg and "events/s &lt;target&gt;" in svg and "p99 &amp; p50 ms" in svg
    assert {"events/s <target>", "p99 & p50 ms", "lag", "throughput <live>"} <= set(parsed.texts)
    assert parsed.all("circle"), "a single-point series gets a marker"
    # time ticks are round UTC times inside the axis
    labels = [t for t in parsed.texts if re.fullmatch(r"\d\d:\d\d(:\d\d)?", t)]
    assert labels[0] == "00:00" and len(labels) >= 3
    assert parsed.all("svg")[0]["viewbox"] == "0 0 800 300"


def test_line_chart_legend_wraps_instead_of_running_off_the_canvas() -> None:
    series = [Series(f"a rather long series name number {i}", [(0.0, float(i)), (1.0, float(i))]) for i in range(6)]
    parsed = _Svg()
    parsed.feed(_chart("line_chart", series, "wide legend", width=600))
    legend_ys = {a["y1"] for a in parsed.all("line") if a.get("stroke-width") == "3"}
    assert len(legend_ys) > 1
    assert all(float(str(a["x2"])) <= 600 for a in parsed.all("line") if a.get("stroke-width") == "3")


def test_bar_chart_has_a_bar_per_category_signed_around_zero() -> None:
    svg = _chart("bar_chart", ["a<1>", "b", "c"], [3, 0, -2], "Δ <rows>", note="ClickHouse − legacy")
    parsed = _Svg()
    parsed.feed(svg)
    bars = [a for a in parsed.all("rect") if a.get("class") == "bar"]
    assert [b["fill"] for b in bars] == ["#1f6fb2", "#9aa4b5", "#c0392b"]
    assert "a&lt;1&gt;" in svg and "Δ &lt;rows&gt;" in svg and "<rows>" not in svg
    up, _, down = (float(str(b["y"])) for b in bars)
    assert up < down  # the positive bar rises above the zero line, the negative one hangs below


def test_base_page_is_self_contained_and_escapes_context() -> None:
    page = (
        environment()
        .from_string(
            '{% extends "base.html.j2" %}{% block title %}{{ name }}{% endblock %}'
            "{% block summary %}<p>{{ name }}</p>{% endblock %}"
        )
        .render(name="<script>alert(1)</script>")
    )
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page


def test_render_fails_loudly_on_a_missing_context_value() -> None:
    from jinja2 import UndefinedError

    with pytest.raises(UndefinedError):
        render("parity.html.j2")


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(0, 10, [0, 2, 4, 6, 8, 10]), (-3, 7, [-4, -2, 0, 2, 4, 6, 8]), (0, 0, [-1, -0.5, 0, 0.5, 1])],
)
def test_nice_ticks(lo: float, hi: float, expected: list[float]) -> None:
    assert nice_ticks(lo, hi) == expected


def test_time_ticks_are_round_and_inside() -> None:
    ticks = time_ticks(1_709_510_401, 1_709_510_401 + 3600)
    assert all(1_709_510_401 <= t <= 1_709_510_401 + 3600 and t % 600 == 0 for t, _ in ticks)
    assert [label for _, label in ticks][:2] == ["00:10", "00:20"]
