"""Chart geometry for the SVG macros in `templates/charts.html.j2`.

The macros only draw; everything that needs arithmetic — scales, "nice" ticks, bar rectangles,
polyline points, legend placement — is computed here, where it is typed and testable, and handed
to the template as plain frozen records. Coordinates are SVG user units (pixels at 1:1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

PALETTE = ("#1f6fb2", "#e67e22", "#2ca02c", "#8e44ad", "#c0392b", "#16a085", "#7f8c8d", "#b8860b")
"""Series colours, in order; distinguishable for the common colour-vision deficiencies."""
POSITIVE, NEGATIVE, NEUTRAL = "#1f6fb2", "#c0392b", "#9aa4b5"

_CHAR_WIDTH = 6.4  # average advance of a 12px system-ui glyph, to lay out legend entries
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               172800, 604800, 1209600, 2592000)  # fmt: skip

XAxis = Literal["number", "time"]


@dataclass(frozen=True)
class Tick:
    """A labelled position along an axis (`position` in pixels)."""

    position: float
    label: str


@dataclass(frozen=True)
class Frame:
    """The SVG canvas and the plot area inside its margins."""

    width: int
    height: int
    left: float
    top: float
    right: float  # x of the plot's right edge
    bottom: float  # y of the plot's bottom edge

    @property
    def plot_width(self) -> float:
        return self.right - self.left

    @property
    def plot_height(self) -> float:
        return self.bottom - self.top


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    fill: str
    tooltip: str
    label: str | None  # category label under the bar; None where labels are thinned out
    label_x: float


@dataclass(frozen=True)
class BarLayout:
    frame: Frame
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    zero_y: float
    label_y: float
    peak: str  # largest |value|, short form, for a caption


@dataclass(frozen=True)
class Series:
    """One named line: (x, y) points in x order; x in epoch seconds on a time axis."""

    name: str
    points: Sequence[tuple[float, float]]


@dataclass(frozen=True)
class Line:
    name: str
    colour: str
    points: str  # the polyline's `points` attribute
    count: int
    marker: tuple[float, float] | None  # where to draw a dot when the series has a single point


@dataclass(frozen=True)
class LegendEntry:
    x: float
    y: float
    colour: str
    name: str


@dataclass(frozen=True)
class LineLayout:
    frame: Frame
    lines: tuple[Line, ...]
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]
    legend: tuple[LegendEntry, ...]
    empty: bool


def short_number(v: float) -> str:
    """`1234567` → `1.23M`: axis labels that stay short whatever the magnitude."""
    a = abs(v)
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if a >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.0f}" if v == int(v) else f"{v:.3g}"


def thousands(v: float) -> str:
    """`1234567` → `1,234,567`; a whole float prints as an integer, any other as Python prints it."""
    return f"{v:,}" if isinstance(v, int) or v != int(v) else f"{int(v):,}"


def signed_number(v: float) -> str:
    """`+1,234` / `-5` / `0`: a delta with its sign, zero without one."""
    if not v:
        return "0"
    return f"{v:+,.4g}" if isinstance(v, float) and v != int(v) else f"{int(v):+,}"


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` round tick values (1, 2 or 5 × 10^n apart) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"axis range [{lo}, {hi}] is not finite")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        lo, hi = (lo - 1, hi + 1) if lo == 0 else (lo - abs(lo) / 2, hi + abs(hi) / 2)
    raw = (hi - lo) / max(count - 1, 1)
    exponent = math.floor(math.log10(raw))
    fraction = raw / 10**exponent
    # the round step nearest the raw one (cut near the geometric midpoints), so the count stays near `count`
    step = (1 if fraction < 1.5 else 2 if fraction < 3 else 5 if fraction < 7 else 10) * 10**exponent
    digits = max(0, -exponent)
    first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
    return [round(i * step, digits) for i in range(first, last + 1)]


def time_ticks(lo: float, hi: float, count: int = 6) -> list[tuple[float, str]]:
    """Tick instants (epoch seconds, UTC-aligned multiples of a round step) and their labels."""
    span = max(hi - lo, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= count), _TIME_STEPS[-1])
    fmt = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%m-%d"
    first = math.ceil(lo / step) * step
    out = []
    t = first
    while t <= hi:
        out.append((float(t), datetime.fromtimestamp(t, UTC).strftime(fmt)))
        t += step
    return out


def bar_layout(
    categories: Sequence[str],
    values: Sequence[float],
    *,
    width: int = 560,
    height: int = 260,
    tick_labels: Sequence[str] | None = None,
) -> BarLayout:
    """Bars of signed values around a zero line, one per category (up = positive)."""
    if len(categories) != len(values):
        raise ValueError(f"bar chart: {len(categories)} categories but {len(values)} values")
    labels = list(tick_labels) if tick_labels is not None else list(categories)
    if len(labels) != len(categories):
        raise ValueError(f"bar chart: {len(categories)} categories but {len(labels)} tick labels")
    frame = Frame(width, height, left=64, top=34, right=width - 12, bottom=height - 46)
    ticks = nice_ticks(min(0, *values) if values else -1, max(0, *values) if values else 1)
    lo, hi = ticks[0], ticks[-1]

    def y(v: float) -> float:
        return frame.top + (hi - v) / (hi - lo) * frame.plot_height

    zero = y(0)
    n = max(len(categories), 1)
    slot = frame.plot_width / n
    bar_w = max(min(slot * 0.6, 48), 2)
    label_every = max(1, round(n / 12))
    bars = []
    for i, (category, v) in enumerate(zip(categories, values, strict=True)):
        x = frame.left + i * slot + (slot - bar_w) / 2
        if v:
            y0, y1 = sorted((zero, y(v)))
            rect = (y0, max(y1 - y0, 1.0), POSITIVE if v > 0 else NEGATIVE)
        else:
            rect = (zero - 0.5, 1.0, NEUTRAL)
        bars.append(
            Bar(
                x=x,
                y=rect[0],
                width=bar_w,
                height=rect[1],
                fill=rect[2],
                tooltip=f"{category}: {signed_number(v)}",
                label=labels[i] if i % label_every == 0 else None,
                label_x=x + bar_w / 2,
            )
        )
    return BarLayout(
        frame=frame,
        bars=tuple(bars),
        y_ticks=tuple(Tick(y(t), short_number(t)) for t in ticks),
        zero_y=zero,
        label_y=frame.bottom + 16,
        peak=short_number(max((abs(v) for v in values), default=0)),
    )


def line_layout(
    series: Sequence[Series],
    *,
    width: int = 800,
    height: int = 300,
    x_axis: XAxis = "number",
    include_zero: bool = True,
) -> LineLayout:
    """Several series on shared axes, a legend row (wrapping) under the title."""
    legend, legend_rows = _legend(series, left=64, right=width - 12, top=34)
    frame = Frame(width, height, left=64, top=34 + 18 * legend_rows + 6, right=width - 16, bottom=height - 36)
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    empty = not xs
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_values = [*ys, 0.0] if include_zero or not ys else ys
    y_ticks = nice_ticks(min(y_values), max(y_values))
    y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def px(x: float) -> float:
        return frame.left + (x - x_lo) / (x_hi - x_lo) * frame.plot_width

    def py(y: float) -> float:
        return frame.top + (y_hi - y) / (y_hi - y_lo) * frame.plot_height

    if x_axis == "time":
        x_ticks = [Tick(px(t), label) for t, label in time_ticks(x_lo, x_hi)]
    else:
        x_ticks = [Tick(px(t), short_number(t)) for t in nice_ticks(x_lo, x_hi, 6) if x_lo <= t <= x_hi]
    lines = []
    for i, s in enumerate(series):
        coords = [(px(x), py(y)) for x, y in s.points]
        lines.append(
            Line(
                name=s.name,
                colour=PALETTE[i % len(PALETTE)],
                points=" ".join(f"{x:.1f},{y:.1f}" for x, y in coords),
                count=len(coords),
                marker=coords[0] if len(coords) == 1 else None,
            )
        )
    return LineLayout(
        frame=frame,
        lines=tuple(lines),
        x_ticks=tuple(x_ticks),
        y_ticks=tuple(Tick(py(t), short_number(t)) for t in y_ticks),
        legend=legend,
        empty=empty,
    )


def _legend(series: Sequence[Series], *, left: float, right: float, top: float) -> tuple[tuple[LegendEntry, ...], int]:
    """Legend entries left to right, wrapping onto a new row when one would run past `right`."""
    entries = []
    x, row = left, 0
    for i, s in enumerate(series):
        advance = 22 + len(s.name) * _CHAR_WIDTH + 16
        if x > left and x + advance > right:
            x, row = left, row + 1
        entries.append(LegendEntry(x=x, y=top + 4 + 18 * row, colour=PALETTE[i % len(PALETTE)], name=s.name))
        x += advance
    return tuple(entries), (row + 1 if series else 0)
