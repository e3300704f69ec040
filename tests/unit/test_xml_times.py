"""The XML writers' ISO 8601 times (issue 15: their fast path looks the padded fields up in
tables) are the text of ``values.format_iso8601`` — milliseconds truncated, ``Z`` — for
aware UTC and naive times of any year, and other zones are converted to UTC (R-WIRE)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

from ebscrypt.wire.codec.values import format_iso8601
from ebscrypt.wire.codec.xml_writer import _iso8601


def test_table_formatted_times_equal_format_iso8601() -> None:
    rng = random.Random(15)
    edges = [datetime(1, 1, 1), datetime(999, 12, 31, 23, 59, 59, 999999), datetime(1000, 1, 1),
             datetime(2026, 12, 7, 10, 0, 0), datetime(2026, 12, 7, 10, 0, 0, 999), datetime(9999, 12, 31, 23, 59, 59, 999999)]
    spread = [datetime(1, 1, 1) + timedelta(microseconds=rng.randrange(10**6 * 86400 * 365 * 9998)) for _ in range(20000)]
    for naive in edges + spread:
        for value in (naive, naive.replace(tzinfo=timezone.utc)):
            assert _iso8601(value) == format_iso8601(value), value
    assert _iso8601(datetime(2026, 12, 7, 10, 0, 0, 123456, tzinfo=timezone.utc)) == "2026-12-07T10:00:00.123Z"
    east = datetime(2026, 12, 7, 12, 0, 0, tzinfo=timezone(timedelta(hours=2)))
    assert _iso8601(east) == "2026-12-07T10:00:00.000Z"
