"""Self-contained HTML reports: Jinja2 templates with autoescape, charts as inline SVG macros.

    from pipelines.reports import render

    html = render("parity.html.j2", result=result, ...)

Every report extends `templates/base.html.j2` (one page: inline CSS, no scripts, nothing fetched
from the network; blocks `title`, `heading`, `verdict`, `meta`, `summary`, `content`) and draws
its charts with the macros of `templates/charts.html.j2`:

    {% import "charts.html.j2" as charts %}
    {{ charts.bar_chart(days, deltas, "Δ rows per day") }}          {# signed values per category #}
    {{ charts.line_chart(series, "events/s", x_axis="time") }}      {# `Series` over time, with a legend #}

The geometry behind the macros lives in `charts` (typed, testable); the environment in `rendering`.
"""

from pipelines.reports.charts import Series
from pipelines.reports.rendering import environment, render

__all__ = ["Series", "environment", "render"]
