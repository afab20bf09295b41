"""The audit trail (service/audit_trail.py): PS3.15 A.5 messages, day files, syslog over TLS."""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import shutil
import stat
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from dicom_node.scu import Destination
from service import audit_trail
from service.audit_trail import (
    AuditConfig,
    AuditSource,
    AuditTrail,
    audit_files,
    delete_old_files,
    split_host_port,
    syslog_context,
)
from service.settings import SettingsError, load_settings
from service.store import Job, JobState
from service.testkit.synthetic import synthetic_mammogram
from tests.audit_checks import (
    SYSLOG_HEADER,
    SyslogListener,
    event_code,
    make_pki,
    message_problems,
    read_messages,
)

PATIENT = {"patient_name": "AUDIT^SECRET", "patient_id": "PID7734219", "birth_date": "19610823"}
NEEDLES = [b"AUDIT^SECRET", b"AUDIT", b"SECRET", b"PID7734219", b"19610823"]
SOURCE = AuditSource(source_id="node-1", ae_title="MAMMOSEG", host="127.0.0.1")
DEST = Destination(ae_title="PACSAET", host="127.0.0.1", port=11113)
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")


def dicom_file(tmp_path: Path) -> tuple[Path, str]:
    ds = synthetic_mammogram(seed=3, **PATIENT)
    path = tmp_path / "in.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def a_job(path: Path, study_uid: str) -> Job:
    return Job(
        id=7,
        sop_instance_uid="1.2.826.0.1.3680043.8.498.1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid=study_uid,
        series_instance_uid="1.2.826.0.1.3680043.8.498.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        association_id="assoc-1",
        path=str(path),
        state=JobState.DONE,
        reason="",
        attempts=0,
        next_attempt_at=None,
        first_send_failure_at=None,
        created_at=time.time(),
        updated_at=time.time(),
        results={"uids": {"seg": "1.2.3.4.1", "sc": "1.2.3.4.2", "sr": "1.2.3.4.3"}},
    )


def trail_in(tmp_path: Path, *, hashed: bool = False, **config: object) -> AuditTrail:
    return AuditTrail(
        AuditConfig(
            folder=tmp_path / "audit",
            source=SOURCE,
            secret_file=tmp_path / "audit-hash.key" if hashed else None,
            **config,  # type: ignore[arg-type]
        )
    )


def every_event(trail: AuditTrail, path: Path, study_uid: str) -> None:
    job = a_job(path, study_uid)
    trail.application_started()
    trail.association_rejected("assoc-9", 'EV<IL>&"\n\x00', "127.0.0.1")
    trail.instance_received(
        calling_ae="PACS",
        address="127.0.0.1",
        study_uid=study_uid,
        sop_class_uid=job.sop_class_uid,
        sop_instance_uid=job.sop_instance_uid,
        path=path,
    )
    trail.results_sent(job, DEST, error="connection refused")
    trail.results_sent(job, DEST)
    trail.admin_action(
        action="retry", uri="/api/v1/jobs/7/retry", role="admin", host="10.1.2.3", ok=True
    )
    trail.admin_action(
        action="retry", uri="/api/v1/jobs/7/retry", role="none", host="10.1.2.3", ok=False
    )
    trail.user_authentication(role="admin", host="10.1.2.3", ok=True)
    trail.user_authentication(role=None, host="10.1.2.3", ok=False, how="bearer token")
    trail.user_authentication(role="admin", host="10.1.2.3", ok=True, logout=True)
    trail.retention_deleted([(job, trail.patient_hash(path))], reason="older than 30 days")
    trail.application_stopped()


def test_every_message_follows_the_schema_one_line_each(tmp_path: Path) -> None:
    path, study_uid = dicom_file(tmp_path)
    with trail_in(tmp_path) as trail:
        every_event(trail, path, study_uid)
        assert trail.flush()
        counts = trail.counts()
    messages = read_messages(tmp_path / "audit")
    kinds = Counter(
        (event_code(m), m.find("EventIdentification").get("EventActionCode"))  # type: ignore[union-attr]
        for _, m in messages
    )
    print(f"\n{len(messages)} messages, {counts}: {dict(kinds)}")
    assert counts["written"] == len(messages) == 12 and counts["write_errors"] == 0
    for line, message in messages:
        assert message_problems(message) == [], line
    assert kinds == {
        ("110100", "E"): 2,  # Application Activity
        ("110113", "E"): 3,  # Security Alert: rejected association, admin done, admin refused
        ("110104", "C"): 1,  # Instances Transferred: received
        ("110104", "R"): 2,  # Instances Transferred: sent (failed, then done)
        ("110114", "E"): 3,  # User Authentication
        ("110103", "D"): 1,  # Instances Accessed: retention
    }
    days = audit_files(tmp_path / "audit")  # the UTC day (two if the test ran over midnight)
    assert 1 <= len(days) <= 2
    for day in days:
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}\.log", day.name)
        assert stat.S_IMODE(day.stat().st_mode) & 0o007 == 0  # not for the world


