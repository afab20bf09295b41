"""The audit trail of a running node (PS3.15 A.5), in its day files and over syslog TLS.

One node, in-process, with a worker process as ``serve`` runs by default: an
association rejected for an unknown AE title, one C-STORE received, its results
refused by the PACS until the job fails, a refused and a wrong sign-in, the admin's
retry, the results delivered, and a retention sweep. Every message must follow the
schema, no patient name, ID or birth date of the dataset may appear in the audit
files, and the syslog server must get each message the files have.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pynetdicom import AE
from pynetdicom.sop_class import DigitalMammographyXRayImageStorageForPresentation

from service.app import create_app
from service.audit_trail import audit_folder
from service.retention import DAY_S, policy_from, sweep
from service.store import JobState
from tests.audit_checks import (
    SYSLOG_HEADER,
    SyslogListener,
    event_code,
    make_pki,
    message_problems,
    objects,
    read_messages,
    roles,
    type_codes,
)
from tests.http_node import ADMIN, VIEWER, Peer, mammogram, node_state, running_node, send, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")

PATIENT = {"PatientName": "AUDIT^SECRET", "PatientID": "PID7734219", "PatientBirthDate": "19610823"}
NEEDLES = [b"AUDIT^SECRET", b"AUDIT", b"SECRET", b"PID7734219", b"19610823"]


def outcome(message) -> str:  # type: ignore[no-untyped-def]
    return str(message.find("EventIdentification").get("EventOutcomeIndicator"))


def action(message) -> str:  # type: ignore[no-untyped-def]
    return str(message.find("EventIdentification").get("EventActionCode"))


def test_the_node_audits_rejections_receipts_sends_admin_actions_and_deletions(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    syslog = SyslogListener(pki)
    peer = Peer(refuse=True, ae_title="DEST")
    ds = mammogram(seed=5)
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    try:
        with running_node(
            tmp_path,
            peer,
            allowed_callers=["PACS"],
            retry_give_up_s=0.3,
            worker_processes=1,
            audit_syslog=syslog.address,
            audit_syslog_ca_file=pki / "ca.crt",
        ) as node:
            intruder = AE(ae_title="INTRUDER")
            intruder.add_requested_context(DigitalMammographyXRayImageStorageForPresentation)
            assoc = intruder.associate("127.0.0.1", node.settings.dicom_port, ae_title="MAMMOSEG")
            assert not assoc.is_established
            assert send(node, ds) == [0]
            failed = wait_for(
                lambda: next(iter(node.store.reads.list(state=JobState.FAILED)), None),
                timeout_s=120,
            )
            client = TestClient(create_app(node_state(node)))
            retry = f"/api/v1/jobs/{failed.id}/retry"
            assert client.post(retry).status_code == 401  # no token: refused, audited
            wrong = client.post("/login", data={"token": "not-a-token-at-all"})
            assert wrong.status_code == 401
            signed_in = client.post("/login", data={"token": ADMIN}, follow_redirects=False)
            assert signed_in.status_code == 303
            peer.refuse = False
            answer = client.post(retry, headers={"Authorization": f"Bearer {ADMIN}"})
            assert answer.status_code == 200, answer.text
            wait_for(
                lambda: (j := node.store.reads.get(failed.id)) and j.state is JobState.DONE,
                timeout_s=60,
            )
            metrics = client.get("/metrics", headers={"Authorization": f"Bearer {VIEWER}"}).text
            assert 'mammoseg_audit_messages_total{what="written"}' in metrics
            folder = audit_folder(node.settings)
            (folder / "2000-01-01.log").write_text("")  # a day file far past retention
            counts = sweep(
                node.store,
                policy_from(node.settings),
                now=time.time() + 31 * DAY_S,
                audit=node.audit,
            )
            assert counts.jobs_purged == 1
            assert not (folder / "2000-01-01.log").exists()
        trail_counts = node.audit.counts() if node.audit else {}
        messages = read_messages(folder)
        frames = syslog.wait_for(len(messages))
    finally:
        syslog.close()
        peer.close()

    kinds = Counter((event_code(m), action(m), outcome(m)) for _, m in messages)
    print(f"\n{len(messages)} audit messages in {folder.name}/, {len(frames)} over syslog TLS")
    print(f"(EventID, action, outcome): {dict(kinds)}; the node's trail: {trail_counts}")
    for line, message in messages:
        assert message_problems(message) == [], line

    # No patient name, ID or birth date anywhere in the audit files.
    everything = b"".join(p.read_bytes() for p in folder.iterdir() if p.is_file())
    assert [n for n in NEEDLES if n in everything] == []

    by_event = {code: [m for _, m in messages if event_code(m) == code] for code in kinds_codes()}
    # Application Activity: start and stop.
    assert sorted(type_codes(m).pop() for m in by_event["110100"]) == ["110120", "110121"]
    # Security Alerts: the rejected association, the refused and the done retry.
    alerts = by_event["110113"]
    rejected = [m for m in alerts if type_codes(m) == {"110126"}]
    assert len(rejected) == 1 and outcome(rejected[0]) == "4"
    [subject] = objects(rejected[0], "110182")
    assert subject.findtext("ParticipantObjectName") == "INTRUDER"
    retries = [m for m in alerts if type_codes(m) == {"110132"}]
    assert sorted(outcome(m) for m in retries) == ["0", "4"]
    done = next(m for m in retries if outcome(m) == "0")
    [uri] = objects(done, "12")
    assert uri.get("ParticipantObjectID") == retry
    [study] = objects(done, "110180")
    assert study.get("ParticipantObjectID") == str(ds.StudyInstanceUID)
    # Received: C, from PACS at 127.0.0.1, the study with one MG instance.
    transferred = by_event["110104"]
    [received] = [m for m in transferred if action(m) == "C"]
    source = roles(received)["110153"]
    assert (source.get("UserID"), source.get("NetworkAccessPointID")) == ("PACS", "127.0.0.1")
    assert roles(received)["110152"].get("UserID") == "MAMMOSEG"
    [study] = objects(received, "110180")
    assert study.get("ParticipantObjectID") == str(ds.StudyInstanceUID)
    assert [(e.get("UID"), e.get("NumberOfInstances")) for e in study.iter("SOPClass")] == [
        (str(ds.SOPClassUID), "1")
    ]
    # Sent: R to DEST; refused sends as minor failures, then one success with what arrived.
    sent = [m for m in transferred if action(m) == "R"]
    assert all(roles(m)["110152"].get("UserID") == "DEST" for m in sent)
    assert {outcome(m) for m in sent} == {"0", "4"}
    [delivered] = [m for m in sent if outcome(m) == "0"]
    classes = {e.get("UID") for e in delivered.iter("SOPClass")}
    assert classes == {str(r.SOPClassUID) for r in peer.received}
    assert {e.get("UID") for e in delivered.iter("Instance")} == {
        str(r.SOPInstanceUID) for r in peer.received
    }
    # Sign-ins: the wrong token and the admin's.
    assert sorted(outcome(m) for m in by_event["110114"]) == ["0", "4"]
    # Retention: D, the study, the source and its three results.
    [deleted] = by_event["110103"]
    assert action(deleted) == "D"
    assert {e.get("UID") for e in deleted.iter("SOPClass")} == classes | {str(ds.SOPClassUID)}

    # Syslog (RFC 5425 over TLS) got every message of the day files.
    assert trail_counts.get("write_errors") == 0 and trail_counts.get("dropped") == 0
    bodies = []
    for frame in frames:
        parsed = SYSLOG_HEADER.match(frame)
        assert parsed is not None and parsed["msgid"] == b"DICOM+RFC3881"
        bodies.append(parsed["msg"])
    assert Counter(bodies) == Counter(line for line, _ in messages)


def kinds_codes() -> tuple[str, ...]:
    return ("110100", "110103", "110104", "110113", "110114")
