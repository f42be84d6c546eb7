"""The one parser of dates and instants that users type (`--since`, `--start`, `--until`, …).

Rules, the same for every command: `YYYY-MM-DD` is midnight UTC of that day; an ISO 8601
date-time is UTC unless it carries an offset (`Z` or `+02:00`); fractions of a second are
kept unless the caller asks for whole seconds. Everything comes back as an aware UTC datetime.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from pipelines.errors import UsageError

_EXAMPLES = "use YYYY-MM-DD (a UTC day) or an ISO date-time like 2024-03-01T06:00:00Z"


def parse_instant(text: str, *, option: str, whole_seconds: bool = False) -> datetime:
    """`text` → an aware UTC datetime. Raises UsageError naming `option` and the value."""
    raw = text.strip()
    try:
        if len(raw) == 10:
            d = date.fromisoformat(raw)
            return datetime(d.year, d.month, d.day, tzinfo=UTC)
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a date — not an ISO date or date-time", hint=_EXAMPLES) from None
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    if whole_seconds and moment.microsecond:
        raise UsageError(f"{option} {text!r} has a fraction of a second", hint="use whole seconds")
    return moment


def parse_day(text: str, *, option: str) -> date:
    """`YYYY-MM-DD` → a date. Raises UsageError naming `option` and the value."""
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} {text!r} is not a date", hint="use YYYY-MM-DD") from None


def epoch_ms(moment: datetime) -> int:
    """An aware datetime → integer epoch milliseconds."""
    return int(moment.timestamp() * 1000)


_DURATION_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_duration_ms(text: str, *, option: str) -> int:
    """A duration users type (`90s`, `36h`, `7d`, `2w`, `500ms`; a bare number is seconds) → milliseconds.

    Raises UsageError naming `option` and the value; a negative duration is refused.
    """
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", text)
    if match is None:
        raise UsageError(
            f"{option} {text!r} is not a duration", hint="use a number and a unit: 500ms, 90s, 15m, 36h, 7d, 2w"
        )
    return round(float(match.group(1)) * _DURATION_UNITS_MS[match.group(2) or "s"])
