import threading
from pathlib import Path

from service.store import JobState, JobStore, NewJob


def new_job(uid: str = "1.2.3.4") -> NewJob:
    return NewJob(
        sop_instance_uid=uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        association_id="assoc-1",
        path=f"/spool/{uid}.dcm",
    )


def test_add_claim_update_roundtrip(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id, created = store.queue.add(new_job())
    assert created
    job = store.queue.claim([JobState.RECEIVED], JobState.PROCESSING)
    assert job is not None and job.id == job_id and job.state is JobState.PROCESSING
    assert store.queue.claim([JobState.RECEIVED], JobState.PROCESSING) is None
    store.queue.update(
        job_id, state=JobState.DONE, timings={"infer_s": 0.5}, results={"uids": {"seg": "1.2.9"}}
    )
    done = store.reads.get(job_id)
    assert done is not None and done.state is JobState.DONE
    assert done.timings["infer_s"] == 0.5 and "received_at" in done.timings
    assert done.results["uids"]["seg"] == "1.2.9"
    assert store.reads.counts()["DONE"] == 1


def test_same_instance_while_open_makes_no_second_job(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    first, _ = store.queue.add(new_job())
    again, created = store.queue.add(new_job())
    assert (again, created) == (first, False)
    store.queue.update(first, state=JobState.DONE)
    third, created = store.queue.add(new_job())
    assert created and third != first


def test_recover_after_crash(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    a, _ = store.queue.add(new_job("1.1"))
    b, _ = store.queue.add(new_job("1.2"))
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING)
    store.queue.update(b, state=JobState.SENDING)
    reopened = JobStore(path)
    assert reopened.queue.recover() == {"processing": 1, "sending": 1, "quarantined": 0}
    assert reopened.reads.get(a).state is JobState.RECEIVED  # type: ignore[union-attr]
    assert reopened.reads.get(b).state is JobState.RETRYING  # type: ignore[union-attr]


def test_retrying_is_claimed_only_when_due(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    job_id, _ = store.queue.add(new_job())
    store.queue.update(job_id, state=JobState.RETRYING, next_attempt_at=1000.0)
    assert store.queue.claim([JobState.RETRYING], JobState.SENDING, now=999.0) is None
    assert store.queue.claim([JobState.RETRYING], JobState.SENDING, now=1000.0) is not None


def test_concurrent_claims_take_each_job_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(40):
        store.queue.add(new_job(f"1.{i + 1}"))
    taken: list[int] = []
    lock = threading.Lock()

    def claim_all() -> None:
        while (job := store.queue.claim([JobState.RECEIVED], JobState.PROCESSING)) is not None:
            with lock:
                taken.append(job.id)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == list(range(1, 41))


def test_every_role_borrows_from_one_pool_and_gives_back(tmp_path: Path) -> None:
    """One engine for the store: 8 threads share it, and no connection stays checked out."""
    store = JobStore(tmp_path / "jobs.sqlite3", pool_size=2)
    roles = (store.queue, store.admin, store.audit, store.reads, store.housekeeping)
    assert {id(role.pool) for role in roles} == {id(store.pool)}
    errors: list[BaseException] = []

    def busy(worker: int) -> None:
        try:
            for i in range(25):
                job_id, _ = store.queue.add(new_job(f"1.2.{worker}.{i}"))
                store.audit.opened(f"a-{worker}-{i}", "PACS", "127.0.0.1")
                assert store.reads.get(job_id) is not None
                store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner=f"w{worker}")
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=busy, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.reads.counts()["PROCESSING"] == 200
    assert store.pool.engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    store.close()
