"""Kubernetes time formats: kubectl's ages and ``metav1.Time`` timestamps.

``human_duration``/``short_human_duration`` are ports of
``k8s.io/apimachinery/pkg/util/duration`` (``HumanDuration`` is what kubectl
prints in AGE columns). ``rfc3339`` is the wire form of ``metav1.Time``
(UTC, whole seconds, ``2026-11-21T10:00:00Z``); ``rfc3339_micro`` that of
``metav1.MicroTime`` (used by Events and Leases).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta, timezone

__all__ = [
    "human_duration",
    "now_rfc3339",
    "parse_rfc3339",
    "rfc3339",
    "rfc3339_micro",
    "short_human_duration",
]

_NS_PER_SECOND = 1_000_000_000
_NS_PER_MINUTE = 60 * _NS_PER_SECOND
_NS_PER_HOUR = 60 * _NS_PER_MINUTE


def _nanoseconds(d: float | timedelta) -> int:
    """A duration as integer nanoseconds (Go's ``time.Duration``)."""
    if isinstance(d, timedelta):
        return (d.days * 86_400 + d.seconds) * _NS_PER_SECOND + d.microseconds * 1000
    if not math.isfinite(d):
        raise ValueError(f"duration must be finite, got {d}")
    if isinstance(d, int):
        return d * _NS_PER_SECOND
    return round(d * _NS_PER_SECOND)


def _trunc_div(n: int, unit: int) -> int:
    """Go's integer division (truncates toward zero)."""
    q = abs(n) // unit
    return q if n >= 0 else -q


def human_duration(seconds: float | timedelta) -> str:
    """``duration.HumanDuration``: ~2-3 significant figures, as kubectl's AGE.

    Below -1s: ``<invalid>``; -1s..0: ``0s``; under 2 minutes: ``"119s"``;
    under 10 minutes: ``"3m10s"``; under 3 hours: ``"70m"``; under 8 hours:
    ``"3h1m"``; under 2 days: ``"47h"``; under 8 days: ``"2d1h"``; under 2
    years: ``"367d"``; under 8 years: ``"2y1d"``; then ``"8y"``.
    """
    ns = _nanoseconds(seconds)
    secs = _trunc_div(ns, _NS_PER_SECOND)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 60 * 2:
        return f"{secs}s"
    minutes = ns // _NS_PER_MINUTE
    if minutes < 10:
        s = secs % 60
        return f"{minutes}m" if s == 0 else f"{minutes}m{s}s"
    if minutes < 60 * 3:
        return f"{minutes}m"
    hours = ns // _NS_PER_HOUR
    if hours < 8:
        m = minutes % 60
        return f"{hours}h" if m == 0 else f"{hours}h{m}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        h = hours % 24
        return f"{hours // 24}d" if h == 0 else f"{hours // 24}d{h}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        years = hours // 24 // 365
        return f"{years}y" if dy == 0 else f"{years}y{dy}d"
    return f"{hours // 24 // 365}y"


def short_human_duration(seconds: float | timedelta) -> str:
    """``duration.ShortHumanDuration``: one unit only (``59s``, ``1m``, ``23h``, ``1d``, ``2y``)."""
    ns = _nanoseconds(seconds)
    secs = _trunc_div(ns, _NS_PER_SECOND)
    if secs < -1:
        return "<invalid>"
    if secs < 0:
        return "0s"
    if secs < 60:
        return f"{secs}s"
    minutes = ns // _NS_PER_MINUTE
    if minutes < 60:
        return f"{minutes}m"
    hours = ns // _NS_PER_HOUR
    if hours < 24:
        return f"{hours}h"
    if hours < 24 * 365:
        return f"{hours // 24}d"
    return f"{int(ns / _NS_PER_HOUR / 24 / 365)}y"


def _utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"a naive datetime has no time zone; give one with tzinfo: {dt!r}")
    return dt.astimezone(UTC)


def rfc3339(dt: datetime) -> str:
    """``metav1.Time`` text: UTC, whole seconds (truncated), ``Z`` suffix.

    Naive datetimes are refused (their zone is unknown).
    """
    return _utc(dt).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_micro(dt: datetime) -> str:
    """``metav1.MicroTime`` text: UTC with six fraction digits (``...T10:00:00.000000Z``)."""
    return _utc(dt).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def now_rfc3339() -> str:
    """The current time as ``metav1.Time`` text."""
    return rfc3339(datetime.now(UTC))


_RFC3339_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:(Z)|([+-])(\d{2}):(\d{2}))",
    re.ASCII)


def parse_rfc3339(s: str) -> datetime:
    """Parse RFC 3339 text (as Go's ``time.RFC3339`` does) to an aware UTC datetime.

    Accepts ``Z`` or a ``+hh:mm``/``-hh:mm`` offset and any number of fraction
    digits (kept to the microsecond, the rest truncated). Raises ``ValueError``.
    """
    m = _RFC3339_RE.fullmatch(s)
    if m is None:
        raise ValueError(f"not an RFC 3339 time (like 2026-11-21T10:00:00Z): {s!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zulu, sign, off_h, off_m = m.groups()[6:]
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    if zulu:
        tz = UTC
    else:
        hours, mins = int(off_h), int(off_m)
        if hours > 23 or mins > 59:
            raise ValueError(f"time zone offset out of range in {s!r}")
        offset = timedelta(hours=hours, minutes=mins)
        tz = timezone(-offset if sign == "-" else offset)
    try:
        dt = datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError as exc:
        raise ValueError(f"not an RFC 3339 time: {s!r}: {exc}") from None
    return dt.astimezone(UTC)
