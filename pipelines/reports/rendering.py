"""The one Jinja2 environment every HTML report renders through.

Autoescape is on for every template (they are all HTML with inline SVG), undefined names fail
loudly instead of rendering as empty strings, and templates load from this package's
`templates/` directory, so a report works from an installed wheel as well as from the source tree.
"""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined

from pipelines.reports.charts import bar_layout, line_layout, short_number, signed_number, thousands


@cache
def environment() -> Environment:
    """The shared environment: chart layouts as globals, number formats as filters."""
    env = Environment(
        loader=PackageLoader("pipelines.reports", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(num=thousands, signed=signed_number, short=short_number)
    env.globals.update(bar_layout=bar_layout, line_layout=line_layout)
    return env


def render(template_name: str, /, **context: object) -> str:
    """`template_name` (under `pipelines/reports/templates/`) rendered with `context`, as text."""
    return environment().get_template(template_name).render(**context)
