"""The wiring: one function that reads like the data flow in docs/architecture.md.

``run_node(settings)``: store (recover after a crash) -> model (contract
checked) -> workers (and their heartbeat) -> retention sweep -> storage SCP ->
HTTP server in the foreground. SIGTERM
or SIGINT stops the HTTP server; then the SCP stops (open associations are
aborted, so senders retry), workers finish their current job, the store closes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

from dicom_node.digest import dataset_digest
from dicom_node.provenance import Provenance
from dicom_node.scp import (
    AssociationEvents,
    ReceivedInstance,
    ScpConfig,
    StorageSCP,
    TlsConfig,
)
from dicom_node.spool import remove_partial_files
from service import __version__
from service.app import NodeState, create_app
from service.db import Database, DatabaseError
from service.inference import Segmenter, load_segmenter
from service.pipeline import PipelineOptions
from service.retention import RetentionSweeper, policy_from
from service.segmentation import LesionRules
from service.settings import Settings
from service.store import JobStore, NewJob, StoreError
from service.worker import (
    Heartbeat,
    RetryPolicy,
    Sender,
    Worker,
    WorkerContext,
    heartbeat_interval,
)

log = logging.getLogger(__name__)


def job_sink(store: JobStore):  # type: ignore[no-untyped-def]
    """The SCP's sink: commit a job for every instance on disk.

    The dataset's digest goes with it: an instance received again unchanged
    after its job finished makes no new job (``store.queue.admit``). Its
    fresh spool file is removed when retention had already deleted that
    job's files (it would belong to no job).
    """

    def commit(instance: ReceivedInstance) -> None:
        admission = store.queue.admit(
            NewJob(
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                study_instance_uid=instance.study_instance_uid,
                series_instance_uid=instance.series_instance_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                calling_ae_title=instance.calling_ae_title,
                association_id=instance.association_id,
                path=str(instance.path),
                content_hash=dataset_digest(instance.path),
            )
        )
        if admission.outcome == "duplicate" and admission.files_purged:
            instance.path.unlink(missing_ok=True)
        words = {
            "created": "created",
            "open": "already open",
            "duplicate": "finished with this content: duplicate ignored",
        }
        log.info(
            "job %d %s for %s on %s",
            admission.job_id,
            words[admission.outcome],
            instance.sop_instance_uid,
            instance.association_id,
            extra={
                "event": {
                    "created": "job_created",
                    "open": "job_already_open",
                    "duplicate": "duplicate_ignored",
                }[admission.outcome],
                "job_id": admission.job_id,
                "sop_instance_uid": instance.sop_instance_uid,
                "association_id": instance.association_id,
            },
        )

    return commit


def association_audit(store: JobStore) -> AssociationEvents:
    """The SCP's association callbacks: one audit row per association in the store."""

    def guarded(record: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                record(*args)
            except (StoreError, DatabaseError, OSError):  # the audit never breaks an association
                log.exception("association audit not written")

        return call

    return AssociationEvents(
        on_accepted=guarded(store.audit.opened),
        on_rejected=guarded(store.audit.rejected),
        on_closed=guarded(store.audit.closed),
    )


def pipeline_options(settings: Settings, segmenter: Segmenter) -> PipelineOptions:
    contract = segmenter.contract
    rules = LesionRules.of(settings, contract)
    return PipelineOptions(
        provenance=Provenance(
            model_name=contract.model_name,
            model_version=contract.model_version,
            software_version=__version__,
            uid_root=settings.uid_root,
            institution_name=settings.institution_name,
        ),
        outbox_dir=settings.outbox_dir,
        seg_series_number=settings.seg_series_number,
        sc_series_number=settings.sc_series_number,
        sc_max_size=settings.sc_max_size,
        min_lesion_area_mm2=rules.min_lesion_area_mm2,
        threshold=rules.threshold,
        process_for_processing=settings.process_for_processing,
        sr_series_number=settings.sr_series_number,
        seg_series_description=settings.seg_series_description,
        sc_series_description=settings.sc_series_description,
        sr_series_description=settings.sr_series_description,
        sc_compression=settings.sc_compression,
        voi_index=settings.voi_index,
        tomosynthesis_policy=settings.tomosynthesis_policy,
        other_modality_policy=settings.other_modality_policy,
    )


@dataclass
class Node:
    """A started node: what run_node and the tests need to stop it cleanly."""

    settings: Settings
    store: JobStore
    segmenter: Segmenter
    scp: StorageSCP
    workers: list[threading.Thread]
    stop_event: threading.Event

    def stop(self, *, timeout_s: float = 30.0) -> None:
        self.scp.stop()
        self.stop_event.set()
        for worker in self.workers:
            worker.join(timeout=timeout_s)
        hand_back(self.store, self.settings, self.workers)
        log.info("node stopped")


def hand_back(store: JobStore, settings: Settings, workers: list[threading.Thread]) -> None:
    """A worker still busy after the stop timeout: its job goes back, not as a crash.

    Without this, a slow job cut short by an orderly restart would count
    towards its quarantine (service/store/claims.py, ``recover``).
    """
    if any(isinstance(w, Worker | Sender) and w.is_alive() for w in workers):
        try:
            handed = store.queue.recover(owner=settings.worker_id, crashed=False)
        except (StoreError, DatabaseError, OSError):
            log.exception("could not hand back the unfinished jobs")
            return
        log.warning("stopped with jobs unfinished: handed back %s", handed)


def tls_config(settings: Settings) -> TlsConfig | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return TlsConfig(
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        ca_file=settings.tls_ca_file,
        require_client_cert=settings.tls_require_client_cert,
    )


def open_store(settings: Settings) -> JobStore:
    """The job store, with interrupted work taken back.

    On its own SQLite file a node is the only user, so everything interrupted
    is its own; on a shared PostgreSQL store it takes back only its own claims
    (others' stale ones are taken back by the sender loop later).
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    quarantine = settings.quarantine_after
    if settings.database_url:
        store = JobStore(Database(settings.database_url), quarantine_after=quarantine)
        recovered = store.queue.recover(
            owner=settings.worker_id, stale_after_s=settings.stale_claim_s
        )
    else:
        store = JobStore(settings.database_path, quarantine_after=quarantine)
        recovered = store.queue.recover()
    log.info(
        "store %s ready: %d jobs back to RECEIVED, %d to RETRYING, %d quarantined",
        store.backend.dialect,
        recovered["processing"],
        recovered["sending"],
        recovered["quarantined"],
    )
    if recovered["quarantined"]:
        log.error(
            "%d jobs quarantined: their processing crashed the node %d times (FAILED, "
            "never claimed again; reprocess redoes one)",
            recovered["quarantined"],
            quarantine,
            extra={"event": "jobs_quarantined"},
        )
    return store


def start_workers(
    settings: Settings, store: JobStore
) -> tuple[Segmenter, list[threading.Thread], threading.Event]:
    """Load the model (contract checked) and start the workers and the sender."""
    segmenter = load_segmenter(settings.model_path, threads=settings.inference_threads)
    stop_event = threading.Event()
    heartbeat = Heartbeat(
        store, settings.worker_id, heartbeat_interval(settings.stale_claim_s), stop_event
    )
    ctx = WorkerContext(
        store=store,
        segmenter=segmenter,
        options=pipeline_options(settings, segmenter),
        destinations=settings.destination_list,
        calling_ae=settings.ae_title,
        send_timeout_s=settings.send_timeout_s,
        retry=RetryPolicy(
            initial_s=settings.retry_initial_s,
            max_s=settings.retry_max_s,
            give_up_s=settings.retry_give_up_s,
        ),
        poll_interval_s=settings.poll_interval_s,
        worker_id=settings.worker_id,
        stale_claim_s=settings.stale_claim_s if settings.database_url else None,
        heartbeat=heartbeat,
    )
    outbox: queue.Queue[int] = queue.Queue()
    workers: list[threading.Thread] = [
        Worker(ctx, stop_event, outbox, name=f"worker-{i}") for i in range(settings.workers)
    ]
    workers.append(Sender(ctx, stop_event, outbox))
    workers.append(heartbeat)
    for worker in workers:
        worker.start()
    return segmenter, workers, stop_event


def start_node(settings: Settings) -> Node:
    """Start everything except the HTTP server; raises on a bad model or a busy port."""
    store = open_store(settings)
    removed = remove_partial_files(settings.spool_dir, owner=settings.worker_id)
    log.info("%d partial files from an interrupted receive removed", removed)
    segmenter, workers, stop_event = start_workers(settings, store)
    sweeper = RetentionSweeper(store, policy_from(settings), stop_event)
    sweeper.start()
    workers.append(sweeper)
    scp = StorageSCP(
        ScpConfig(
            ae_title=settings.ae_title,
            host=settings.dicom_host,
            port=settings.dicom_port,
            spool_dir=settings.spool_dir,
            allowed_callers=settings.allowed_callers,
            max_associations=settings.max_associations,
            max_associations_per_peer=settings.max_associations_per_peer or None,
            min_free_bytes=settings.min_free_mb << 20,
            max_dataset_bytes=settings.max_dataset_mb << 20,
            tls=tls_config(settings),
            writer_name=settings.worker_id,
        ),
        job_sink(store),
        association_audit(store),
    )
    try:
        scp.start()
    except OSError:
        stop_event.set()
        raise
    return Node(settings, store, segmenter, scp, workers, stop_event)


class _HttpServer(uvicorn.Server):
    """Uvicorn without its signal re-raise: run_node owns SIGTERM/SIGINT, so the node
    stops in order (SCP, workers, store) and the process exits 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        def request_exit(signum: int, frame: object) -> None:
            log.info("signal %d received: stopping", signum)
            self.should_exit = True

        previous = {
            sig: signal.signal(sig, request_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def run_worker(settings: Settings) -> None:
    """Workers only (no SCP, no HTTP), for scale-out on a shared store and spool."""
    if not settings.database_url:
        log.warning("worker without database_url: it shares only this host's SQLite store")
    store = open_store(settings)
    _, workers, stop_event = start_workers(settings, store)

    def request_exit(signum: int, frame: object) -> None:
        log.info("signal %d received: stopping", signum)
        stop_event.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, request_exit)
    log.info("worker %s running %d workers", settings.worker_id, settings.workers)
    stop_event.wait()
    for worker in workers:
        worker.join(timeout=30.0)
    hand_back(store, settings, workers)
    log.info("worker %s stopped", settings.worker_id)


def run_node(settings: Settings) -> None:
    node = start_node(settings)
    app = create_app(
        NodeState(
            store=node.store,
            segmenter=node.segmenter,
            scp=node.scp,
            data_dir=settings.data_dir,
            min_free_mb=settings.min_free_mb,
            version=__version__,
            settings=settings,
        )
    )
    server = _HttpServer(
        uvicorn.Config(
            app, host=settings.http_host, port=settings.http_port, log_config=None, access_log=False
        )
    )
    log.info("HTTP on http://%s:%d", settings.http_host, settings.http_port)
    try:
        server.run()
    finally:
        node.stop()
