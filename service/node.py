"""The wiring: one function that reads like the data flow in docs/architecture.md.

``run_node(settings)``: store (recover after a crash) -> model (contract
checked) -> workers (and their heartbeat) -> retention sweep -> storage SCP ->
HTTP server in the foreground. SIGTERM
or SIGINT stops the HTTP server; then the SCP stops (open associations are
aborted, so senders retry), workers finish their current job, the store closes.

With ``worker_processes`` (default 1) the workers run in supervised child
processes (``run_worker_process``, service/supervisor.py), so that decoding
untrusted pixel data cannot take the SCP and HTTP down with it; 0 runs them
as threads of this process.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_node.commitment import CommitmentReport
from dicom_node.digest import dataset_digest
from dicom_node.limits import HEADER_ALLOWANCE_BYTES, read_dataset
from dicom_node.provenance import Provenance
from dicom_node.scp import (
    AssociationEvents,
    CommitmentSink,
    ReceivedInstance,
    ScpConfig,
    StorageSCP,
    TlsConfig,
)
from dicom_node.scu import Destination
from dicom_node.spool import remove_partial_files
from dicom_node.tls import TlsSetupError, normalise_caller_names
from dicom_node.views import VIEW_KEYWORDS, BreastView, breast_view
from service import __version__, faults
from service.audit_trail import AuditTrail
from service.db import Database, DatabaseError
from service.exams import ExamOptions, ExamWriter, exam_interval
from service.inference import Segmenter, limit_heap_arenas, load_segmenter
from service.logs import configure_logging
from service.pipeline import PipelineOptions
from service.retention import RetentionSweeper, policy_from
from service.segmentation import LesionRules
from service.settings import Settings
from service.store import JobStore, NewJob, StoreError
from service.store.owners import left_by, this_process
from service.supervisor import InProcessWorkers, WorkerHealth, WorkerProcesses
from service.webhooks import start_webhooks
from service.worker import (
    CommitPolicy,
    Heartbeat,
    RetryPolicy,
    Sender,
    Worker,
    WorkerContext,
    heartbeat_interval,
    record_report,
)

log = logging.getLogger(__name__)


def accession_number_of(path: Path) -> str:
    """The Accession Number (0008,0050) in a spool file's header; "" when it has none.

    Patient-adjacent: it goes into the job row (searchable), never into a log line.
    """
    return admission_header(path)[0]


def admission_header(path: Path) -> tuple[str, BreastView]:
    """What admission keeps of a spool file's header: Accession Number, breast and view.

    The view from Image Laterality / Laterality and the View Code Sequence or
    View Position (dicom_node/views.py); ("", unknown) when the header cannot be read.
    """
    try:
        ds = read_dataset(
            path,
            stop_before_pixels=True,
            specific_tags=["AccessionNumber", *VIEW_KEYWORDS],
            keep_bytes=HEADER_ALLOWANCE_BYTES,
        )
        accession = str(ds.get("AccessionNumber", "") or "").strip()[:64]
        return accession, breast_view(ds)
    except Exception:  # noqa: BLE001 - the SCP has read this header; a job never waits on it
        return "", BreastView("", "")


def job_sink(store: JobStore, audit: AuditTrail | None = None):  # type: ignore[no-untyped-def]
    """The SCP's sink: commit a job for every instance on disk (and its audit message).

    The dataset's digest goes with it: an instance received again unchanged
    after its job finished makes no new job (``store.queue.admit``). Its
    fresh spool file is removed when retention had already deleted that
    job's files (it would belong to no job).
    """

    def commit(instance: ReceivedInstance) -> None:
        accession, view = admission_header(instance.path)
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
                accession_number=accession,
                laterality=view.laterality,
                image_view=view.view,
            )
        )
        if admission.outcome == "duplicate" and admission.files_purged:
            instance.path.unlink(missing_ok=True)
        if audit is not None:  # DICOM Instances Transferred: C when new, R when held already
            audit.instance_received(
                calling_ae=instance.calling_ae_title,
                address=instance.peer_address,
                study_uid=instance.study_instance_uid,
                sop_class_uid=instance.sop_class_uid,
                sop_instance_uid=instance.sop_instance_uid,
                path=instance.path,
                created=admission.outcome == "created",
            )
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


def commitment_sink(store: JobStore) -> CommitmentSink:
    """The SCP's storage commitment sink: the report goes to the request it answers.

    True when a request of this node has its Transaction UID (whichever
    process sent it: the requests are rows in the store).
    """

    def record(report: CommitmentReport) -> bool:
        return record_report(store, report) is not None

    return record


def association_audit(store: JobStore, audit: AuditTrail | None = None) -> AssociationEvents:
    """The SCP's association callbacks: one audit row per association in the store.

    A rejected one also gets a Security Alert message in the audit trail.
    """

    def guarded(record: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                record(*args)
            except (StoreError, DatabaseError, OSError):  # the audit never breaks an association
                log.exception("association audit not written")

        return call

    def rejected(association_id: str, calling_ae_title: str, address: str) -> None:
        if audit is not None:
            audit.association_rejected(association_id, calling_ae_title, address)
        store.audit.rejected(association_id, calling_ae_title, address)

    return AssociationEvents(
        on_accepted=guarded(store.audit.opened),
        on_rejected=guarded(rejected),
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


def exam_options(settings: Settings, segmenter: Segmenter) -> ExamOptions:
    """The exam writer's options: the same provenance as every per-image result."""
    return ExamOptions(
        provenance=pipeline_options(settings, segmenter).provenance,
        outbox_dir=settings.outbox_dir,
        stable_s=settings.exam_stable_s,
        series_number=settings.exam_sr_series_number,
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
    #: The worker processes (worker_processes >= 1); None: the workers are threads here.
    processes: WorkerProcesses | None = None
    #: The DICOM audit trail (service/audit_trail.py); closed last by :meth:`stop`.
    audit: AuditTrail | None = None

    def worker_health(self) -> WorkerHealth:
        """For /readyz and /metrics: the worker processes, or this process's worker threads."""
        if self.processes is not None:
            return self.processes.health()
        return InProcessWorkers(
            [w for w in self.workers if isinstance(w, Worker | Sender | Heartbeat)]
        ).health()

    def stop(self, *, timeout_s: float = 30.0) -> None:
        self.scp.stop()
        self.stop_event.set()
        if self.processes is not None:
            self.processes.stop(timeout_s=timeout_s)
        for worker in self.workers:
            worker.join(timeout=timeout_s)
        hand_back(self.store, self.settings, self.workers)
        if self.audit is not None:
            self.audit.application_stopped()
            self.audit.close()
        log.info("node stopped")


def hand_back(store: JobStore, settings: Settings, workers: list[threading.Thread]) -> None:
    """A worker still busy after the stop timeout: its job goes back, not as a crash.

    Without this, a slow job cut short by an orderly restart would count
    towards its quarantine (service/store/claims.py, ``recover``). Only this
    process's own claims go back (its owner names its pid).
    """
    if any(isinstance(w, Worker | Sender) and w.is_alive() for w in workers):
        try:
            owner = str(this_process(settings.worker_id))
            handed = store.queue.recover(owner=owner, crashed=False)
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
        ciphers=settings.tls_ciphers,
        caller_names=normalise_caller_names(settings.tls_caller_names),
    )


