"""The DICOM audit trail (PS3.15 A.5): who sent, received, changed or deleted what, and when.

Each event is one audit message in the DICOM audit message schema (PS3.15
A.5.1, derived from RFC 3881), built with ``xml.etree``:

============================ =================================== ======= ===================
event                        EventID / EventTypeCode             action  outcome
============================ =================================== ======= ===================
node started, stopped        110100 Application Activity /       E       0
                             110120 Application Start, 110121
                             Application Stop
association rejected         110113 Security Alert /             E       4
                             110126 Node Authentication
instance received            110104 DICOM Instances Transferred  C (R if 0
                                                                 held)
results sent                 110104 DICOM Instances Transferred  R       0; 4 failed, retried
admin action (retry,         110113 Security Alert /             E       0; 4 refused
reprocess, C-ECHO; an admin  110132 Use of Restricted Function
route refused)
sign-in with a token,        110114 User Authentication /        E       0; 4 wrong token
sign-out                     110122 Login, 110123 Logout
retention deleted files      110103 DICOM Instances Accessed     D       0
============================ =================================== ======= ===================

Where they go: ``<audit_dir>/YYYY-MM-DD.log`` (the UTC day of the event), one
message per line, appended and fsynced per batch, and optionally a syslog
server: RFC 5424 messages over TLS with octet counting (RFC 5425), as PS3.15
A.6 asks. Messages carry no patient name, ID or birth date; with
``audit_hashed_patient_ids`` a keyed hash (HMAC-SHA-256, per-install secret)
of the Patient ID is added as a Person participant object.

Callers only put an event on a bounded queue: they never wait for a disk or a
network. A writer thread builds, writes and fsyncs; a sender thread ships to
syslog. What fails there is logged and counted (:meth:`AuditTrail.counts`,
``/metrics``), never raised to the DICOM or HTTP path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import secrets
import socket
import ssl
import threading
import time
import xml.etree.ElementTree as ET  # noqa: S405 - messages are built here, never parsed
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, cast

from pydicom.uid import (
    Comprehensive3DSRStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_node.limits import HEADER_ALLOWANCE_BYTES, read_dataset
from service import __version__

if TYPE_CHECKING:
    from dicom_node.scu import Destination
    from service.settings import Settings
    from service.store import Job

log = logging.getLogger(__name__)

#: Events waiting for the writer; beyond this they are dropped (and counted), never waited for.
QUEUE_SIZE = 10_000
#: Messages written between two fsyncs at most.
BATCH = 256
#: Longest text kept from a peer or an error (AE titles, addresses, descriptions).
MAX_TEXT = 512
FILE_SUFFIX = ".log"
HASH_KEY_FILE = "audit-hash.key"
APP_NAME = "mammoseg"
#: RFC 5424 MSGID of DICOM audit messages (PS3.15 A.6).
SYSLOG_MSGID = "DICOM+RFC3881"
#: authpriv: security/authorization messages (RFC 5424 6.2.1).
SYSLOG_FACILITY = 10
SYSLOG_TIMEOUT_S = 10.0
SYSLOG_CLOSE_S = 3.0
BOM = b"\xef\xbb\xbf"


class AuditSetupError(OSError):
    """An audit setting that cannot be used (a CA file, a certificate): start-up stops."""


@dataclass(frozen=True)
class Code:
    """A coded value (csd-code, codeSystemName, originalText: the code meaning)."""

    code: str
    meaning: str
    system: str = "DCM"


EV_APPLICATION_ACTIVITY = Code("110100", "Application Activity")
EV_INSTANCES_ACCESSED = Code("110103", "DICOM Instances Accessed")
EV_INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
EV_SECURITY_ALERT = Code("110113", "Security Alert")
EV_USER_AUTHENTICATION = Code("110114", "User Authentication")
TYPE_APPLICATION_START = Code("110120", "Application Start")
TYPE_APPLICATION_STOP = Code("110121", "Application Stop")
TYPE_LOGIN = Code("110122", "Login")
TYPE_LOGOUT = Code("110123", "Logout")
TYPE_NODE_AUTHENTICATION = Code("110126", "Node Authentication")
TYPE_RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
ROLE_APPLICATION = Code("110150", "Application")
ROLE_DESTINATION = Code("110152", "Destination Role ID")
ROLE_SOURCE = Code("110153", "Source Role ID")
ID_STUDY = Code("110180", "Study Instance UID")
ID_NODE = Code("110182", "Node ID")
ID_PATIENT = Code("2", "Patient Number", "RFC-3881")
ID_URI = Code("12", "URI", "RFC-3881")

#: ParticipantObjectTypeCode and ParticipantObjectTypeCodeRole values (PS3.15 A.5.1.2.2).
PERSON, SYSTEM_OBJECT = "1", "2"
ROLE_PATIENT, ROLE_REPORT = "1", "3"
#: ParticipantObjectDataLifeCycle: permanent erasure (PS3.15 A.5.1.2.3).
LIFE_CYCLE_ERASURE = "15"
#: Audit Source Type Code 4: application server process (PS3.15 A.5.1.2.1).
SOURCE_TYPE_APPLICATION_SERVER = "4"

#: The SOP class of each result kind the pipeline writes (service/pipeline.py ``uids``).
RESULT_SOP_CLASSES = {
    "seg": str(SegmentationStorage),
    "sc": str(SecondaryCaptureImageStorage),
    "sr": str(Comprehensive3DSRStorage),
}


class Outcome(IntEnum):
    """EventOutcomeIndicator."""

    SUCCESS = 0
    MINOR_FAILURE = 4  # action restarted (a send that will be retried, a wrong token)
    SERIOUS_FAILURE = 8  # action terminated
    MAJOR_FAILURE = 12  # action made unavailable


#: RFC 5424 severity for each outcome: notice, warning, error, critical.
SEVERITY = {
    Outcome.SUCCESS: 5,
    Outcome.MINOR_FAILURE: 4,
    Outcome.SERIOUS_FAILURE: 3,
    Outcome.MAJOR_FAILURE: 2,
}


def clean(text: object, limit: int = MAX_TEXT) -> str:
    """Printable, one line, bounded: what a peer sends never breaks the XML or the line."""
    value = "".join(ch if ch.isprintable() else " " for ch in str(text))
    return value[:limit]


def access_point_type(host: str) -> str:
    """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return "1"
    return "2"


