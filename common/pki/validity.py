"""Validity windows and serial numbers shared by every certificate issued here."""

from __future__ import annotations

import datetime as dt
import secrets

CLOCK_SKEW = dt.timedelta(minutes=5)
"""How far ``not_before`` is backdated on every certificate issued here."""


MAX_SERIAL = 1 << 159  # RFC 5280 section 4.1.2.2: positive, at most 20 octets


def utc(moment: dt.datetime) -> dt.datetime:
    """Refuse naive datetimes: cryptography would read them as UTC, callers as local."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("datetimes must be timezone-aware (pass datetime.now(UTC))")
    return moment.astimezone(dt.UTC)


def lifetime(days: int) -> dt.timedelta:
    """A certificate lifetime; raises ValueError unless ``days`` is positive."""
    if days <= 0:
        raise ValueError("lifetime_days must be positive")
    return dt.timedelta(days=days)


def random_serial() -> int:
    """159 random bits: positive and at most 20 octets (RFC 5280 section 4.1.2.2)."""
    while True:
        serial = secrets.randbits(159)
        if serial:
            return serial
