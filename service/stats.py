"""Stage timings of a job and the statistics over a window (pure functions, no I/O).

A job's ``timings`` (written by the store and the worker) hold timestamps
(``received_at``, ``processing_at``, ``done_at``) and durations in seconds
(``decode_s``, ``preprocess_s``, ``infer_s``, ``*build_s``, ``send_s``). The
five stages the dashboard shows are derived from them:

- ``received``: waiting in the queue, from arrival until a worker took it;
- ``decoded``: reading the file and the display pipeline;
- ``inferred``: resizing for the model and running it;
- ``built``: threshold, SEG, SC (and any other result) written to the outbox;
- ``sent``: the last delivery attempt to the destinations.

``total`` is arrival to DONE. A stage whose inputs are missing is left out.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

STAGES: tuple[str, ...] = ("received", "decoded", "inferred", "built", "sent")
ALL_STAGES: tuple[str, ...] = (*STAGES, "total")


def stage_durations(timings: dict[str, float]) -> dict[str, float]:
    """Seconds per stage (and ``total``) for one job's timings."""
    out: dict[str, float] = {}
    received, started, done = (
        timings.get("received_at"),
        timings.get("processing_at"),
        timings.get("done_at"),
    )
    if received is not None and started is not None and started >= received:
        out["received"] = started - received
    if "decode_s" in timings:
        out["decoded"] = timings["decode_s"]
    if "infer_s" in timings:
        out["inferred"] = timings.get("preprocess_s", 0.0) + timings["infer_s"]
    built = [v for k, v in timings.items() if k.endswith("build_s")]
    if built:
        out["built"] = sum(built)
    if "send_s" in timings:
        out["sent"] = timings["send_s"]
    if received is not None and done is not None and done >= received:
        out["total"] = done - received
    return out


def stage_end_times(timings: dict[str, float]) -> dict[str, float]:
    """When each stage ended (epoch seconds), for the job's timeline."""
    out: dict[str, float] = {}
    if "received_at" in timings:
        out["received"] = timings["received_at"]
    clock = timings.get("processing_at")
    for stage, keys in (
        ("decoded", ("decode_s",)),
        ("inferred", ("preprocess_s", "infer_s")),
        ("built", tuple(k for k in timings if k.endswith("build_s"))),
    ):
        if clock is None or not any(k in timings for k in keys):
            break
        clock += sum(timings.get(k, 0.0) for k in keys)
        out[stage] = clock
    if "done_at" in timings:
        out["sent"] = timings["done_at"]
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty sequence."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class StageLatency:
    stage: str
    count: int
    p50_s: float | None
    p95_s: float | None


def stage_latencies(all_timings: Iterable[dict[str, float]]) -> list[StageLatency]:
    """p50 and p95 per stage over the given jobs."""
    samples: dict[str, list[float]] = {stage: [] for stage in ALL_STAGES}
    for timings in all_timings:
        for stage, seconds in stage_durations(timings).items():
            samples[stage].append(seconds)
    return [
        StageLatency(
            stage=stage,
            count=len(values),
            p50_s=percentile(values, 50) if values else None,
            p95_s=percentile(values, 95) if values else None,
        )
        for stage, values in samples.items()
    ]


def per_bucket(times: Iterable[float], *, since: float, until: float, buckets: int) -> list[int]:
    """How many of ``times`` fall in each of ``buckets`` equal slices of [since, until)."""
    if buckets < 1 or until <= since:
        raise ValueError("need at least one bucket and until > since")
    width = (until - since) / buckets
    counts = [0] * buckets
    for t in times:
        if since <= t < until:
            counts[min(buckets - 1, int((t - since) / width))] += 1
    return counts
