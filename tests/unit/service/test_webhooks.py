"""Webhook notices: the body (identifiers only), the signature, the store's notice life."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import pytest

from service.settings import SettingsError, load_settings
from service.store import JobConflict, JobState, JobStore, NewJob, NoticeNotFound, NoticeState
from service.store.records import JOB_DONE, JOB_FAILED
from service.webhooks import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookPolicy,
    signature,
    signed_headers,
)
from service.worker import RetryPolicy

URL = "http://127.0.0.1:9/hook"
SECRET = b"webhook-secret-0123456789"


def new_job(uid: str = "1.2.826.0.1.3680043.2.1125.1") -> NewJob:
    return NewJob(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid="1.2.3.4",
        series_instance_uid="1.2.3.4.5",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        association_id="a1",
        path="/nowhere.dcm",
        content_hash="abc",
        accession_number="ACC-SECRET-77",
    )


def store_with_urls(tmp_path: Path, urls: list[str] | None = None) -> JobStore:
    return JobStore(tmp_path / "jobs.sqlite3", webhook_urls=[URL] if urls is None else urls)


def test_done_writes_one_notice_per_url_in_the_jobs_transaction(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path, [URL, "https://example.org/b"])
    job_id, _ = store.queue.add(new_job())
    results = {"uids": {"seg": "1.2.9", "sr": "1.2.10"}, "model": {"name": "m", "version": "1"}}
    store.queue.update(job_id, state=JobState.SENDING, results=results)
    assert store.notices.claim_due(lease_s=10) == []  # SENDING raises nothing
    store.queue.update(job_id, state=JobState.DONE)
    notices = store.notices.claim_due(lease_s=10)
    assert sorted(n.url for n in notices) == sorted([URL, "https://example.org/b"])
    assert len({n.delivery_id for n in notices}) == 2
    body = json.loads(notices[0].body)
    assert body["event"] == JOB_DONE == notices[0].event
    assert body["job_id"] == job_id and body["state"] == "DONE" and body["reason"] is None
    assert body["sop_instance_uid"] == new_job().sop_instance_uid
    assert body["study_instance_uid"] == "1.2.3.4"
    assert body["series_instance_uid"] == "1.2.3.4.5"
    assert body["results"] == [
        {"kind": "seg", "sop_instance_uid": "1.2.9"},
        {"kind": "sr", "sop_instance_uid": "1.2.10"},
    ]
    assert body["model"] == {"name": "m", "version": "1"}
    assert body["time"].endswith("Z") and body["time"][10] == "T"


def test_failed_notice_has_the_reason_and_no_patient_data(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path)
    job_id, _ = store.queue.add(new_job())
    store.queue.update(job_id, state=JobState.FAILED, reason="not a mammogram")
    (notice,) = store.notices.claim_due(lease_s=10)
    body = json.loads(notice.body)
    assert notice.event == JOB_FAILED and body["reason"] == "not a mammogram"
    assert body["model"] is None and body["results"] == []
    assert "ACC-SECRET-77" not in notice.body  # the Accession Number stays in the node


def test_a_quarantined_job_raises_job_failed(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3", quarantine_after=1, webhook_urls=[URL])
    job_id, _ = store.queue.add(new_job())
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w#1@h")
    store.queue.recover(owner="w#1@h")
    (notice,) = store.notices.claim_due(lease_s=10)
    assert notice.job_id == job_id and json.loads(notice.body)["reason"].startswith("quarantined")


def test_no_urls_no_notices(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path, [])
    job_id, _ = store.queue.add(new_job())
    store.queue.update(job_id, state=JobState.DONE)
    assert store.notices.counts() == {"PENDING": 0, "DELIVERED": 0, "DEAD": 0}
    assert store.notices.notify("exam.complete", {"study_instance_uid": "1.2"}) == 0


def test_a_notice_that_cannot_be_written_leaves_the_job_done(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path)
    job_id, _ = store.queue.add(new_job())
    with store.pool.write() as conn:
        conn.execute("DROP TABLE webhook_notices")
    store.queue.update(job_id, state=JobState.DONE)
    assert store.reads.get(job_id).state is JobState.DONE
    assert store.reads.counters()["webhooks.insert_failed"] == 1


def test_notify_exam_complete_and_unknown_events(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path)
    assert store.notices.notify("exam.complete", {"study_instance_uid": "1.2.3"}, now=0.5) == 1
    (notice,) = store.notices.claim_due(lease_s=10)
    assert json.loads(notice.body) == {
        "event": "exam.complete",
        "study_instance_uid": "1.2.3",
        "time": "1970-01-01T00:00:00.500000Z",
    }
    with pytest.raises(ValueError, match="unknown webhook event"):
        store.notices.notify("job.exploded", {})


def test_claim_leases_then_retry_and_dead_letter(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path)
    store.notices.notify("exam.complete", {}, now=100.0)
    (notice,) = store.notices.claim_due(lease_s=30, now=100.0)
    assert notice.attempts == 1
    assert store.notices.claim_due(lease_s=30, now=110.0) == []  # leased to the first sender
    store.notices.failed(notice.id, "HTTP 500", retry_at=120.0, now=111.0)
    assert store.notices.claim_due(lease_s=30, now=119.0) == []
    (again,) = store.notices.claim_due(lease_s=30, now=120.0)
    assert again.attempts == 2
    store.notices.failed(again.id, "HTTP 500", retry_at=None, now=121.0)
    (dead,) = store.notices.dead_letters()
    assert dead.state is NoticeState.DEAD and dead.last_error == "HTTP 500"
    assert store.notices.counts()["DEAD"] == 1
    retried = store.notices.retry(dead.id, now=130.0)
    assert retried.state is NoticeState.PENDING and retried.attempts == 0
    with pytest.raises(JobConflict):
        store.notices.retry(dead.id)
    with pytest.raises(NoticeNotFound):
        store.notices.retry(9999)


def test_signature_is_the_hmac_of_timestamp_dot_body(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path)
    store.notices.notify("exam.complete", {"study_instance_uid": "1.2"})
    (notice,) = store.notices.claim_due(lease_s=10)
    headers = signed_headers(notice, SECRET, now=1700000000.7)
    assert headers[TIMESTAMP_HEADER] == "1700000000"
    assert headers[EVENT_HEADER] == "exam.complete"
    assert headers[DELIVERY_HEADER] == notice.delivery_id
    expected = hmac.new(SECRET, b"1700000000." + notice.body.encode(), hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert (
        signature(b"another-secret-0123456", "1700000000", notice.body.encode())
        != (headers[SIGNATURE_HEADER])
    )


def test_backoff_gives_up_after_attempts_or_seconds(tmp_path: Path) -> None:
    store = store_with_urls(tmp_path)
    store.notices.notify("exam.complete", {}, now=0.0)
    (notice,) = store.notices.claim_due(lease_s=10, now=0.0)
    policy = WebhookPolicy(
        secret=SECRET,
        timeout_s=1.0,
        retry=RetryPolicy(initial_s=1.0, max_s=4.0, give_up_s=100.0),
        give_up_attempts=3,
    )
    assert policy.retry_at(notice, now=0.0) == 1.0
    from dataclasses import replace

    assert policy.retry_at(replace(notice, attempts=2), now=10.0) == 12.0
    assert policy.retry_at(replace(notice, attempts=3), now=10.0) is None  # attempts spent
    assert policy.retry_at(replace(notice, attempts=1), now=99.5) is None  # past give_up_s


def test_webhook_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="webhook_urls"):
        load_settings(webhook_urls=["ftp://example.org/x"], webhook_secret=SECRET.decode())
    with pytest.raises(SettingsError, match="needs webhook_secret"):
        load_settings(webhook_urls=["https://example.org/x"])
    with pytest.raises(SettingsError, match="no user or password"):
        load_settings(webhook_urls=["https://u:p@example.org/x"], webhook_secret=SECRET.decode())
    with pytest.raises(SettingsError) as short:
        load_settings(webhook_urls=["https://example.org/x"], webhook_secret="short-secret")
    assert "short-secret" not in str(short.value)
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET.decode() + "\n")
    settings = load_settings(
        webhook_urls="https://example.org/x, http://127.0.0.1:8080/y",
        webhook_secret_file=secret_file,
    )
    assert settings.webhook_urls == ["https://example.org/x", "http://127.0.0.1:8080/y"]
    assert settings.webhook_key() == SECRET
