"""Webhooks against receivers on 127.0.0.1: signed job.done, retries, dead letters, timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.store import JobState
from service.webhooks import DeliveryFailed, post
from tests.http_node import ADMIN, Peer, mammogram, node_state, running_node, send, wait_for
from tests.webhook_receiver import SECRET, receiver, verified

AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
PATIENT_NAME = "Webhookova^Jana"
PATIENT_ID = "PID-WEBHOOK-4242"


@pytest.mark.slow
def test_job_done_signed_retried_and_dead_lettered(tmp_path: Path) -> None:
    peer = Peer()
    with (
        receiver([200]) as good,
        receiver([500, 500, 200]) as flaky,
        receiver([500]) as broken,
    ):
        try:
            with running_node(
                tmp_path,
                peer,
                webhook_urls=[good.url, flaky.url, broken.url],
                webhook_secret=SECRET,
                webhook_timeout_s=2.0,
                webhook_retry_initial_s=0.2,
                webhook_retry_max_s=0.4,
                webhook_give_up_attempts=3,
            ) as node:
                ds = mammogram(seed=7, patient_name=PATIENT_NAME, patient_id=PATIENT_ID)
                assert send(node, ds) == [0]
                job = wait_for(lambda: next(iter(node.store.reads.list(limit=1)), None))
                wait_for(lambda: len(flaky.calls) >= 3 and len(good.calls) >= 1)
                client = TestClient(create_app(node_state(node)))
                dead = wait_for(
                    lambda: client.get("/api/v1/webhooks/dead-letters", headers=AS_ADMIN).json()[
                        "items"
                    ]
                )
                done = node.store.reads.get(job.id)
                page = client.get("/destinations", headers=AS_ADMIN).text
                # An admin sends the dead letter again: one more attempt reaches the receiver.
                tried = len(broken.calls)
                retried = client.post(
                    f"/api/v1/webhooks/dead-letters/{dead[0]['id']}/retry", headers=AS_ADMIN
                )
                wait_for(lambda: len(broken.calls) > tried)
                unauthorised = client.get("/api/v1/webhooks/dead-letters")
        finally:
            peer.close()

    assert done.state is JobState.DONE
    (call,) = good.calls
    body = verified(call)
    assert call.headers["X-Mammoseg-Event"] == "job.done" == body["event"]
    assert body["job_id"] == job.id and body["state"] == "DONE"
    assert body["sop_instance_uid"] == str(ds.SOPInstanceUID)
    assert body["study_instance_uid"] == str(ds.StudyInstanceUID)
    assert {r["kind"] for r in body["results"]} == set(done.results["uids"])  # type: ignore[union-attr]
    assert body["model"] == {
        "name": node.segmenter.contract.model_name,
        "version": node.segmenter.contract.model_version,
    }
    text = call.body.decode()
    for value in (PATIENT_NAME, PATIENT_ID, "Webhookova", str(ds.AccessionNumber)):
        assert value not in text

    # 500, 500, 200: the same delivery three times, the waits growing from the initial one.
    assert [verified(c)["job_id"] for c in flaky.calls] == [job.id] * 3
    assert len({c.headers["X-Mammoseg-Delivery"] for c in flaky.calls}) == 1
    gaps = [b.at - a.at for a, b in zip(flaky.calls, flaky.calls[1:], strict=False)]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4

    # Always 500: three attempts, then a dead letter, listed for the admin only.
    assert len(broken.calls) >= 3
    assert dead[0]["event"] == "job.done" and dead[0]["job_id"] == job.id
    assert dead[0]["attempts"] == 3 and dead[0]["last_error"] == "HTTP 500"
    assert dead[0]["receiver"] == broken.url.removesuffix("/hook")
    assert retried.status_code == 200 and retried.json()["state"] == "PENDING"
    assert unauthorised.status_code == 401
    assert unauthorised.headers["content-type"].startswith("application/problem+json")
    assert "data-dead-letters" in page and f"/api/v1/webhooks/dead-letters/{dead[0]['id']}" in page


def test_a_hanging_receiver_is_cut_off_by_the_timeout() -> None:
    with receiver([200], delay_s=3.0) as slow:
        started = time.monotonic()
        with pytest.raises(DeliveryFailed):
            post(slow.url, b"{}", {"Content-Type": "application/json"}, timeout_s=0.3)
        took = time.monotonic() - started
    assert took < 2.5  # bounded by the timeout, not by the receiver's 3 s


def test_redirects_are_not_followed() -> None:
    with receiver([302]) as moved:
        with pytest.raises(DeliveryFailed, match="HTTP 302"):
            post(moved.url, b"{}", {}, timeout_s=2.0)
    assert len(moved.calls) == 1


@pytest.mark.slow
def test_notices_on_postgres_and_a_failed_insert_keeps_the_job(tmp_path: Path) -> None:
    """PostgreSQL aborts a whole transaction on a failed statement: the savepoint saves it."""
    import uuid

    from service.db import Database, Pool
    from service.store import JobStore
    from tests.pg import postgres
    from tests.unit.service.test_webhooks import new_job

    with postgres() as url:
        schema = f"t_{uuid.uuid4().hex[:8]}"
        pool = Pool(Database(url), size=1, overflow=0)
        with pool.write() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        pool.dispose()
        database = Database(f"{url}?options=-csearch_path%3D{schema}")
        store = JobStore(database, webhook_urls=["http://127.0.0.1:9/hook"])
        first, _ = store.queue.add(new_job("1.2.3.1"))
        store.queue.update(first, state=JobState.FAILED, reason="unreadable")
        (notice,) = store.notices.claim_due(lease_s=10)
        assert store.notices.claim_due(lease_s=10) == []  # leased
        store.notices.failed(notice.id, "HTTP 500", retry_at=None)
        assert [n.id for n in store.notices.dead_letters()] == [notice.id]
        assert store.notices.retry(notice.id).attempts == 0
        second, _ = store.queue.add(new_job("1.2.3.2"))
        with store.pool.write() as conn:
            conn.execute("DROP TABLE webhook_notices")
        store.queue.update(second, state=JobState.DONE)
        done = store.reads.get(second)
        counters = store.reads.counters()
        store.close()
    assert done is not None and done.state is JobState.DONE
    assert counters["webhooks.insert_failed"] == 1
