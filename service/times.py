"""Absolute times as the API and the webhooks give them: ISO 8601 UTC.

One helper for both doors (service/api/schemas.py, service/store/records.py's
webhook bodies), so a time a receiver gets reads the same as the API's.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import overload

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@overload
def utc(ts: float) -> datetime: ...
@overload
def utc(ts: None) -> None: ...
def utc(ts: float | None) -> datetime | None:
    """The store's epoch seconds as an aware UTC datetime (None stays None).

    Cut down to the microsecond, not rounded, so that a time read back from the API
    and passed as ``since`` still includes the job, and as ``until`` excludes it.
    """
    if ts is None:
        return None
    return _EPOCH + timedelta(microseconds=math.floor(Fraction(ts) * 1_000_000))


def iso_utc(ts: float) -> str:
    """``ts`` as the API writes it: ``2026-12-06T20:15:03.123456Z``."""
    return utc(ts).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
