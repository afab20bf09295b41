"""Checks for the audit trail tests: the PS3.15 A.5.1 schema, a TLS syslog listener, a PKI.

``schema_problems`` follows the DICOM audit message schema (PS3.15 A.5.1.1, RELAX NG
compact), written out here for every element and attribute it defines: their order,
whether they are required, and their value sets (EventActionCode, EventOutcomeIndicator,
NetworkAccessPointTypeCode, ParticipantObjectTypeCode, ...Role, ...DataLifeCycle), the
coded values (csd-code, codeSystemName, originalText), xsd:dateTime with a time zone
(A.5.2.5), xsd:boolean, xsd:integer and base64 values. ``message_problems`` adds what
A.5.3 requires of the messages the node sends.
"""

from __future__ import annotations

import base64
import binascii
import re
import socket
import ssl
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path

Checker = Callable[[ET.Element, str], list[str]]

DATETIME = re.compile(r"^-?\d{4,}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
BOOLEAN = {"true", "false", "1", "0"}
ACTIONS = {"C", "R", "U", "D", "E"}
OUTCOMES = {"0", "4", "8", "12"}
ACCESS_POINT_TYPES = {"1", "2", "3", "4", "5"}
OBJECT_TYPES = {"1", "2", "3", "4"}
OBJECT_ROLES = {str(n) for n in range(1, 27)}
LIFE_CYCLES = {str(n) for n in range(1, 16)}


def _attributes(
    element: ET.Element,
    where: str,
    required: Sequence[str] = (),
    optional: Sequence[str] = (),
    values: dict[str, Callable[[str], bool]] | None = None,
) -> list[str]:
    problems = [f"{where}: attribute {a} missing" for a in required if a not in element.attrib]
    allowed = set(required) | set(optional)
    problems += [
        f"{where}: attribute {a} not in the schema" for a in element.attrib if a not in allowed
    ]
    for name, ok in (values or {}).items():
        if name in element.attrib and not ok(element.attrib[name]):
            problems.append(f"{where}: {name}={element.attrib[name]!r} not allowed")
    return problems


def _sequence(
    element: ET.Element, where: str, spec: Sequence[tuple[str | tuple[str, ...], int, int, Checker]]
) -> list[str]:
    """Children in the order of ``spec``: (tag or choice of tags, min, max, checker)."""
    children = list(element)
    problems: list[str] = []
    i = 0
    for tags, low, high, check in spec:
        names = (tags,) if isinstance(tags, str) else tags
        seen = 0
        while i < len(children) and children[i].tag in names and seen < high:
            problems += check(children[i], f"{where}/{children[i].tag}[{seen}]")
            i += 1
            seen += 1
        if seen < low:
            problems.append(f"{where}: {' or '.join(names)} expected {low}+ times, found {seen}")
    problems += [f"{where}: unexpected element {c.tag}" for c in children[i:]]
    if element.text and element.text.strip() and spec:
        problems.append(f"{where}: text where only elements belong")
    return problems


def _empty(element: ET.Element, where: str) -> list[str]:
    return [f"{where}: unexpected child {c.tag}" for c in element]


def coded(element: ET.Element, where: str) -> list[str]:
    return _attributes(
        element, where, ("csd-code", "codeSystemName", "originalText"), ("displayName",)
    ) + _empty(element, where)


def _text(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where) + _empty(element, where)


def _is_datetime(value: str) -> bool:
    if not DATETIME.match(value):
        return False
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_base64(value: str) -> bool:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def event_identification(element: ET.Element, where: str) -> list[str]:
    return _attributes(
        element,
        where,
        ("EventDateTime", "EventOutcomeIndicator"),
        ("EventActionCode",),
        {
            "EventActionCode": ACTIONS.__contains__,
            "EventOutcomeIndicator": OUTCOMES.__contains__,
            "EventDateTime": _is_datetime,
        },
    ) + _sequence(
        element,
        where,
        [
            ("EventID", 1, 1, coded),
            ("EventTypeCode", 0, 1_000, coded),
            ("EventOutcomeDescription", 0, 1, _text),
        ],
    )


def _media(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where) + _sequence(element, where, [("MediaType", 1, 1, coded)])


def active_participant(element: ET.Element, where: str) -> list[str]:
    return _attributes(
        element,
        where,
        ("UserID", "UserIsRequestor"),
        ("AlternativeUserID", "UserName", "NetworkAccessPointID", "NetworkAccessPointTypeCode"),
        {
            "UserIsRequestor": BOOLEAN.__contains__,
            "NetworkAccessPointTypeCode": ACCESS_POINT_TYPES.__contains__,
        },
    ) + _sequence(
        element, where, [("RoleIDCode", 0, 1_000, coded), ("MediaIdentifier", 0, 1, _media)]
    )


def _source_type(element: ET.Element, where: str) -> list[str]:
    problems = _attributes(
        element, where, ("csd-code",), ("codeSystemName", "displayName", "originalText")
    ) + _empty(element, where)
    code = element.get("csd-code", "")
    described = "codeSystemName" in element.attrib
    if described and "originalText" not in element.attrib:
        problems.append(f"{where}: codeSystemName without originalText")
    if not described and code not in {str(n) for n in range(1, 10)}:
        problems.append(f"{where}: csd-code {code!r} is not 1-9 and has no codeSystemName")
    return problems


def audit_source(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where, ("AuditSourceID",), ("AuditEnterpriseSiteID",)) + _sequence(
        element, where, [("AuditSourceTypeCode", 0, 1_000, _source_type)]
    )


def _uid_only(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where, ("UID",)) + _empty(element, where)


def _accession(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where, ("Number",)) + _empty(element, where)


def _sop_class(element: ET.Element, where: str) -> list[str]:
    return _attributes(
        element,
        where,
        ("NumberOfInstances",),
        ("UID",),
        {"NumberOfInstances": lambda v: re.fullmatch(r"[+-]?\d+", v) is not None},
    ) + _sequence(element, where, [("Instance", 0, 1_000_000, _uid_only)])


def _contains_study(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where) + _sequence(
        element, where, [("StudyIDs", 0, 1_000_000, _uid_only)]
    )


def _boolean_text(element: ET.Element, where: str) -> list[str]:
    problems = _text(element, where)
    if (element.text or "").strip() not in BOOLEAN:
        problems.append(f"{where}: {element.text!r} is not a boolean")
    return problems


def _description(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where) + _sequence(
        element,
        where,
        [
            ("MPPS", 0, 1_000_000, _uid_only),
            ("Accession", 0, 1_000_000, _accession),
            ("SOPClass", 0, 1_000_000, _sop_class),
            ("ParticipantObjectContainsStudy", 0, 1, _contains_study),
            ("Encrypted", 0, 1, _boolean_text),
            ("Anonymized", 0, 1, _boolean_text),
        ],
    )


def _query(element: ET.Element, where: str) -> list[str]:
    problems = _text(element, where)
    if element.tag == "ParticipantObjectQuery" and not _is_base64((element.text or "").strip()):
        problems.append(f"{where}: not base64")
    return problems


def _detail(element: ET.Element, where: str) -> list[str]:
    return _attributes(element, where, ("type", "value"), values={"value": _is_base64}) + _empty(
        element, where
    )


def participant_object(element: ET.Element, where: str) -> list[str]:
    return _attributes(
        element,
        where,
        ("ParticipantObjectID",),
        (
            "ParticipantObjectTypeCode",
            "ParticipantObjectTypeCodeRole",
            "ParticipantObjectDataLifeCycle",
            "ParticipantObjectSensitivity",
        ),
        {
            "ParticipantObjectTypeCode": OBJECT_TYPES.__contains__,
            "ParticipantObjectTypeCodeRole": OBJECT_ROLES.__contains__,
            "ParticipantObjectDataLifeCycle": LIFE_CYCLES.__contains__,
        },
    ) + _sequence(
        element,
        where,
        [
            ("ParticipantObjectIDTypeCode", 1, 1, coded),
            (("ParticipantObjectName", "ParticipantObjectQuery"), 1, 1, _query),
            ("ParticipantObjectDetail", 0, 1_000, _detail),
            ("ParticipantObjectDescription", 0, 1_000, _description),
        ],
    )


def schema_problems(message: ET.Element) -> list[str]:
    """What in ``message`` the PS3.15 A.5.1 schema does not allow (empty: valid)."""
    if message.tag != "AuditMessage":
        return [f"root is {message.tag}, not AuditMessage"]
    return _attributes(message, "AuditMessage") + _sequence(
        message,
        "AuditMessage",
        [
            ("EventIdentification", 1, 1, event_identification),
            ("ActiveParticipant", 1, 1_000, active_participant),
            ("AuditSourceIdentification", 1, 1, audit_source),
            ("ParticipantObjectIdentification", 0, 1_000, participant_object),
        ],
    )


# -- what A.5.3 asks of each message the node sends ---------------------------------------
def event_code(message: ET.Element) -> str:
    found = message.find("EventIdentification/EventID")
    return found.get("csd-code", "") if found is not None else ""


def type_codes(message: ET.Element) -> set[str]:
    return {e.get("csd-code", "") for e in message.iterfind("EventIdentification/EventTypeCode")}


def roles(message: ET.Element) -> dict[str, ET.Element]:
    """ActiveParticipants by RoleIDCode."""
    return {
        code.get("csd-code", ""): participant
        for participant in message.iterfind("ActiveParticipant")
        for code in participant.iterfind("RoleIDCode")
    }


def objects(message: ET.Element, id_type: str) -> list[ET.Element]:
    return [
        o
        for o in message.iterfind("ParticipantObjectIdentification")
        if (t := o.find("ParticipantObjectIDTypeCode")) is not None and t.get("csd-code") == id_type
    ]


def message_problems(message: ET.Element) -> list[str]:
    """The schema, and the A.5.3 rules of the message's EventID."""
    problems = schema_problems(message)
    ident = message.find("EventIdentification")
    if ident is None:
        return problems
    action = ident.get("EventActionCode")
    event = event_code(message)
    if event == "110104":  # A.5.3.7 DICOM Instances Transferred
        if action not in {"C", "R", "U"}:
            problems.append(f"Instances Transferred with action {action}")
        if set(roles(message)) < {"110153", "110152"}:
            problems.append("Instances Transferred needs a Source and a Destination participant")
        studies = objects(message, "110180")
        if not studies or any(
            s.get("ParticipantObjectTypeCode") != "2"
            or s.get("ParticipantObjectTypeCodeRole") != "3"
            for s in studies
        ):
            problems.append("Instances Transferred needs studies (type 2, role 3)")
    elif event == "110103":  # A.5.3.6 DICOM Instances Accessed
        if action not in ACTIONS - {"E"}:
            problems.append(f"Instances Accessed with action {action}")
        if not objects(message, "110180"):
            problems.append("Instances Accessed needs a study")
    elif event == "110113":  # A.5.3.11 Security Alert
        if action != "E" or not type_codes(message):
            problems.append("Security Alert needs action E and an EventTypeCode")
        descriptions = [
            d
            for d in message.iterfind("ParticipantObjectIdentification/ParticipantObjectDetail")
            if d.get("type") == "Alert Description"
        ]
        if not descriptions:
            problems.append("Security Alert needs an Alert Description detail")
    elif event == "110114":  # A.5.3.12 User Authentication
        if not type_codes(message) <= {"110122", "110123"} or not type_codes(message):
            problems.append("User Authentication needs Login or Logout")
        person = message.find("ActiveParticipant")
        if person is None or "NetworkAccessPointID" not in person.attrib:
            problems.append("User Authentication needs the person's network access point")
    elif event == "110100":  # A.5.3.1 Application Activity
        if not type_codes(message) <= {"110120", "110121"} or not type_codes(message):
            problems.append("Application Activity needs Application Start or Stop")
        if "110150" not in roles(message):
            problems.append("Application Activity needs the Application participant")
    else:
        problems.append(f"unexpected EventID {event}")
    return problems


def read_messages(folder: Path) -> list[tuple[bytes, ET.Element]]:
    """Every line of every day file: (the line, its parsed message)."""
    found = []
    for path in sorted(folder.glob("*.log")):
        for line in path.read_bytes().splitlines():
            found.append((line, ET.fromstring(line)))
    return found


# -- a throwaway PKI and a syslog server speaking RFC 5425 ---------------------------------
def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> Path:
    """A CA and a server certificate for 127.0.0.1 (IP subjectAltName), both for 2 days."""
    folder.mkdir(parents=True, exist_ok=True)
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
        "-days", "2", "-subj", "/CN=audit test CA", cwd=folder,
    )  # fmt: skip
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=syslog", cwd=folder,
    )  # fmt: skip
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "server.ext",
        cwd=folder,
    )  # fmt: skip
    return folder


