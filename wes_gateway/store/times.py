"""The one way the store writes a moment: UTC, to the second, as WES shows it."""

from __future__ import annotations

from datetime import UTC, datetime

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(moment: datetime) -> str:
    """``moment`` (aware, any zone) as the store keeps and WES shows times."""
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_stamp(text: str) -> datetime | None:
    """A time the store wrote, or None if ``text`` is not one."""
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


def utc_now() -> str:
    return stamp(datetime.now(UTC))