def check_destinations(destinations: list[Destination]) -> None:
    """Load every TLS destination's CA, certificate and key once; raise ``TlsSetupError``.

    A file that cannot be used stops start-up (exit 3) instead of failing every delivery.
    """
    for destination in destinations:
        if destination.tls is None:
            continue
        try:
            destination.tls.client_context()
        except TlsSetupError as exc:
            raise TlsSetupError(f"destination {destination}: {exc}") from exc


def open_store(settings: Settings, *, recover: bool = True) -> JobStore:
    """The job store, with interrupted work taken back (unless not ``recover``).

    SQLite and PostgreSQL alike: taken back are the claims of processes that
    stopped (a pid of this host that no longer runs), those this ``worker_id``
    left in an earlier life, and those whose heartbeat is older than
    ``stale_claim_s``. The live claims of another process on the same store
    (``serve`` and its worker processes, a ``mammoseg worker`` beside it) stay
    theirs: each claim names its process (service/store/owners.py). A worker
    process of ``serve`` recovers nothing: its parent did, and takes back the
    claims of a child that dies.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    quarantine = settings.quarantine_after
    database = Database(settings.database_url) if settings.database_url else settings.database_path
    store = JobStore(database, quarantine_after=quarantine, webhook_urls=settings.webhook_urls)
    if not recover:
        return store
    me = this_process(settings.worker_id)
    recovered = store.queue.recover(
        owner=str(me), stale_after_s=settings.stale_claim_s, stopped=left_by(me)
    )
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
    settings: Settings, store: JobStore, audit: AuditTrail | None = None
) -> tuple[Segmenter, list[threading.Thread], threading.Event]:
    """Load the model (contract checked) and start the workers and the sender.

    They claim jobs as this process (``NAME#PID@HOST``, service/store/owners.py).
    """
    check_destinations(settings.destination_list)
    segmenter = load_segmenter(settings.model_path, threads=settings.inference_threads)
    faults.arm(settings.test_fault_injection)
    owner = str(this_process(settings.worker_id))
    stop_event = threading.Event()
    heartbeat = Heartbeat(store, owner, heartbeat_interval(settings.stale_claim_s), stop_event)
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
        worker_id=owner,
        stale_claim_s=settings.stale_claim_s,
        heartbeat=heartbeat,
        audit=audit,
        commit=CommitPolicy(
            timeout_s=settings.commit_timeout_s,
            attempts=settings.commit_attempts,
            wait_s=settings.commit_wait_s,
        ),
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


def scp_config(settings: Settings) -> ScpConfig:
    """The SCP's configuration from the settings (limits, timeouts, TLS)."""
    return ScpConfig(
        ae_title=settings.ae_title,
        host=settings.dicom_host,
        port=settings.dicom_port,
        spool_dir=settings.spool_dir,
        allowed_callers=settings.allowed_callers,
        max_associations=settings.max_associations,
        max_associations_per_peer=settings.max_associations_per_peer or None,
        min_free_bytes=settings.min_free_mb << 20,
        max_dataset_bytes=settings.max_dataset_mb << 20,
        network_timeout_s=settings.dicom_network_timeout_s,
        acse_timeout_s=settings.dicom_acse_timeout_s,
        dimse_timeout_s=settings.dicom_dimse_timeout_s,
        request_timeout_s=settings.dicom_request_timeout_s,
        tls_handshake_timeout_s=settings.dicom_tls_handshake_timeout_s,
        tls=tls_config(settings),
        writer_name=settings.worker_id,
    )


def start_node(settings: Settings) -> Node:
    """Start everything except the HTTP server; raises on a bad model or a busy port."""
    store = open_store(settings)
    removed = remove_partial_files(settings.spool_dir, owner=settings.worker_id)
    log.info("%d partial files from an interrupted receive removed", removed)
    # Before the worker processes: its hash key (audit_hashed_patient_ids) is made once, here.
    audit = AuditTrail.from_settings(settings).start()
    processes: WorkerProcesses | None = None
    if settings.worker_processes:
        segmenter, processes = start_worker_processes(settings, store)
        workers: list[threading.Thread] = []
        stop_event = threading.Event()
    else:
        segmenter, workers, stop_event = start_workers(settings, store, audit)
    sweeper = RetentionSweeper(store, policy_from(settings), stop_event, audit)
    sweeper.start()
    workers.append(sweeper)
    # The webhook sender runs here, in serve itself, once (never in a worker process).
    webhooks = start_webhooks(settings, store, stop_event)
    if webhooks is not None:
        workers.append(webhooks)
    if settings.exam_stable_s > 0:
        exams = ExamWriter(
            store,
            exam_options(settings, segmenter),
            stop_event,
            exam_interval(settings.exam_stable_s, settings.poll_interval_s),
        )
        exams.start()
        workers.append(exams)
    committing = any(d.commit for d in settings.destination_list)
    scp = StorageSCP(
        scp_config(settings),
        job_sink(store, audit),
        association_audit(store, audit),
        commitments=commitment_sink(store) if committing else None,
    )
    try:
        scp.start()
    except OSError:
        stop_event.set()
        if processes is not None:
            processes.stop(timeout_s=5.0)
        audit.close()
        raise
    audit.application_started()
    return Node(settings, store, segmenter, scp, workers, stop_event, processes, audit)


def start_worker_processes(
    settings: Settings, store: JobStore
) -> tuple[Segmenter, WorkerProcesses]:
    """The supervised worker processes, and the model for this process too.

    ``serve`` keeps a model of its own: ``POST /api/v1/segment`` and the
    upload page segment in this process, and ``/api/v1/model`` and ``/readyz``
    report it. Loading it here first also checks the contract (and the TLS
    destinations) before any child starts, so a bad model stops start-up with
    exit status 3 instead of a child restarting in a loop. The session is then
    dropped and opened again on the first upload (``Segmenter.unload``): the
    images of the DICOM door never need it in this process.
    """
    check_destinations(settings.destination_list)
    segmenter = load_segmenter(settings.model_path, threads=settings.inference_threads)
    # Checked; its session is opened again only when an upload asks for it.
    segmenter.unload()
    processes = WorkerProcesses(
        settings, store, run_worker_process, count=settings.worker_processes
    )
    processes.start()
    return segmenter, processes


def run_worker_process(settings: Settings, ready: Any, parent_pid: int) -> None:
    """One worker process of ``serve`` (spawned by service/supervisor.py): workers only.

    The workers, the sender and the heartbeat, as ``mammoseg worker`` runs
    them, but nothing recovered at start (the parent did, and takes back this
    process's claims if it dies). ``ready`` is set once the workers run.
    SIGTERM, from the parent: the current job is finished, unfinished claims
    are handed back, exit 0. SIGINT is ignored (a terminal's Ctrl-C reaches
    the whole process group; the parent passes it on as SIGTERM). When the
    parent is gone (killed), the process stops too.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_heap_arenas()
    configure_logging(settings.log_level, settings.log_format)
    store = open_store(settings, recover=False)
    audit = AuditTrail.from_settings(settings).start()  # its results sent
    _, workers, stop_event = start_workers(settings, store, audit)

    def request_exit(signum: int, frame: object) -> None:
        stop_event.set()

    signal.signal(signal.SIGTERM, request_exit)
    ready.set()
    log.info(
        "worker process %d running %d workers as %s",
        os.getpid(),
        settings.workers,
        this_process(settings.worker_id),
    )
    while not stop_event.wait(1.0):
        if os.getppid() != parent_pid:
            log.error("serve (pid %d) is gone: this worker process stops", parent_pid)
            stop_event.set()
    for worker in workers:
        worker.join(timeout=30.0)
    # Whatever is still ours (a job cut short, results not sent yet) goes back, not as a
    # crash: also when serve is gone and no one else would hand it back soon.
    try:
        handed = store.queue.recover(owner=str(this_process(settings.worker_id)), crashed=False)
    except (StoreError, DatabaseError, OSError):
        log.exception("could not hand back the unfinished jobs")
    else:
        if any(handed.values()):
            log.warning("stopped with jobs unfinished: handed back %s", handed)
    audit.close()
    store.close()
    log.info("worker process %d stopped", os.getpid())


def run_worker(settings: Settings) -> None:
    """Workers only (no SCP, no HTTP), for scale-out on a shared store and spool."""
    limit_heap_arenas()
    if not settings.database_url:
        log.warning("worker without database_url: it shares only this host's SQLite store")
    store = open_store(settings)
    audit = AuditTrail.from_settings(settings).start()
    _, workers, stop_event = start_workers(settings, store, audit)

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
    audit.close()
    log.info("worker %s stopped", settings.worker_id)


def run_node(settings: Settings) -> None:
    # The HTTP side is imported here, not at the top: a worker process (spawned, so it
    # imports this module) never serves HTTP and does not carry FastAPI, Starlette,
    # Jinja2 and uvicorn (about 45 MB of RSS; docs/performance.md).
    from service.app import NodeState, create_app
    from service.http_edge import NodeHttpServer, server_config

    limit_heap_arenas()
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
            workers=node,
            audit=node.audit,
        )
    )
    # Every HTTP limit (head, keep-alive, head size, concurrency, backlog) from the settings.
    server = NodeHttpServer(server_config(app, settings))
    if node.processes is not None:
        server.on_exit = node.processes.begin_stop
    log.info("HTTP on http://%s:%d", settings.http_host, settings.http_port)
    try:
        server.run()
    finally:
        node.stop()