@dataclass(frozen=True, kw_only=True)
class Participant:
    """An ActiveParticipant: a DICOM application (UserID its AE title), a host, or a role."""

    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_user_id: str | None = None
    user_name: str | None = None
    access_point: str | None = None

    @classmethod
    def application(
        cls, ae_title: str, host: str | None, *, requestor: bool, role: Code | None = None
    ) -> Participant:
        """A DICOM application: UserID and AlternativeUserID (``AETITLES=``) name its AE."""
        return cls(
            user_id=ae_title,
            alternative_user_id=f"AETITLES={ae_title}",
            requestor=requestor,
            role=role,
            access_point=host,
        )


@dataclass(frozen=True, kw_only=True)
class SopClassEntry:
    """One SOPClass of a study participant: its instances and how many."""

    uid: str
    instances: tuple[str, ...] = ()
    count: int | None = None

    @property
    def number(self) -> int:
        return len(self.instances) if self.count is None else self.count


@dataclass(frozen=True, kw_only=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: a study, a hashed patient, a node or a URI."""

    object_id: str
    id_type: Code
    name: str
    type_code: str | None = None
    role: str | None = None
    life_cycle: str | None = None
    details: tuple[tuple[str, str], ...] = ()
    sop_classes: tuple[SopClassEntry, ...] = ()


def study_object(
    study_uid: str, sop_classes: Iterable[SopClassEntry], *, life_cycle: str | None = None
) -> ParticipantObject:
    """A study (PS3.15 A.5.3: type System Object, role Report, ID the Study Instance UID)."""
    return ParticipantObject(
        object_id=study_uid,
        id_type=ID_STUDY,
        name="study",
        type_code=SYSTEM_OBJECT,
        role=ROLE_REPORT,
        life_cycle=life_cycle,
        sop_classes=tuple(sop_classes),
    )


def patient_object(hashed_id: str) -> ParticipantObject:
    """The patient, by a keyed hash of the Patient ID only (never the ID, name or birth date)."""
    return ParticipantObject(
        object_id=hashed_id,
        id_type=ID_PATIENT,
        name="HMAC-SHA-256 of the Patient ID",
        type_code=PERSON,
        role=ROLE_PATIENT,
    )


@dataclass(frozen=True, kw_only=True)
class AuditEvent:
    """What happened; :func:`to_xml` makes the message."""

    event_id: Code
    action: str  # C, R, U, D, E
    outcome: Outcome
    when: float  # epoch seconds
    participants: tuple[Participant, ...]
    objects: tuple[ParticipantObject, ...] = ()
    type_codes: tuple[Code, ...] = ()
    description: str | None = None

    @property
    def day(self) -> str:
        """The UTC day of the event: its file's name."""
        return datetime.fromtimestamp(self.when, UTC).strftime("%Y-%m-%d")


@dataclass(frozen=True, kw_only=True)
class AuditSource:
    """AuditSourceIdentification, and this node as a participant."""

    source_id: str  # names the process that reports (worker_id: the host name by default)
    ae_title: str
    host: str  # one address for every message (PS3.15 A.5.2.4)
    site_id: str | None = None

    def node(self, *, requestor: bool, role: Code | None = None) -> Participant:
        return Participant.application(self.ae_title, self.host, requestor=requestor, role=role)


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {
            "csd-code": code.code,
            "codeSystemName": code.system,
            "displayName": code.meaning,
            "originalText": code.meaning,
        },
    )


