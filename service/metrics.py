"""Prometheus metrics, read from the job store when scraped (prometheus-client).

Nothing in the worker or the SCP has to call a metrics function: counts and
gauges come from the store's tables, and the stage histograms are fed, at each
scrape, with the jobs that became DONE since the previous one (the store's
``job_events`` ids are the cursor). Histograms therefore count from the start
of this process, as Prometheus expects of a histogram; the association and
retry counters come from the audit tables and survive restarts.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from service.stats import ALL_STAGES, stage_durations
from service.store import JobState, JobStore
from service.supervisor import WorkerHealth

STAGE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Workers(Protocol):
    def worker_health(self) -> WorkerHealth: ...


class NodeCollector(Collector):
    """One collector for everything the node exposes."""

    def __init__(
        self,
        store: JobStore,
        data_dir: Path,
        model: dict[str, str] | None,
        workers: Workers | None = None,
    ) -> None:
        self.store = store
        self.data_dir = data_dir
        self.model = model
        self.workers = workers
        self._lock = threading.Lock()
        self._cursor = store.reads.last_event_id()
        self._stages = Histogram(
            "mammoseg_stage_seconds",
            "Seconds per stage of the jobs that finished (DONE) since the node started",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=None,
        )
        for stage in ALL_STAGES:
            self._stages.labels(stage=stage)

    def _observe_finished(self) -> None:
        with self._lock:
            while batch := self.store.reads.finished_after(self._cursor):
                for event_id, timings in batch:
                    for stage, seconds in stage_durations(timings).items():
                        self._stages.labels(stage=stage).observe(seconds)
                    self._cursor = event_id

    def collect(self) -> Iterator[Metric]:
        self._observe_finished()
        yield from self._stages.collect()

        jobs = GaugeMetricFamily("mammoseg_jobs", "Jobs in each state now", labels=["state"])
        for state, count in self.store.reads.counts().items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily(
            "mammoseg_queue_depth",
            "Jobs waiting for a worker (RECEIVED, and RETRYING whose attempt is due)",
            value=self.store.queue.queue_depth(),
        )
        associations = CounterMetricFamily(
            "mammoseg_associations",
            "DICOM associations by outcome (open ones are counted as open)",
            labels=["outcome"],
        )
        for outcome, count in self.store.audit.counts().items():
            associations.add_metric([outcome], count)
        yield associations
        yield CounterMetricFamily(
            "mammoseg_retries",
            "Times a job was put to RETRYING (failed sends and admin retries)",
            value=self.store.reads.event_count(JobState.RETRYING),
        )
        finished = CounterMetricFamily(
            "mammoseg_jobs_finished", "Jobs that reached a final state", labels=["state"]
        )
        for state in (JobState.DONE, JobState.FAILED, JobState.SKIPPED):
            finished.add_metric([state.value], self.store.reads.event_count(state))
        yield finished
        yield from store_counters(self.store.reads.counters())
        notices = GaugeMetricFamily(
            "mammoseg_webhook_notices",
            "Webhook notices by state (PENDING, DELIVERED, DEAD: dead letters)",
            labels=["state"],
        )
        for state, n in self.store.notices.counts().items():
            notices.add_metric([state], n)
        yield notices
        free = shutil.disk_usage(self.data_dir).free if self.data_dir.exists() else 0
        yield GaugeMetricFamily(
            "mammoseg_free_disk_bytes", "Free bytes on the data directory's disk", value=free
        )
        if self.model:
            info = InfoMetricFamily("mammoseg_model", "The loaded model")
            info.add_metric([], self.model)
            yield info
        if self.workers is not None:
            yield from worker_metrics(self.workers.worker_health())


def worker_metrics(health: WorkerHealth) -> Iterator[Metric]:
    """How many workers should run and how many do; restarts of worker processes."""
    yield GaugeMetricFamily(
        "mammoseg_workers_expected",
        "Worker processes of serve (worker_processes), or worker threads when they run in it",
        value=health.expected,
    )
    yield GaugeMetricFamily(
        "mammoseg_workers_alive",
        "Of those, running now (a worker process: started and ready)",
        value=health.alive,
    )
    yield CounterMetricFamily(
        "mammoseg_worker_process_restarts",
        "Worker processes started again after one died (a crash), since serve started",
        value=health.restarts,
    )


#: /metrics name of each retention count (label ``what`` of mammoseg_retention_deleted).
RETENTION_COUNTS = {
    "jobs_purged": "retention.jobs_purged",
    "files": "retention.files",
    "bytes": "retention.bytes",
    "high_water_jobs": "retention.high_water_jobs",
    "job_rows": "retention.job_rows",
    "event_rows": "retention.event_rows",
    "association_rows": "retention.association_rows",
    "audit_files": "retention.audit_files",
}


def store_counters(counters: dict[str, int]) -> Iterator[Metric]:
    """Retention, duplicate and quarantine totals, from the store's counters table."""
    retention = CounterMetricFamily(
        "mammoseg_retention_deleted",
        "What the retention sweep deleted: jobs_purged (jobs whose files went), files, "
        "bytes, high_water_jobs (of those, early for free disk), job_rows, event_rows, "
        "association_rows, audit_files (day files of the audit trail)",
        labels=["what"],
    )
    for what, name in RETENTION_COUNTS.items():
        retention.add_metric([what], counters.get(name, 0))
    yield retention
    yield CounterMetricFamily(
        "mammoseg_duplicates_ignored",
        "Instances received again with the same content after their job finished (no new job)",
        value=counters.get("duplicates.ignored", 0),
    )
    yield CounterMetricFamily(
        "mammoseg_jobs_quarantined",
        "Jobs FAILED as quarantined: their processing crashed the node quarantine_after times",
        value=counters.get("quarantined", 0),
    )
    yield CounterMetricFamily(
        "mammoseg_webhook_insert_failures",
        "Job DONE/FAILED changes whose webhook notice could not be written (the job went on)",
        value=counters.get("webhooks.insert_failed", 0),
    )


def build_registry(
    store: JobStore,
    data_dir: Path,
    model: dict[str, str] | None,
    *,
    workers: Workers | None = None,
) -> CollectorRegistry:
    """A registry of its own per app, so tests and several apps never share state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(store, data_dir, model, workers))
    return registry


class AuditCounts(Protocol):
    def counts(self) -> dict[str, int]: ...


class AuditCollector(Collector):
    """The audit trail's counts (service/audit_trail.py), since this process started."""

    def __init__(self, audit: AuditCounts) -> None:
        self.audit = audit

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "mammoseg_audit_messages",
            "Audit messages: written (to the day file), dropped (queue full), write_errors, "
            "syslog_sent, syslog_errors (failed attempts), syslog_dropped",
            labels=["what"],
        )
        for what, count in sorted(self.audit.counts().items()):
            messages.add_metric([what], count)
        yield messages