def test_the_received_and_sent_messages_name_study_classes_and_peers(tmp_path: Path) -> None:
    path, study_uid = dicom_file(tmp_path)
    with trail_in(tmp_path) as trail:
        every_event(trail, path, study_uid)
    messages = [m for _, m in read_messages(tmp_path / "audit")]
    received = next(m for m in messages if event_code(m) == "110104")
    source, destination = received.findall("ActiveParticipant")
    assert source.get("UserID") == "PACS" and source.get("UserIsRequestor") == "true"
    assert source.find("RoleIDCode").get("csd-code") == "110153"  # type: ignore[union-attr]
    assert destination.get("UserID") == "MAMMOSEG"
    assert destination.find("RoleIDCode").get("csd-code") == "110152"  # type: ignore[union-attr]
    study = received.find("ParticipantObjectIdentification")
    assert study is not None and study.get("ParticipantObjectID") == study_uid
    sop = study.find("ParticipantObjectDescription/SOPClass")
    assert sop is not None and sop.get("NumberOfInstances") == "1"
    assert sop.get("UID") == "1.2.840.10008.5.1.4.1.1.1.2"
    sent = [m for m in messages if event_code(m) == "110104"][1:]
    outcomes = [m.find("EventIdentification").get("EventOutcomeIndicator") for m in sent]  # type: ignore[union-attr]
    assert outcomes == ["4", "0"]
    node, pacs = sent[1].findall("ActiveParticipant")
    assert (node.get("UserID"), node.get("UserIsRequestor")) == ("MAMMOSEG", "true")
    assert (pacs.get("UserID"), pacs.get("NetworkAccessPointID")) == ("PACSAET", "127.0.0.1")
    classes = {e.get("UID"): e.get("NumberOfInstances") for e in sent[1].iter("SOPClass")}
    assert classes == {
        "1.2.840.10008.5.1.4.1.1.66.4": "1",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.7": "1",  # Secondary Capture
        "1.2.840.10008.5.1.4.1.1.88.34": "1",  # Comprehensive 3D SR
    }
    deleted = next(m for m in messages if event_code(m) == "110103")
    assert {e.get("UID"): e.get("NumberOfInstances") for e in deleted.iter("SOPClass")} == {
        "1.2.840.10008.5.1.4.1.1.1.2": "1",
        **classes,
    }


def test_no_patient_data_unless_hashed_ids_are_allowed(tmp_path: Path) -> None:
    path, study_uid = dicom_file(tmp_path)
    with trail_in(tmp_path / "plain") as trail:
        every_event(trail, path, study_uid)
    text = b"".join(p.read_bytes() for p in audit_files(tmp_path / "plain" / "audit"))
    assert not [n for n in NEEDLES if n in text]
    assert b'ParticipantObjectTypeCode="1"' not in text  # no Person object at all

    with trail_in(tmp_path / "hashed", hashed=True) as trail:
        every_event(trail, path, study_uid)
    key_file = tmp_path / "hashed" / "audit-hash.key"
    key = key_file.read_bytes()
    assert len(key) == 32 and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    expected = hmac.new(key, PATIENT["patient_id"].encode(), hashlib.sha256).hexdigest()
    messages = read_messages(tmp_path / "hashed" / "audit")
    text = b"".join(line for line, _ in messages)
    assert not [n for n in NEEDLES if n in text]
    persons = [
        o
        for _, m in messages
        for o in m.iterfind("ParticipantObjectIdentification")
        if o.get("ParticipantObjectTypeCode") == "1"
    ]
    # received, sent twice, deleted: each names the patient by the hash only
    assert [p.get("ParticipantObjectID") for p in persons] == [expected] * 4
    assert all(p.get("ParticipantObjectTypeCodeRole") == "1" for p in persons)
    # The key is made once per install: a restart hashes the same way.
    assert trail_in(tmp_path / "hashed", hashed=True).patient_hash(path) == expected