def _set(element: ET.Element, name: str, value: str | None) -> None:
    if value is not None:
        element.set(name, clean(value))


def to_xml(event: AuditEvent, source: AuditSource) -> ET.Element:
    """The AuditMessage, elements in the order of the PS3.15 A.5.1 schema."""
    message = ET.Element("AuditMessage")
    ident = ET.SubElement(
        message,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            "EventDateTime": datetime.fromtimestamp(event.when, UTC).isoformat(
                timespec="microseconds"
            ),
            "EventOutcomeIndicator": str(int(event.outcome)),
        },
    )
    _coded(ident, "EventID", event.event_id)
    for code in event.type_codes:
        _coded(ident, "EventTypeCode", code)
    if event.description:
        ET.SubElement(ident, "EventOutcomeDescription").text = clean(event.description)
    for who in event.participants:
        active = ET.SubElement(message, "ActiveParticipant")
        _set(active, "UserID", who.user_id)
        _set(active, "AlternativeUserID", who.alternative_user_id)
        _set(active, "UserName", who.user_name)
        active.set("UserIsRequestor", "true" if who.requestor else "false")
        if who.access_point:
            _set(active, "NetworkAccessPointID", who.access_point)
            active.set("NetworkAccessPointTypeCode", access_point_type(who.access_point))
        if who.role is not None:
            _coded(active, "RoleIDCode", who.role)
    audit_source = ET.SubElement(message, "AuditSourceIdentification")
    _set(audit_source, "AuditEnterpriseSiteID", source.site_id)
    _set(audit_source, "AuditSourceID", source.source_id)
    ET.SubElement(audit_source, "AuditSourceTypeCode", {"csd-code": SOURCE_TYPE_APPLICATION_SERVER})
    for thing in event.objects:
        obj = ET.SubElement(message, "ParticipantObjectIdentification")
        _set(obj, "ParticipantObjectID", thing.object_id)
        _set(obj, "ParticipantObjectTypeCode", thing.type_code)
        _set(obj, "ParticipantObjectTypeCodeRole", thing.role)
        _set(obj, "ParticipantObjectDataLifeCycle", thing.life_cycle)
        _coded(obj, "ParticipantObjectIDTypeCode", thing.id_type)
        ET.SubElement(obj, "ParticipantObjectName").text = clean(thing.name)
        for kind, text in thing.details:
            ET.SubElement(
                obj,
                "ParticipantObjectDetail",
                {"type": kind, "value": base64.b64encode(clean(text).encode()).decode()},
            )
        if thing.sop_classes:
            description = ET.SubElement(obj, "ParticipantObjectDescription")
            for entry in thing.sop_classes:
                sop = ET.SubElement(
                    description,
                    "SOPClass",
                    {"UID": clean(entry.uid, 64), "NumberOfInstances": str(entry.number)},
                )
                for uid in entry.instances:
                    ET.SubElement(sop, "Instance", {"UID": clean(uid)})
    return message


def serialize(message: ET.Element) -> bytes:
    """One line of UTF-8 XML (no declaration), newline included."""
    text = ET.tostring(message, encoding="unicode")
    return text.encode("utf-8", "replace") + b"\n"


