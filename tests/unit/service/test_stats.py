"""Stage timings and window statistics (service.stats)."""

from __future__ import annotations

import pytest

from service.stats import per_bucket, percentile, stage_durations, stage_end_times, stage_latencies

TIMINGS = {
    "received_at": 100.0,
    "processing_at": 102.0,
    "decode_s": 0.5,
    "preprocess_s": 0.1,
    "infer_s": 0.9,
    "postprocess_build_s": 0.25,
    "sr_build_s": 0.25,
    "send_s": 0.3,
    "done_at": 104.5,
}


def test_stage_durations_and_end_times() -> None:
    assert stage_durations(TIMINGS) == pytest.approx(
        {"received": 2.0, "decoded": 0.5, "inferred": 1.0, "built": 0.5, "sent": 0.3, "total": 4.5}
    )
    assert stage_end_times(TIMINGS) == pytest.approx(
        {"received": 100.0, "decoded": 102.5, "inferred": 103.5, "built": 104.0, "sent": 104.5}
    )
    assert stage_durations({"received_at": 1.0}) == {}
    assert stage_end_times({"received_at": 1.0, "processing_at": 2.0}) == {"received": 1.0}


def test_percentiles_are_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0
    assert percentile(values, 95) == 5.0
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


def test_latencies_over_jobs() -> None:
    rows = {x.stage: x for x in stage_latencies([TIMINGS, {**TIMINGS, "decode_s": 1.5}])}
    assert rows["decoded"].count == 2 and rows["decoded"].p50_s == 0.5
    assert rows["decoded"].p95_s == 1.5
    assert stage_latencies([])[0].p50_s is None


def test_per_bucket() -> None:
    assert per_bucket([0.0, 0.5, 1.0, 2.0, 9.99, 10.0, -1.0], since=0.0, until=10.0, buckets=5) == [
        3,
        1,
        0,
        0,
        1,
    ]
    with pytest.raises(ValueError, match="bucket"):
        per_bucket([], since=1.0, until=1.0, buckets=1)
