"""The storage SCP: C-ECHO and C-STORE, durable before it says yes (PS3.4 B, PS3.7 9.1.1).

Handlers stay thin: :func:`handle_store` checks what it must, writes the
instance to the spool (temp file, fsync, rename) and hands it to the sink,
which commits a job. Only then does the peer get ``Status.SUCCESS``. Any
failure in between answers ``Status.OUT_OF_RESOURCES`` so the sender retries.
Nothing heavy runs on the association thread.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import (
    BreastTomosynthesisImageStorage,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from dicom_node.commitment import (
    COMMITMENT_SYNTAXES,
    CommitmentError,
    CommitmentReport,
    read_event_report,
)
from dicom_node.limits import (
    DEFAULT_MAX_INFLATED_BYTES,
    HEADER_ALLOWANCE_BYTES,
    DatasetTooLarge,
    read_dataset,
)
from dicom_node.receive import drop_partial, keep_received, received_path, stream_to
from dicom_node.spool import instance_path, write_atomically
from dicom_node.status import Status
from dicom_node.tls import (
    DEFAULT_TLS_CIPHERS,
    caller_certificate_problem,
    fingerprint,
    normalise_caller_names,
    peer_names,
    tls_context,
)
from dicom_node.transport import (
    REJECT_CALLING_AE,
    ConnectionLimits,
    GuardedAssociationServer,
    reject_association,
)
from dicom_node.uids import InvalidUIDError, checked_uid

log = logging.getLogger(__name__)

#: The image storage SOP classes the node accepts (PS3.4 B.5).
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    BreastTomosynthesisImageStorage,
)

#: The largest PDU we accept (PS3.8 9.3.1, Maximum Length Sub-Item).
MAX_PDU_BYTES = 1 << 20

#: Every transfer syntax the worker can decode (PS3.5 A.4, 8.2).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLosslessSV1,
    JPEGLossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)


@dataclass(frozen=True)
class ReceivedInstance:
    """One instance on disk in the spool, as the sink sees it (no patient data)."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    calling_ae_title: str
    peer_address: str
    association_id: str


class InstanceSink(Protocol):
    """Commits a received instance (for the service: inserts its job).

    Raising tells the SCP the instance is not safe; the peer gets 0xA700.
    """

    def __call__(self, instance: ReceivedInstance) -> None: ...


class CommitmentSink(Protocol):
    """Takes a storage commitment report (PS3.4 J.3.3); False: no request has its UID."""

    def __call__(self, report: CommitmentReport) -> bool: ...


@dataclass(frozen=True, kw_only=True)
class ScpConfig:
    ae_title: str
    host: str
    port: int
    spool_dir: Path
    allowed_callers: Sequence[str] = ()
    require_called_ae_title: bool = True
    max_associations: int = 10
    min_free_bytes: int = 0
    #: Timeouts (docs/security.md): a silent association is aborted after network_timeout_s;
    #: the A-ASSOCIATE-RQ must start within request_timeout_s of the connection (after
    #: TLS) and be complete within acse_timeout_s, which also bounds the release.
    network_timeout_s: float = 60.0
    acse_timeout_s: float = 10.0
    dimse_timeout_s: float = 60.0
    request_timeout_s: float = 5.0
    tls_handshake_timeout_s: float = 5.0
    #: Associations at once from one address; None: no cap beyond max_associations. A
    #: node shared by several senders sets it (e.g. max_associations - 2) so that one
    #: peer, hostile or broken, always leaves some for the others; a node fed by one PACS
    #: address must not (the PACS would lose associations it is configured to use).
    max_associations_per_peer: int | None = None
    #: Connections accepted but not yet associated, in all and per address.
    max_pending_connections: int = 64
    max_pending_per_peer: int = 32
    max_dataset_bytes: int = 0
    #: A deflated dataset (PS3.5 A.5) inflating past this is refused with 0xA700.
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES
    tls: TlsConfig | None = None
    writer_name: str = ""  # names this process's temp files in a shared spool


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """DICOM TLS (PS3.15 B.1): the server certificate, optionally client certificates.

    ``caller_names`` ties calling AE titles to client certificates: an association
    whose calling AE title is a key must come with a certificate (verified against
    ``ca_file``) whose subject CN or a DNS subjectAltName is one of its names, or it
    is rejected (calling AE title not recognised). Other AE titles are not bound.
    """

    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False
    ciphers: str = DEFAULT_TLS_CIPHERS
    caller_names: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.caller_names and self.ca_file is None:
            raise ValueError("caller_names need ca_file: client certificates must be verified")
        object.__setattr__(self, "caller_names", normalise_caller_names(self.caller_names))

    def server_context(self) -> ssl.SSLContext:
        """The profile's server context (dicom_node.tls); raises ``TlsSetupError`` on bad files."""
        return tls_context(
            server=True,
            cert_file=self.cert_file,
            key_file=self.key_file,
            ca_file=self.ca_file,
            ciphers=self.ciphers,
            require_peer_cert=self.require_client_cert,
        )