class SyslogListener:
    """A TLS syslog receiver on 127.0.0.1 that keeps every octet-counted frame (RFC 5425)."""

    def __init__(self, pki: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pki / "server.crt", pki / "server.key")
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.frames: list[bytes] = []
        self.versions: list[str] = []
        self.lock = threading.Lock()
        self.stopping = False
        threading.Thread(target=self._accept, name="syslog-listener", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.stopping:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self.lock:
            self.versions.append(str(conn.version()))
        with conn:
            for frame in frames_of(conn):
                with self.lock:
                    self.frames.append(frame)

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[bytes]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.frames) >= count:
                    return list(self.frames)
            time.sleep(0.05)
        with self.lock:
            return list(self.frames)

    def close(self) -> None:
        self.stopping = True
        self.sock.close()


def frames_of(conn: ssl.SSLSocket) -> Iterator[bytes]:
    """MSG-LEN SP SYSLOG-MSG, repeated, until the peer closes."""
    buffer = b""
    while True:
        while b" " not in buffer:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
        length, _, buffer = buffer.partition(b" ")
        size = int(length)
        while len(buffer) < size:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buffer += chunk
        yield buffer[:size]
        buffer = buffer[size:]


SYSLOG_HEADER = re.compile(
    rb"^<(?P<pri>\d{1,3})>1 (?P<stamp>\S+) (?P<host>\S+) (?P<app>\S+) (?P<procid>\S+) "
    rb"(?P<msgid>\S+) - \xef\xbb\xbf(?P<msg>.*)$",
    re.DOTALL,
)
