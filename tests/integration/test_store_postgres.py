"""The same job store code on a real PostgreSQL: migrations, claims with SKIP LOCKED."""

from __future__ import annotations

import threading
import uuid

import pytest

from service.db import Database
from service.store import JobState, JobStore
from tests.pg import postgres_url  # noqa: F401 - fixture
from tests.unit.service.test_store import new_job

pytestmark = pytest.mark.slow


@pytest.fixture
def store(postgres_url: str) -> JobStore:  # noqa: F811
    # One schema per test keeps them independent on the shared server.
    db = Database(postgres_url)
    schema = f"t_{uuid.uuid4().hex[:8]}"
    conn = db.connect()
    conn.execute(f"CREATE SCHEMA {schema}")
    conn.close()
    return JobStore(Database(f"{postgres_url}?options=-csearch_path%3D{schema}"))


def test_roundtrip_and_recovery_on_postgres(store: JobStore) -> None:
    assert store.backend.dialect == "postgresql"
    job_id, created = store.add(new_job())
    assert created and store.add(new_job()) == (job_id, False)
    job = store.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w1")
    assert job is not None and job.owner == "w1"
    store.update(job_id, timings={"infer_s": 0.25})
    assert store.recover(owner="w2") == {"processing": 0, "sending": 0}
    assert store.recover(owner="w1") == {"processing": 1, "sending": 0}
    again = store.get(job_id)
    assert again is not None and again.state is JobState.RECEIVED
    assert again.timings["infer_s"] == 0.25
    assert store.is_writable()


def test_concurrent_claims_take_each_job_once_on_postgres(store: JobStore) -> None:
    for i in range(60):
        store.add(new_job(f"1.{i + 1}"))
    taken: list[int] = []
    lock = threading.Lock()

    def claim_all(name: str) -> None:
        while job := store.claim([JobState.RECEIVED], JobState.PROCESSING, owner=name):
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim_all, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted(j.id for j in store.list(limit=100))
    assert len(taken) == 60 == len(set(taken))