@dataclass
class AssociationEvents:
    """Optional callbacks for the association audit (calling AE, address, outcome)."""

    on_accepted: Callable[[str, str, str], None] | None = None
    on_rejected: Callable[[str, str, str], None] | None = None
    on_closed: Callable[[str, int, str], None] | None = None
    counts: dict[str, int] = field(default_factory=dict)


def _assoc_id(assoc: object) -> str:
    return f"assoc-{id(assoc):x}"


def _fields(event: str, association_id: str, sop_instance_uid: str | None = None) -> dict[str, str]:
    """Structured log fields (the JSON log lines carry them): identifiers, never patient data."""
    fields = {"event": event, "association_id": association_id}
    if sop_instance_uid is not None:
        fields["sop_instance_uid"] = sop_instance_uid
    return fields


class StorageSCP:
    """Owns the pynetdicom AE and its server; start() binds, stop() shuts down."""

    def __init__(
        self,
        config: ScpConfig,
        sink: InstanceSink,
        events: AssociationEvents | None = None,
        *,
        commitments: CommitmentSink | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.events = events or AssociationEvents()
        #: Storage commitment reports on associations a destination opens (PS3.4 J.3.3);
        #: None: the SOP class is not offered.
        self.commitments = commitments
        self._server: GuardedAssociationServer | None = None
        self._lock = threading.Lock()
        self._instances: dict[str, int] = {}
        self._bytes: dict[str, int] = {}

    @property
    def listening(self) -> bool:
        return self._server is not None

    @property
    def guard(self) -> GuardedAssociationServer | None:
        """The running server, with what its limits refused (``counts``)."""
        return self._server

    def connection_limits(self) -> ConnectionLimits:
        cfg = self.config
        per_peer = cfg.max_associations_per_peer
        if per_peer is None:
            per_peer = cfg.max_associations
        return ConnectionLimits(
            max_pdu_length=MAX_PDU_BYTES,
            request_timeout_s=cfg.request_timeout_s,
            request_complete_timeout_s=cfg.acse_timeout_s,
            tls_handshake_timeout_s=cfg.tls_handshake_timeout_s,
            network_timeout_s=cfg.network_timeout_s,
            max_pending=cfg.max_pending_connections,
            max_pending_per_peer=cfg.max_pending_per_peer,
            max_associations_per_peer=per_peer,
        )

    def _make_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        ae.maximum_associations = cfg.max_associations
        # 1 MiB PDUs: pynetdicom's 16 KB default costs twice the CPU per image
        # (docs/performance.md), and a bounded PDU keeps the max_dataset_bytes
        # check (made as PDUs arrive) within 1 MiB of its limit.
        ae.maximum_pdu_size = MAX_PDU_BYTES
        ae.network_timeout = cfg.network_timeout_s
        ae.acse_timeout = cfg.acse_timeout_s
        ae.dimse_timeout = cfg.dimse_timeout_s
        ae.require_called_aet = cfg.require_called_ae_title
        if cfg.allowed_callers:
            ae.require_calling_aet = list(cfg.allowed_callers)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        for sop_class in STORAGE_SOP_CLASSES:
            ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
        if self.commitments is not None:
            # A destination reporting on a new association proposes itself as the
            # SCP of the SOP class (PS3.4 J.3.3, SCP/SCU role selection PS3.7 D.3.3.4).
            ae.add_supported_context(
                StorageCommitmentPushModel, COMMITMENT_SYNTAXES, scu_role=True, scp_role=True
            )
        return ae

    def start(self) -> None:
        """Bind the port and serve in background threads."""
        cfg = self.config
        cfg.spool_dir.mkdir(parents=True, exist_ok=True)
        handlers = [
            (evt.EVT_C_ECHO, self.handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_N_EVENT_REPORT, self.handle_event_report),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        if cfg.max_dataset_bytes:
            handlers.append((evt.EVT_DATA_RECV, self._count_bytes))
        if cfg.tls is not None and cfg.tls.caller_names:
            handlers.append((evt.EVT_REQUESTED, self._check_caller_certificate))
        ssl_context = cfg.tls.server_context() if cfg.tls else None
        ae = self._make_ae()
        # Incoming data sets go to the spool as they arrive (dicom_node/receive.py).
        stream_to(ae, cfg.spool_dir, writer_name=cfg.writer_name)
        server = ae.make_server(
            (cfg.host, cfg.port),
            evt_handlers=handlers,
            ssl_context=ssl_context,
            server_class=GuardedAssociationServer,
            limits=self.connection_limits(),
        )
        # What AE.start_server(block=False) does, with the guarded server class.
        ae._servers.append(server)
        threading.Thread(
            target=server.serve_forever, name=f"AcceptorServer@{cfg.port}", daemon=True
        ).start()
        self._server = server
        tls_note = " (TLS)" if ssl_context else ""
        log.info("storage SCP %s listening on %s:%d%s", cfg.ae_title, cfg.host, cfg.port, tls_note)

    def stop(self) -> None:
        """Stop accepting; running associations are aborted (the sender retries)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            log.info("storage SCP stopped")

    # -- handlers ---------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return int(Status.SUCCESS)

    def handle_event_report(self, event: evt.Event) -> tuple[int, None]:
        """A storage commitment report (PS3.4 J.3.3): recorded, and always answered.

        An unreadable report gets 0x0110 processing failure; one for a Transaction
        UID we do not know is acknowledged and logged (UIDs only): the peer has
        nothing to retry. Its size was bounded as it arrived (``_count_bytes``).
        """
        assoc_id = _assoc_id(event.assoc)
        with self._lock:
            self._bytes[assoc_id] = 0
        calling = str(event.assoc.requestor.ae_title).strip()
        if self.commitments is None:
            return int(Status.PROCESSING_FAILURE), None
        try:
            report = read_event_report(
                event.event_type, event.event_information, calling_ae_title=calling
            )
        except CommitmentError as exc:
            log.warning(
                "unreadable storage commitment report on %s: %s",
                assoc_id,
                exc,
                extra=_fields("commitment_unreadable", assoc_id),
            )
            return int(Status.PROCESSING_FAILURE), None
        try:
            known = self.commitments(report)
        except Exception:  # boundary: a store hiccup becomes a status the peer retries on
            log.exception(
                "storage commitment report on %s not recorded",
                assoc_id,
                extra=_fields("commitment_not_recorded", assoc_id),
            )
            return int(Status.PROCESSING_FAILURE), None
        fields = {
            **_fields("commitment_report", assoc_id),
            "transaction_uid": report.transaction_uid,
        }
        if known:
            log.info(
                "storage commitment report from %s on %s: transaction %s, %d committed, %d failed",
                calling,
                assoc_id,
                report.transaction_uid,
                len(report.committed),
                len(report.failed),
                extra=fields,
            )
        else:
            log.warning(
                "storage commitment report from %s on %s for unknown transaction %s: ignored",
                calling,
                assoc_id,
                report.transaction_uid,
                extra={**fields, "event": "commitment_unknown"},
            )
        return int(Status.SUCCESS), None

    def handle_store(self, event: evt.Event) -> int | Dataset:
        assoc = event.assoc
        assoc_id = _assoc_id(assoc)
        with self._lock:
            self._bytes[assoc_id] = 0  # the next message starts counting afresh
        try:
            result = self._store(event, assoc_id)
            if isinstance(result, tuple):  # a refusal with its reason (PS3.7 C.4.2.1.8)
                status, comment = result
                response = Dataset()
                response.Status = int(status)
                response.ErrorComment = comment[:64]
                return response
            return int(result)
        except Exception:  # boundary: any failure becomes a DIMSE status, never a crash
            log.exception(
                "C-STORE failed on %s",
                assoc_id,
                extra={"event": "store_failed", "association_id": assoc_id},
            )
            return int(Status.OUT_OF_RESOURCES)

    def _store(self, event: evt.Event, assoc_id: str) -> Status | tuple[Status, str]:
        req = cast(C_STORE, event.request)
        try:
            sop_instance_uid = checked_uid(req.AffectedSOPInstanceUID, what="SOP Instance UID")
        except InvalidUIDError as exc:
            log.warning(
                "refused instance on %s: %s",
                assoc_id,
                exc,
                extra={"event": "instance_refused", "association_id": assoc_id},
            )
            return Status.CANNOT_UNDERSTAND
        received: bytes | Path | None = received_path(event)  # streamed to the spool
        if received is None:
            try:
                received = event.encoded_dataset(include_meta=True)
            except Exception as exc:  # noqa: BLE001 - whatever pydicom raises, the peer sent it
                why = f"cannot parse dataset ({type(exc).__name__})"
                refused = _refused(Status.CANNOT_UNDERSTAND, why, assoc_id, sop_instance_uid, None)
                return refused.status
        outcome = self.store_encoded(
            received,
            calling_ae_title=str(event.assoc.requestor.ae_title),
            peer_address=str(event.assoc.requestor.address),
            association_id=assoc_id,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=str(req.AffectedSOPClassUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
        )
        if outcome.status is Status.SUCCESS:
            with self._lock:
                self._instances[assoc_id] = self._instances.get(assoc_id, 0) + 1
        return (outcome.status, outcome.comment) if outcome.comment else outcome.status

    def store_encoded(
        self,
        encoded: bytes | Path,
        *,
        calling_ae_title: str,
        peer_address: str,
        association_id: str,
        sop_instance_uid: str | None = None,
        sop_class_uid: str | None = None,
        transfer_syntax_uid: str | None = None,
        study_instance_uid: str | None = None,
    ) -> StoreOutcome:
        """One encoded instance (PS3.10, file meta included) through the durable path.

        ``encoded``: the bytes, or a file in the spool folder that holds them (a
        C-STORE streamed there as it arrived, dicom_node/receive.py), which becomes the
        spool file by a rename when the instance is stored.

        C-STORE and STOW-RS (service/api/dicomweb.py) both come here: read bounded
        (deflate capped), UIDs checked, free disk checked, spool file fsynced, the
        sink's job committed; only a SUCCESS outcome means the instance is safe.
        The UIDs given are those the request named (C-STORE); None (STOW-RS): the
        dataset's own, checked as the SCP's presentation contexts would. A
        ``study_instance_uid`` is the one the STOW-RS target names.
        """
        return store_encoded(
            self.config,
            self.sink,
            encoded,
            calling_ae_title=calling_ae_title,
            peer_address=peer_address,
            association_id=association_id,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            study_instance_uid=study_instance_uid,
        )

    def _check_caller_certificate(self, event: evt.Event) -> None:
        """Reject a calling AE title whose client certificate is not the one it is tied to.

        Runs on the A-ASSOCIATE-RQ, before pynetdicom's own AE title checks; the
        rejection is A-ASSOCIATE-RJ rejected-permanent, service user, calling AE title
        not recognised (PS3.8 9.3.4), as for a caller not in ``allowed_callers``.
        """
        tls = self.config.tls
        assoc = event.assoc
        if tls is None or assoc.is_rejected or assoc.is_aborted:
            return
        calling = str(assoc.requestor.primitive.calling_ae_title).strip()
        sock = getattr(assoc.dul.socket, "socket", None)
        certificate = der = None
        if isinstance(sock, ssl.SSLSocket):
            certificate = sock.getpeercert()
            der = sock.getpeercert(binary_form=True)
        problem = caller_certificate_problem(calling, peer_names(certificate), tls.caller_names)
        if problem is None:
            return
        assoc_id = _assoc_id(assoc)
        # AE title, address and a certificate digest: no names from the certificate.
        log.warning(
            "association %s from %s at %s rejected: %s (%s)",
            assoc_id,
            calling,
            assoc.requestor.address,
            problem,
            fingerprint(der),
            extra=_fields("association_rejected_certificate", assoc_id),
        )
        reject_association(assoc, REJECT_CALLING_AE)

    def _count_bytes(self, event: evt.Event) -> None:
        """Abort an association whose current message outgrows ``max_dataset_bytes``.

        The data set goes to a file in the spool as it arrives (dicom_node/receive.py)
        and the C-STORE handler runs only once it is complete, so the limit is enforced
        while the bytes arrive: disk use (and pynetdicom's memory, for an AE that does
        not stream) stays bounded whatever a peer sends.
        """
        assoc_id = _assoc_id(event.assoc)
        with self._lock:
            received = self._bytes.get(assoc_id, 0) + len(event.data)
            self._bytes[assoc_id] = received
        if received > self.config.max_dataset_bytes:
            log.warning(
                "association %s aborted: dataset larger than %d bytes",
                assoc_id,
                self.config.max_dataset_bytes,
                extra=_fields("association_aborted", assoc_id),
            )
            event.assoc.abort()

    def _on_accepted(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        log.info(
            "association %s accepted from %s at %s",
            _assoc_id(event.assoc),
            req.ae_title,
            req.address,
            extra=_fields("association_accepted", _assoc_id(event.assoc)),
        )
        if self.events.on_accepted:
            self.events.on_accepted(_assoc_id(event.assoc), str(req.ae_title), str(req.address))

    def _on_rejected(self, event: evt.Event) -> None:
        req = event.assoc.requestor
        log.warning(
            "association from %s at %s rejected",
            req.ae_title,
            req.address,
            extra=_fields("association_rejected", _assoc_id(event.assoc)),
        )
        if self.events.on_rejected:
            self.events.on_rejected(_assoc_id(event.assoc), str(req.ae_title), str(req.address))

    def _on_closed(self, event: evt.Event) -> None:
        assoc_id = _assoc_id(event.assoc)
        outcome = "released" if event.event is evt.EVT_RELEASED else "aborted"
        if outcome == "aborted" and drop_partial(event.assoc):
            log.info(
                "association %s: the data set it was sending was dropped",
                assoc_id,
                extra=_fields("partial_dataset_dropped", assoc_id),
            )
        with self._lock:
            count = self._instances.pop(assoc_id, 0)
            self._bytes.pop(assoc_id, None)
        log.info(
            "association %s %s after %d instances",
            assoc_id,
            outcome,
            count,
            extra=_fields(f"association_{outcome}", assoc_id),
        )
        if self.events.on_closed:
            self.events.on_closed(assoc_id, count, outcome)


@dataclass(frozen=True)
class StoreOutcome:
    """What became of one instance: its status (and reason) and the UIDs that were read."""

    status: Status
    comment: str = ""
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


def _refused(
    status: Status, why: str, assoc_id: str, uid: str | None, classes: str | None, comment: str = ""
) -> StoreOutcome:
    log.warning(
        "refused %s on %s: %s",
        uid or "instance",
        assoc_id,
        why,
        extra=_fields("instance_refused", assoc_id, uid),
    )
    return StoreOutcome(status, comment, classes, uid)


def store_encoded(
    cfg: ScpConfig,
    sink: InstanceSink,
    encoded: bytes | Path,
    *,
    calling_ae_title: str,
    peer_address: str,
    association_id: str,
    sop_instance_uid: str | None = None,
    sop_class_uid: str | None = None,
    transfer_syntax_uid: str | None = None,
    study_instance_uid: str | None = None,
) -> StoreOutcome:
    """:meth:`StorageSCP.store_encoded` for a configuration and a sink (no server needed)."""
    assoc_id = association_id
    uid, classes = sop_instance_uid, sop_class_uid
    size = encoded.stat().st_size if isinstance(encoded, Path) else len(encoded)
    if cfg.max_dataset_bytes and size > cfg.max_dataset_bytes:
        # C-STORE: the last PDU may complete a message before the abort lands.
        why = f"dataset larger than {cfg.max_dataset_bytes} bytes"
        return _refused(Status.OUT_OF_RESOURCES, why, assoc_id, uid, classes)
    try:
        # Inflated under a cap, the header kept and the rest only counted.
        ds = read_dataset(
            encoded,
            stop_before_pixels=True,
            max_inflated_bytes=cfg.max_inflated_bytes,
            keep_bytes=HEADER_ALLOWANCE_BYTES,
        )
        # pydicom parses lazily: read what we need here, inside the guard.
        dataset_class = ds.get("SOPClassUID")
        dataset_uid = ds.get("SOPInstanceUID")
        study_uid = str(ds.get("StudyInstanceUID", ""))
        series_uid = str(ds.get("SeriesInstanceUID", ""))
        meta = getattr(ds, "file_meta", None)
        dataset_syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    except DatasetTooLarge as exc:
        comment = "inflated dataset exceeds the node's limit"
        return _refused(Status.OUT_OF_RESOURCES, str(exc), assoc_id, uid, classes, comment)
    except Exception as exc:  # noqa: BLE001 - whatever the parser raises, the peer sent it
        why = f"cannot parse dataset ({type(exc).__name__})"
        return _refused(Status.CANNOT_UNDERSTAND, why, assoc_id, uid, classes)
    if uid is None:  # STOW-RS: the dataset names itself; check it as a request would
        try:
            uid = checked_uid(dataset_uid, what="SOP Instance UID")
        except InvalidUIDError as exc:
            return _refused(Status.CANNOT_UNDERSTAND, str(exc), assoc_id, None, None)
        classes = str(dataset_class or "")
        if classes not in STORAGE_SOP_CLASSES:
            why = "SOP class not accepted"
            return _refused(Status.SOP_CLASS_NOT_SUPPORTED, why, assoc_id, uid, classes or None)
        if dataset_syntax not in TRANSFER_SYNTAXES:
            why = "transfer syntax not accepted"
            return _refused(Status.TRANSFER_SYNTAX_NOT_SUPPORTED, why, assoc_id, uid, classes)
        transfer_syntax_uid = dataset_syntax
    if dataset_class != classes or dataset_uid != uid:
        why = "dataset UIDs differ from the request"
        return _refused(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, why, assoc_id, uid, classes)
    if study_instance_uid is not None and study_uid != study_instance_uid:
        why = "Study Instance UID differs from the target study"
        return _refused(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, why, assoc_id, uid, classes)
    if cfg.min_free_bytes and shutil.disk_usage(cfg.spool_dir).free < cfg.min_free_bytes:
        log.error(
            "refused %s on %s: free disk below the watermark",
            uid,
            assoc_id,
            extra=_fields("instance_refused", assoc_id, uid),
        )
        return StoreOutcome(Status.OUT_OF_RESOURCES, "", classes, uid)
    path = instance_path(cfg.spool_dir, uid)
    if isinstance(encoded, Path):
        keep_received(encoded, path)
    else:
        data = encoded
        write_atomically(path, lambda fh: fh.write(data), owner=cfg.writer_name)
    sink(
        ReceivedInstance(
            path=path,
            sop_instance_uid=uid,
            sop_class_uid=str(classes),
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            transfer_syntax_uid=str(transfer_syntax_uid),
            calling_ae_title=calling_ae_title,
            peer_address=peer_address,
            association_id=assoc_id,
        )
    )
    log.info("stored %s on %s", uid, assoc_id, extra=_fields("instance_stored", assoc_id, uid))
    return StoreOutcome(Status.SUCCESS, "", classes, uid)