def syslog_frame(line: bytes, event: AuditEvent, *, hostname: str, procid: int) -> bytes:
    """The message as RFC 5424 (facility authpriv, MSGID DICOM+RFC3881), octet-counted (5425)."""
    pri = SYSLOG_FACILITY * 8 + SEVERITY[event.outcome]
    stamp = datetime.fromtimestamp(event.when, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    header = f"<{pri}>1 {stamp} {hostname} {APP_NAME} {procid} {SYSLOG_MSGID} - "
    body = header.encode("ascii") + BOM + line.rstrip(b"\n")
    return f"{len(body)} ".encode("ascii") + body


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPv6]:PORT``; ValueError when it is not that."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def syslog_context(
    ca_file: Path | None, cert_file: Path | None = None, key_file: Path | None = None
) -> ssl.SSLContext:
    """TLS 1.2 or later, the server's certificate and name checked (RFC 5425 5.1, 5.2)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    try:
        if ca_file is not None:
            context.load_verify_locations(cafile=str(ca_file))
        else:
            context.load_default_certs()
        if (cert_file is None) != (key_file is None):
            raise AuditSetupError("audit_syslog_cert_file and audit_syslog_key_file go together")
        if cert_file is not None and key_file is not None:
            context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (OSError, ssl.SSLError) as exc:
        if isinstance(exc, AuditSetupError):
            raise
        raise AuditSetupError(f"audit syslog TLS files: {exc}") from exc
    return context


class _RateLimitedLog:
    """Log the first failure at once, then at most once a minute with a count."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last = -interval_s
        self._quiet = 0

    def __call__(self, message: str, *args: object, exc_info: bool = False) -> None:
        now = time.monotonic()
        if now - self._last < self.interval_s:
            self._quiet += 1
            return
        if self._quiet:
            message += f" ({self._quiet} more since the last report)"
        self._last, self._quiet = now, 0
        log.error(message, *args, exc_info=exc_info, extra={"event": "audit_failure"})