def test_a_failed_write_is_counted_and_logged_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trail_in(tmp_path) as trail:
        (tmp_path / "audit").rmdir()
        (tmp_path / "audit").write_text("not a folder")  # the disk is gone, as it were
        trail.application_started()
        assert trail.flush()
        failed = trail.counts()
        (tmp_path / "audit").unlink()
        trail.application_started()
        assert trail.flush()
        recovered = trail.counts()
    print(f"\nafter a failed write: {failed}; after the folder is back: {recovered}")
    assert (failed["written"], failed["write_errors"]) == (0, 1)
    assert (recovered["written"], recovered["write_errors"]) == (1, 1)
    assert "audit message not written" in caplog.text


def test_a_full_queue_drops_and_counts_instead_of_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit_trail, "QUEUE_SIZE", 3)
    trail = trail_in(tmp_path)  # not started: nothing drains the queue
    start = time.monotonic()
    for _ in range(10):
        trail.application_started()
    elapsed = time.monotonic() - start
    print(f"\n10 events into a queue of 3: {trail.counts()} in {elapsed * 1000:.1f} ms")
    assert trail.counts()["dropped"] == 7
    with trail:
        assert trail.flush()
    assert trail.counts()["written"] == 3


@needs_openssl
def test_syslog_over_tls_octet_counted(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    listener = SyslogListener(pki)
    path, study_uid = dicom_file(tmp_path)
    try:
        trail = trail_in(
            tmp_path,
            syslog=("127.0.0.1", listener.port),
            syslog_context=syslog_context(pki / "ca.crt"),
        )
        with trail:
            every_event(trail, path, study_uid)
        frames = listener.wait_for(12)
    finally:
        listener.close()
    lines = [line for line, _ in read_messages(tmp_path / "audit")]
    print(f"\n{len(frames)} syslog frames over {listener.versions}, {trail.counts()}")
    assert len(frames) == len(lines) == 12 and trail.counts()["syslog_sent"] == 12
    assert set(listener.versions) <= {"TLSv1.2", "TLSv1.3"}
    for frame, line in zip(frames, lines, strict=True):
        parsed = SYSLOG_HEADER.match(frame)
        assert parsed is not None, frame[:80]
        assert parsed["msgid"] == b"DICOM+RFC3881" and parsed["app"] == b"mammoseg"
        assert parsed["msg"] == line
        outcome = ET.fromstring(line).find("EventIdentification").get("EventOutcomeIndicator")  # type: ignore[union-attr]
        # authpriv (10): notice for a success, warning for a minor failure
        assert int(parsed["pri"]) == {"0": 85, "4": 84}[str(outcome)]


@needs_openssl
def test_a_syslog_server_that_fails_verification_gets_nothing_the_files_everything(
    tmp_path: Path,
) -> None:
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")  # a CA that did not sign the server
    listener = SyslogListener(pki)
    try:
        trail = trail_in(
            tmp_path,
            syslog=("127.0.0.1", listener.port),
            syslog_context=syslog_context(other / "ca.crt"),
        )
        with trail:
            trail.application_started()
            assert trail.flush()
            time.sleep(0.5)
        counts = trail.counts()
    finally:
        listener.close()
    print(f"\nsyslog server with an unknown CA: {counts}")
    assert listener.frames == [] and counts["written"] == 1
    assert counts["syslog_errors"] >= 1 and counts["syslog_sent"] == 0


def test_day_files_older_than_the_horizon_go(tmp_path: Path) -> None:
    folder = tmp_path / "audit"
    folder.mkdir()
    for day in ("2020-01-01", "2020-01-02", "2020-01-03"):
        (folder / f"{day}.log").write_text("x\n")
    (folder / "notes.txt").write_text("kept")
    cutoff = calendar.timegm((2020, 1, 2, 12, 0, 0))  # noon UTC: that day's file stays
    assert delete_old_files(folder, before=cutoff) == 1
    assert sorted(p.name for p in folder.iterdir()) == [
        "2020-01-02.log",
        "2020-01-03.log",
        "notes.txt",
    ]


def test_syslog_settings(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, audit_syslog="[::1]:6514")
    assert split_host_port(settings.audit_syslog or "") == ("::1", 6514)
    assert settings.audit_dir is None and settings.audit_hashed_patient_ids is False
    assert split_host_port("syslog.example.org:6514") == ("syslog.example.org", 6514)
    for bad in ("syslog.example.org", "host:0", ":6514", "host:port"):
        with pytest.raises(SettingsError, match="audit_syslog"):
            load_settings(data_dir=tmp_path, audit_syslog=bad)
