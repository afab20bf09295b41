"""The wiring: one function that reads like the pipeline diagram in DESIGN.md.

``run_node(settings)``: store (recover after a crash) -> model (contract
checked) -> workers -> storage SCP -> HTTP server in the foreground. SIGTERM
or SIGINT stops the HTTP server; then the SCP stops (open associations are
aborted, so senders retry), workers finish their current job, the store closes.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn

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
from service.inference import Segmenter, load_segmenter
from service.pipeline import PipelineOptions
from service.settings import Settings
from service.store import JobStore, NewJob, StoreError
from service.worker import RetryPolicy, Sender, Worker, WorkerContext

log = logging.getLogger(__name__)


def job_sink(store: JobStore):  # type: ignore[no-untyped-def]
    """The SCP's sink: commit a job for every instance on disk."""

    def commit(instance: ReceivedInstance) -> None:
        job_id, created = store.add(
            NewJob(
                sop_instance_uid=instance.sop_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                study_instance_uid=instance.study_instance_uid,
                series_instance_uid=instance.series_instance_uid,
                transfer_syntax_uid=instance.transfer_syntax_uid,
                calling_ae_title=instance.calling_ae_title,
                association_id=instance.association_id,
                path=str(instance.path),
            )
        )
        log.info(
            "job %d %s for %s on %s",
            job_id,
            "created" if created else "already open",
            instance.sop_instance_uid,
            instance.association_id,
        )

    return commit


def association_audit(store: JobStore) -> AssociationEvents:
    """The SCP's association callbacks: one audit row per association in the store."""

    def guarded(record: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                record(*args)
            except (StoreError, sqlite3.Error, OSError):  # the audit never breaks an association
                log.exception("association audit not written")

        return call

    return AssociationEvents(
        on_accepted=guarded(store.association_opened),
        on_rejected=guarded(store.association_rejected),
        on_closed=guarded(store.association_closed),
    )


def pipeline_options(settings: Settings, segmenter: Segmenter) -> PipelineOptions:
    contract = segmenter.contract
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
        min_lesion_area_mm2=settings.min_lesion_area_mm2,
        threshold=settings.threshold or contract.threshold,
        process_for_processing=settings.process_for_processing,
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
        log.info("node stopped")


def tls_config(settings: Settings) -> TlsConfig | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return TlsConfig(
        cert_file=settings.tls_cert_file,
        key_file=settings.tls_key_file,
        ca_file=settings.tls_ca_file,
        require_client_cert=settings.tls_require_client_cert,
    )


def start_node(settings: Settings) -> Node:
    """Start everything except the HTTP server; raises on a bad model or a busy port."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.database_path)
    recovered = store.recover()
    removed = remove_partial_files(settings.spool_dir)
    log.info(
        "store ready: %d jobs back to RECEIVED, %d to RETRYING, %d partial files removed",
        recovered["processing"],
        recovered["sending"],
        removed,
    )
    segmenter = load_segmenter(settings.model_path, threads=settings.inference_threads)
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
    )
    stop_event = threading.Event()
    outbox: queue.Queue[int] = queue.Queue()
    workers: list[threading.Thread] = [
        Worker(ctx, stop_event, outbox, name=f"worker-{i}") for i in range(settings.workers)
    ]
    workers.append(Sender(ctx, stop_event, outbox))
    for worker in workers:
        worker.start()
    scp = StorageSCP(
        ScpConfig(
            ae_title=settings.ae_title,
            host=settings.dicom_host,
            port=settings.dicom_port,
            spool_dir=settings.spool_dir,
            allowed_callers=settings.allowed_callers,
            max_associations=settings.max_associations,
            min_free_bytes=settings.min_free_mb << 20,
            max_dataset_bytes=settings.max_dataset_mb << 20,
            tls=tls_config(settings),
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