class SyslogSender(threading.Thread):
    """Ships framed messages to one syslog server over TLS; reconnects with backoff.

    Messages wait in a bounded queue while the server is away; beyond it they are
    dropped and counted (the day files keep them all).
    """

    def __init__(
        self, host: str, port: int, context: ssl.SSLContext, count: Callable[[str], None]
    ) -> None:
        super().__init__(name="audit-syslog", daemon=True)
        self.host, self.port, self.context = host, port, context
        self.count = count
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_SIZE)
        self._stopping = threading.Event()
        self._socket: ssl.SSLSocket | None = None
        self._complain = _RateLimitedLog()

    def offer(self, frame: bytes) -> None:
        try:
            self._queue.put_nowait(frame)
        except queue.Full:
            self.count("syslog_dropped")
            self._complain("audit syslog queue full: message dropped (the day file has it)")

    def _connect(self) -> ssl.SSLSocket:
        raw = socket.create_connection((self.host, self.port), timeout=SYSLOG_TIMEOUT_S)
        try:
            return self.context.wrap_socket(raw, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise

    def _send(self, frame: bytes) -> bool:
        backoff = 1.0
        while True:
            try:
                if self._socket is None:
                    self._socket = self._connect()
                self._socket.sendall(frame)
                self.count("syslog_sent")
                return True
            except (OSError, ssl.SSLError) as exc:
                self.count("syslog_errors")
                self._complain("audit syslog %s:%d: %s", self.host, self.port, exc)
                self._close_socket()
                if self._stopping.wait(backoff):
                    return False
                backoff = min(60.0, backoff * 2)

    def _close_socket(self, *, orderly: bool = False) -> None:
        """Drop the connection; ``orderly``: TLS close_notify first, so that what was
        sent is read by the server (a close with unread data, such as TLS 1.3 session
        tickets, would reset the connection and lose the last messages)."""
        sock, self._socket = self._socket, None
        if sock is None:
            return
        try:
            if orderly:
                sock.settimeout(2.0)
                sock.unwrap().close()
        except (OSError, ValueError):
            pass
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def run(self) -> None:
        while True:
            frame = self._queue.get()
            if frame is None:
                break
            if not self._send(frame):
                self.count("syslog_dropped")
        self._close_socket(orderly=True)

    def close(self, timeout_s: float) -> None:
        """Send what is queued within ``timeout_s``, then stop (the rest is dropped)."""
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self.join(timeout=timeout_s)
        self._stopping.set()
        self.join(timeout=SYSLOG_TIMEOUT_S)


class _DayFiles:
    """Appends to ``<folder>/YYYY-MM-DD.log``; one file open at a time."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._day: str | None = None
        self._fd: int | None = None
        self._dirty = False

    def write(self, day: str, data: bytes) -> None:
        if day != self._day:
            self.close()
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
            self._fd = os.open(self.folder / f"{day}{FILE_SUFFIX}", flags, 0o640)
            self._day = day
        assert self._fd is not None
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._dirty = True

    def sync(self) -> None:
        if self._fd is not None and self._dirty:
            os.fsync(self._fd)
            self._dirty = False

    def close(self) -> None:
        if self._fd is not None:
            try:
                self.sync()
            finally:
                os.close(self._fd)
                self._fd, self._day = None, None


@dataclass(frozen=True, kw_only=True)
class AuditConfig:
    folder: Path
    source: AuditSource
    secret_file: Path | None = None  # set: Patient IDs are added as keyed hashes
    syslog: tuple[str, int] | None = None
    syslog_context: ssl.SSLContext | None = None


class _Flush:
    def __init__(self) -> None:
        self.done = threading.Event()


_STOP = object()
Pending = AuditEvent | Callable[[], AuditEvent | None]


def load_secret(path: Path) -> bytes:
    """The per-install key of the patient hashes: 32 random bytes, made once (mode 0600).

    Written whole to a temporary file, then linked into place: another process
    starting at the same moment reads either no file or the whole key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process made it first: that key it is
        finally:
            temporary.unlink(missing_ok=True)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise AuditSetupError(f"{path}: cannot read the audit hash key: {exc}") from exc
    if len(key) < 16:
        raise AuditSetupError(f"{path}: the audit hash key is shorter than 16 bytes")
    return key


@dataclass
class AdminAction:
    """What :func:`audited` records of an admin request; the route may add the study."""

    study_uid: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None
    detail: str = ""

    def of_job(self, job: Job) -> None:
        """The action touched this job: its study and instance go into the message."""
        self.study_uid = job.study_instance_uid
        self.sop_class_uid = job.sop_class_uid
        self.sop_instance_uid = job.sop_instance_uid
        self.detail = f"job {job.id} is now {job.state.value}"


class AuditTrail:
    """The node's audit trail: event methods enqueue; :meth:`start` runs the writer."""

    def __init__(self, config: AuditConfig) -> None:
        self.config = config
        self.source = config.source
        self._counts = {
            "written": 0,
            "dropped": 0,
            "write_errors": 0,
            "syslog_sent": 0,
            "syslog_errors": 0,
            "syslog_dropped": 0,
        }
        self._counts_lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._files = _DayFiles(config.folder)
        self._key = load_secret(config.secret_file) if config.secret_file else None
        self._syslog: SyslogSender | None = None
        if config.syslog is not None and config.syslog_context is not None:
            host, port = config.syslog
            self._syslog = SyslogSender(host, port, config.syslog_context, self._count)
        self._hostname = clean(socket.gethostname() or "-", 255).replace(" ", "-")
        self._complain = _RateLimitedLog()

    @classmethod
    def from_settings(cls, settings: Settings) -> AuditTrail:
        """The trail the settings ask for; raises :class:`AuditSetupError` on bad TLS files."""
        host = settings.dicom_host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104 - a wildcard is no address to report
            host = socket.gethostname()
        syslog = split_host_port(settings.audit_syslog) if settings.audit_syslog else None
        return cls(
            AuditConfig(
                folder=audit_folder(settings),
                source=AuditSource(
                    source_id=settings.worker_id,
                    ae_title=settings.ae_title,
                    host=host,
                    site_id=settings.institution_name,
                ),
                secret_file=settings.data_dir / HASH_KEY_FILE
                if settings.audit_hashed_patient_ids
                else None,
                syslog=syslog,
                syslog_context=syslog_context(
                    settings.audit_syslog_ca_file,
                    settings.audit_syslog_cert_file,
                    settings.audit_syslog_key_file,
                )
                if syslog
                else None,
            )
        )

    # -- running -------------------------------------------------------------
    def start(self) -> AuditTrail:
        if self._thread is None:
            self.config.folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            if self._syslog is not None:
                self._syslog.start()
            self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout_s: float = 10.0) -> None:
        """Write what is queued, then stop the writer and the syslog sender."""
        if self._thread is not None:
            try:
                self._queue.put(_STOP, timeout=timeout_s)
            except queue.Full:
                pass
            self._thread.join(timeout=timeout_s)
            self._thread = None
        if self._syslog is not None and self._syslog.is_alive():
            # A few seconds for what is queued; an unreachable server does not hold up a stop
            # (what it misses is in the day files, and counted as syslog_dropped).
            self._syslog.close(min(timeout_s, SYSLOG_CLOSE_S))

    def __enter__(self) -> AuditTrail:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until everything queued so far is on disk (False: not within the time)."""
        if self._thread is None:
            return False
        marker = _Flush()
        try:
            self._queue.put(marker, timeout=timeout_s)
        except queue.Full:
            return False
        return marker.done.wait(timeout_s)

    def counts(self) -> dict[str, int]:
        """Messages written, dropped (queue full), failed writes; syslog sent, failed, dropped."""
        with self._counts_lock:
            return dict(self._counts)

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    def day_file(self, day: str) -> Path:
        return self.config.folder / f"{day}{FILE_SUFFIX}"

    def emit(self, pending: Pending) -> None:
        """Queue an event (or a function making one, run on the writer thread); never blocks."""
        try:
            self._queue.put_nowait(pending)
        except queue.Full:
            self._count("dropped")
            self._complain("audit queue full: an audit message was dropped")

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            flushes: list[_Flush] = []
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                elif isinstance(item, _Flush):
                    flushes.append(item)
                else:
                    self._write(cast(Pending, item))
            try:
                self._files.sync()
            except OSError:
                self._count("write_errors")
                self._complain("audit files: fsync failed", exc_info=True)
            for marker in flushes:
                marker.done.set()
            if stop:
                try:
                    self._files.close()
                except OSError:
                    self._complain("audit files: close failed", exc_info=True)
                return

    def _write(self, pending: Pending) -> None:
        try:
            event = pending() if callable(pending) else pending
            if event is None:
                return
            line = serialize(to_xml(event, self.source))
        except Exception:  # boundary: a message that cannot be built is counted, not fatal
            self._count("write_errors")
            self._complain("audit message could not be built", exc_info=True)
            return
        try:
            self._files.write(event.day, line)
        except OSError as exc:
            self._count("write_errors")
            self._complain("audit message not written to %s: %s", self.config.folder, exc)
            try:
                self._files.close()  # reopened at the next message
            except OSError:
                pass
        else:
            self._count("written")
        if self._syslog is not None:
            self._syslog.offer(
                syslog_frame(line, event, hostname=self._hostname, procid=os.getpid())
            )

    # -- patient references ----------------------------------------------------
    @property
    def hashes_patients(self) -> bool:
        return self._key is not None

    def patient_hash(self, path: Path | str | None) -> str | None:
        """HMAC-SHA-256 (hex) of the file's Patient ID; None when off, absent or unreadable."""
        if self._key is None or not path:
            return None
        try:
            ds = read_dataset(
                path,
                stop_before_pixels=True,
                specific_tags=["PatientID"],
                keep_bytes=HEADER_ALLOWANCE_BYTES,
            )
        except Exception:  # noqa: BLE001 - an unreadable file just has no patient reference
            return None
        patient_id = str(ds.get("PatientID", "") or "").strip()
        if not patient_id:
            return None
        return hmac.new(self._key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()

    def _patient(self, path: Path | str | None) -> tuple[ParticipantObject, ...]:
        hashed = self.patient_hash(path)
        return (patient_object(hashed),) if hashed else ()

    # -- the events ------------------------------------------------------------
    def application_started(self) -> None:
        self._application(TYPE_APPLICATION_START)

    def application_stopped(self) -> None:
        self._application(TYPE_APPLICATION_STOP)

    def _application(self, kind: Code) -> None:
        node = Participant(
            user_id=self.source.ae_title,
            alternative_user_id=f"AETITLES={self.source.ae_title}",
            user_name=f"{APP_NAME} {__version__}",
            requestor=False,
            role=ROLE_APPLICATION,
            access_point=self.source.host,
        )
        self.emit(
            AuditEvent(
                event_id=EV_APPLICATION_ACTIVITY,
                type_codes=(kind,),
                action="E",
                outcome=Outcome.SUCCESS,
                when=time.time(),
                participants=(node,),
            )
        )

    def association_rejected(self, association_id: str, calling_ae: str, address: str) -> None:
        """A-ASSOCIATE-RJ sent (calling AE title not allowed, or its certificate not)."""
        calling, where = clean(calling_ae, 64), clean(address, 128)
        self.emit(
            AuditEvent(
                event_id=EV_SECURITY_ALERT,
                type_codes=(TYPE_NODE_AUTHENTICATION,),
                action="E",
                outcome=Outcome.MINOR_FAILURE,
                when=time.time(),
                description=f"association from {calling!r} at {where} rejected",
                participants=(self.source.node(requestor=False),),
                objects=(
                    ParticipantObject(
                        object_id=where or "unknown",
                        id_type=ID_NODE,
                        name=calling or "unknown",
                        type_code=SYSTEM_OBJECT,
                        details=(
                            (
                                "Alert Description",
                                f"A-ASSOCIATE-RJ to calling AE title {calling!r} at {where} "
                                f"(called {self.source.ae_title}, {association_id})",
                            ),
                        ),
                    ),
                ),
            )
        )

    def instance_received(
        self,
        *,
        calling_ae: str,
        address: str,
        study_uid: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        path: Path | str | None = None,
        created: bool = True,
    ) -> None:
        """A C-STORE committed: C if the node did not hold the instance, R if it did."""
        when = time.time()
        source = Participant.application(
            clean(calling_ae, 64), clean(address, 128), requestor=True, role=ROLE_SOURCE
        )

        def build() -> AuditEvent:
            entry = SopClassEntry(uid=sop_class_uid, instances=(sop_instance_uid,))
            return AuditEvent(
                event_id=EV_INSTANCES_TRANSFERRED,
                action="C" if created else "R",
                outcome=Outcome.SUCCESS,
                when=when,
                participants=(source, self.source.node(requestor=False, role=ROLE_DESTINATION)),
                objects=(study_object(study_uid, [entry]), *self._patient(path)),
            )

        self.emit(build)

    def results_sent(self, job: Job, destination: Destination, *, error: str | None = None) -> None:
        """The job's SEG/SC/SR sent to one destination (``error``: the send failed)."""
        when = time.time()
        uids = dict(job.results.get("uids") or {})
        target = Participant.application(  # a DICOMweb destination has no AE title: its URL
            destination.ae_title or destination.name,
            destination.host,
            requestor=False,
            role=ROLE_DESTINATION,
        )

        def build() -> AuditEvent:
            entries = [
                SopClassEntry(uid=RESULT_SOP_CLASSES.get(kind, "unknown"), instances=(uid,))
                for kind, uid in uids.items()
            ]
            return AuditEvent(
                event_id=EV_INSTANCES_TRANSFERRED,
                action="R",
                outcome=Outcome.SUCCESS if error is None else Outcome.MINOR_FAILURE,
                when=when,
                description=None if error is None else f"send failed, will be retried: {error}",
                participants=(self.source.node(requestor=True, role=ROLE_SOURCE), target),
                objects=(
                    study_object(job.study_instance_uid, entries),
                    *self._patient(job.path),
                ),
            )

        self.emit(build)

    def admin_action(
        self,
        *,
        action: str,
        uri: str,
        role: str,
        host: str | None,
        ok: bool,
        detail: str = "",
        action_info: AdminAction | None = None,
    ) -> None:
        """An admin-only function used (retry, reprocess, C-ECHO) or refused."""
        info = action_info or AdminAction()
        objects = [
            ParticipantObject(
                object_id=uri,
                id_type=ID_URI,
                name=action,
                type_code=SYSTEM_OBJECT,
                details=(
                    ("Alert Description", f"{action}: {detail or ('done' if ok else 'refused')}"),
                ),
            )
        ]
        if info.study_uid:
            instances = (info.sop_instance_uid,) if info.sop_instance_uid else ()
            entries = (
                [SopClassEntry(uid=info.sop_class_uid, instances=instances)]
                if info.sop_class_uid
                else []
            )
            objects.append(study_object(info.study_uid, entries))
        caller = Participant(
            user_id=role, user_name=f"{role} token", requestor=True, access_point=host
        )
        self.emit(
            AuditEvent(
                event_id=EV_SECURITY_ALERT,
                type_codes=(TYPE_RESTRICTED_FUNCTION,),
                action="E",
                outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
                when=time.time(),
                participants=(caller, self.source.node(requestor=False)),
                objects=tuple(objects),
            )
        )

    def user_authentication(
        self, *, role: str | None, host: str | None, ok: bool, logout: bool = False, how: str = ""
    ) -> None:
        """A token given at /login or as a bearer token (``ok`` False: it was wrong); sign-out."""
        person = Participant(
            user_id=role or "unknown",
            user_name=f"{role} token" if role else None,
            requestor=True,
            access_point=host or "unknown",
        )
        self.emit(
            AuditEvent(
                event_id=EV_USER_AUTHENTICATION,
                type_codes=(TYPE_LOGOUT if logout else TYPE_LOGIN,),
                action="E",
                outcome=Outcome.SUCCESS if ok else Outcome.MINOR_FAILURE,
                when=time.time(),
                description=clean(how) or None,
                participants=(person, self.source.node(requestor=False)),
            )
        )

    def retention_deleted(self, purged: Sequence[tuple[Job, str | None]], *, reason: str) -> None:
        """Files of finished jobs deleted: one message per study (and hashed patient)."""
        when = time.time()
        groups: dict[tuple[str, str | None], list[Job]] = {}
        for job, patient in purged:
            groups.setdefault((job.study_instance_uid, patient), []).append(job)
        for (study_uid, patient), jobs in groups.items():
            entries = list(_deleted_entries(jobs))
            self.emit(
                AuditEvent(
                    event_id=EV_INSTANCES_ACCESSED,
                    action="D",
                    outcome=Outcome.SUCCESS,
                    when=when,
                    description=f"retention: files of {len(jobs)} finished jobs deleted "
                    f"({reason}): {sum(e.number for e in entries)} instances",
                    participants=(self.source.node(requestor=True),),
                    objects=(
                        study_object(study_uid, entries, life_cycle=LIFE_CYCLE_ERASURE),
                        *((patient_object(patient),) if patient else ()),
                    ),
                )
            )


def _deleted_entries(jobs: Sequence[Job]) -> Iterator[SopClassEntry]:
    """The received instances and the results of ``jobs``, by SOP class."""
    by_class: dict[str, list[str]] = {}
    for job in jobs:
        by_class.setdefault(job.sop_class_uid, []).append(job.sop_instance_uid)
        for kind, uid in dict(job.results.get("uids") or {}).items():
            by_class.setdefault(RESULT_SOP_CLASSES.get(kind, "unknown"), []).append(str(uid))
    for uid, instances in by_class.items():
        yield SopClassEntry(uid=uid, instances=tuple(instances))


@contextmanager
def audited(
    trail: AuditTrail | None,
    *,
    action: str,
    uri: str,
    role: str,
    host: str | None,
) -> Iterator[AdminAction]:
    """Record an admin request: done when the block ends, refused when it raises."""
    info = AdminAction()
    try:
        yield info
    except Exception as exc:
        if trail is not None:
            reason = getattr(exc, "detail", None) or type(exc).__name__
            trail.admin_action(
                action=action,
                uri=uri,
                role=role,
                host=host,
                ok=False,
                detail=str(reason),
                action_info=info,
            )
        raise
    if trail is not None:
        trail.admin_action(
            action=action,
            uri=uri,
            role=role,
            host=host,
            ok=True,
            detail=info.detail,
            action_info=info,
        )


def audit_folder(settings: Settings) -> Path:
    """Where the day files go: ``audit_dir``, by default ``<data_dir>/audit``."""
    return settings.audit_dir or settings.data_dir / "audit"


def audit_files(folder: Path) -> list[Path]:
    """The day files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob(f"????-??-??{FILE_SUFFIX}") if p.is_file())


def delete_old_files(folder: Path, *, before: float) -> int:
    """Delete the day files of UTC days before ``before`` (retention); how many went."""
    cutoff = datetime.fromtimestamp(before, UTC).strftime("%Y-%m-%d")
    deleted = 0
    for path in audit_files(folder):
        if path.name[:10] < cutoff:
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            deleted += 1
    return deleted


__all__ = [
    "AdminAction",
    "AuditConfig",
    "AuditEvent",
    "AuditSetupError",
    "AuditSource",
    "AuditTrail",
    "Code",
    "Outcome",
    "Participant",
    "ParticipantObject",
    "SopClassEntry",
    "audit_files",
    "audit_folder",
    "audited",
    "delete_old_files",
    "serialize",
    "split_host_port",
    "syslog_frame",
    "to_xml",
]
