"""The REST API and pages over a real job store (TestClient; no SCP, no workers)."""

from __future__ import annotations

import hashlib
import io
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.store import JobState, JobStore, NewJob
from service.testkit.synthetic import write
from tests.http_node import ADMIN, VIEWER, Peer, app_state, mammogram, settings_for

AS_VIEWER = {"Authorization": f"Bearer {VIEWER}"}
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
READS = [
    "/api/v1/jobs",
    "/api/v1/jobs/1",
    "/api/v1/stats",
    "/api/v1/destinations",
    "/api/v1/associations",
    "/api/v1/model",
    "/metrics",
]
PAGES = ["/", "/jobs", "/jobs/1", "/destinations", "/associations", "/model", "/upload"]


def client_for(tmp_path: Path, host: str = "testclient", **overrides: Any) -> TestClient:
    state = app_state(settings_for(tmp_path, **overrides))
    return TestClient(create_app(state), client=(host, 50000))


def store_of(client: TestClient) -> JobStore:
    return client.app.state.node.store  # type: ignore[attr-defined,no-any-return]


def add_job(
    store: JobStore,
    uid: str = "1.2.3.4",
    *,
    caller: str = "PACS",
    now: float = 0,
    path: Path | None = None,
) -> int:
    job_id, _ = store.queue.add(
        NewJob(
            sop_instance_uid=uid,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
            study_instance_uid="1.2.3",
            series_instance_uid="1.2.3.1",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            calling_ae_title=caller,
            association_id="assoc-1",
            path=str(path or f"/nonexistent/{uid}.dcm"),
        ),
        now=now or None,
    )
    return job_id


def failed_send(store: JobStore, outbox: Path, uid: str = "1.2.3.4") -> int:
    job_id = add_job(store, uid)
    folder = outbox / str(job_id)
    folder.mkdir(parents=True)
    (folder / "seg.dcm").write_bytes(b"x")
    store.queue.update(
        job_id,
        state=JobState.FAILED,
        reason="gave up sending after 4 attempts: DEST unreachable",
        results={"files": [str(folder / "seg.dcm")], "uids": {"seg": "1.2.9"}},
        attempts=4,
        first_send_failure_at=1.0,
    )
    return job_id


@pytest.fixture
def client(tmp_path: Path) -> TestClient:
    return client_for(tmp_path)


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    return body


# -- access ---------------------------------------------------------------
def test_reads_need_a_token(client: TestClient) -> None:
    add_job(store_of(client))
    for url in READS:
        missing = client.get(url)
        assert_problem(missing, 401)
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert_problem(
            client.get(url, headers={"Authorization": "Bearer wrong-token-xxxxxxx"}), 401
        )
        assert client.get(url, headers=AS_VIEWER).status_code == 200, url
        assert client.get(url, headers=AS_ADMIN).status_code == 200, url
    for url in ("/healthz", "/readyz", "/docs", "/openapi.json"):
        assert client.get(url).status_code == 200, url


def test_pages_send_a_browser_without_a_session_to_login(client: TestClient) -> None:
    for url in PAGES:
        response = client.get(url, follow_redirects=False)
        assert response.status_code == 303, url
        assert response.headers["location"].startswith("/login?next=")
    assert client.get("/fragments/jobs").status_code == 401


def test_loopback_reads_without_a_token_but_not_from_elsewhere(tmp_path: Path) -> None:
    local = client_for(tmp_path / "a", host="127.0.0.1", read_access="loopback")
    remote = client_for(tmp_path / "b", host="192.0.2.7", read_access="loopback")
    assert local.get("/api/v1/jobs").status_code == 200
    assert local.get("/jobs").status_code == 200
    assert_problem(remote.get("/api/v1/jobs"), 401)
    assert remote.get("/api/v1/jobs", headers=AS_VIEWER).status_code == 200


def test_open_reads_still_refuse_a_wrong_token(tmp_path: Path) -> None:
    client = client_for(tmp_path, read_access="open")
    assert client.get("/api/v1/jobs").status_code == 200
    assert_problem(client.get("/api/v1/jobs", headers={"Authorization": "Bearer nope"}), 401)


def test_actions_need_the_admin_token_and_change_nothing_without(client: TestClient) -> None:
    store = store_of(client)
    job_id = failed_send(store, client.app.state.node.settings.outbox_dir)  # type: ignore[attr-defined]
    events = len(store.reads.events(job_id))
    for headers in ({}, AS_VIEWER, {"Authorization": "Bearer wrong-token-xxxxxxx"}):
        for action in ("retry", "reprocess"):
            assert_problem(client.post(f"/api/v1/jobs/{job_id}/{action}", headers=headers), 401)
    assert_problem(client.post("/api/v1/destinations/DEST/echo", headers=AS_VIEWER), 401)
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.FAILED
    assert len(store.reads.events(job_id)) == events
    done = client.post(f"/api/v1/jobs/{job_id}/retry", headers=AS_ADMIN)
    assert done.status_code == 200 and done.json()["state"] == "RETRYING"


def test_without_an_admin_token_actions_are_disabled(tmp_path: Path) -> None:
    client = client_for(tmp_path, admin_token=None)
    store = store_of(client)
    job_id = failed_send(store, client.app.state.node.settings.outbox_dir)  # type: ignore[attr-defined]
    body = assert_problem(client.post(f"/api/v1/jobs/{job_id}/retry", headers=AS_VIEWER), 401)
    assert "no admin_token" in body["detail"]
    assert store.reads.get(job_id).state is JobState.FAILED  # type: ignore[union-attr]


def test_a_browser_session_acts_only_with_the_script_header(client: TestClient) -> None:
    store = store_of(client)
    job_id = failed_send(store, client.app.state.node.settings.outbox_dir)  # type: ignore[attr-defined]
    bad = client.post("/login", data={"token": "not-a-token-at-all", "next": "/jobs"})
    assert bad.status_code == 401 and "not valid" in bad.text
    login = client.post(
        "/login", data={"token": ADMIN, "next": "https://evil.example/"}, follow_redirects=False
    )
    assert login.status_code == 303 and login.headers["location"] == "/"
    cookie = login.headers["set-cookie"]
    assert ADMIN not in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert client.get("/jobs").status_code == 200
    assert_problem(client.post(f"/api/v1/jobs/{job_id}/retry"), 403)
    assert store.reads.get(job_id).state is JobState.FAILED  # type: ignore[union-attr]
    ok = client.post(f"/api/v1/jobs/{job_id}/retry", headers={"X-Requested-With": "mammoseg"})
    assert ok.status_code == 200
    client.post("/logout")
    assert client.get("/jobs", follow_redirects=False).status_code == 303


# -- jobs -----------------------------------------------------------------
def test_jobs_filter_and_page(client: TestClient) -> None:
    store = store_of(client)
    a = add_job(store, "1.1", now=1_700_000_000)
    b = add_job(store, "1.2", caller="OTHER", now=1_700_000_100)
    c = add_job(store, "1.3", now=1_700_000_200)
    store.queue.update(a, state=JobState.DONE, delivered=["DEST@127.0.0.1:104"])
    store.queue.update(b, state=JobState.FAILED, reason="bad")
    store.queue.update(c, state=JobState.RETRYING, reason="down")

    def ids(**params: Any) -> list[int]:
        body = client.get("/api/v1/jobs", params=params, headers=AS_VIEWER).json()
        return [item["id"] for item in body["items"]]

    assert ids(state=["FAILED", "RETRYING"]) == [c, b]
    assert ids(since="2023-11-14T22:14:00Z", until="2023-11-14T22:16:00Z") == [b]
    assert ids(destination="DEST@127.0.0.1:104") == [a]
    assert ids(calling_ae="OTHER") == [b]
    page = client.get("/api/v1/jobs", params={"limit": 1, "offset": 1}, headers=AS_VIEWER).json()
    assert [i["id"] for i in page["items"]] == [b] and page["total"] == 3
    assert page["counts"]["DONE"] == 1
    assert_problem(client.get("/api/v1/jobs", params={"limit": 0}, headers=AS_VIEWER), 422)
    assert_problem(client.get("/api/v1/jobs", params={"state": "NOPE"}, headers=AS_VIEWER), 422)


def test_times_are_iso_8601_utc_and_round_trip_as_since_and_until(client: TestClient) -> None:
    store = store_of(client)
    # Not on a microsecond: the API must not round it up past the stored time.
    job_id = add_job(store, now=1_765_052_103.1234567)
    item = client.get("/api/v1/jobs", headers=AS_VIEWER).json()["items"][0]
    created = item["created_at"]
    assert isinstance(created, str) and created.endswith("Z"), created
    moment = datetime.fromisoformat(created)
    assert moment.utcoffset() is not None and moment.utcoffset().total_seconds() == 0
    assert moment == datetime(2025, 12, 6, 20, 15, 3, 123456, tzinfo=UTC)
    assert isinstance(item["timings"]["received_at"], float)  # raw epoch seconds, as stored

    def ids(**params: str) -> list[int]:
        page = client.get("/api/v1/jobs", params=params, headers=AS_VIEWER).json()
        return [i["id"] for i in page["items"]]

    assert ids(since=created) == [job_id]
    assert ids(until=created) == []
    detail = client.get(f"/api/v1/jobs/{job_id}", headers=AS_VIEWER).json()
    assert detail["created_at"] == created and detail["events"][0]["at"] == created
    stats = client.get("/api/v1/stats", headers=AS_VIEWER).json()
    assert datetime.fromisoformat(stats["until"]) > datetime.fromisoformat(stats["since"])
    assert stats["window_s"] == 3600

    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["JobOut"]["properties"]["created_at"] == {
        "type": "string",
        "format": "date-time",
        "title": "Created At",
    }
    for model, field in [
        ("JobOut", "next_attempt_at"),
        ("JobOut", "updated_at"),
        ("JobOut", "files_deleted_at"),
        ("EventOut", "at"),
        ("StageOut", "ended_at"),
        ("StatsOut", "since"),
        ("StatsOut", "until"),
        ("AssociationOut", "started_at"),
        ("AssociationOut", "ended_at"),
    ]:
        prop = schemas[model]["properties"][field]
        formats = [prop.get("format")] + [x.get("format") for x in prop.get("anyOf", [])]
        assert "date-time" in formats, (model, field, prop)
    assert schemas["StatsOut"]["properties"]["window_s"]["type"] == "number"


def test_job_detail_has_stages_reason_results_and_retries(client: TestClient) -> None:
    store = store_of(client)
    job_id = add_job(store, now=100.0)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, now=101.0)
    store.queue.update(
        job_id,
        state=JobState.SENDING,
        timings={"decode_s": 0.5, "preprocess_s": 0.1, "infer_s": 0.4, "postprocess_build_s": 0.3},
        results={"uids": {"seg": "1.2.9", "sc": "1.2.10"}, "files": [], "lesion_pixels": 42},
    )
    store.queue.update(job_id, state=JobState.RETRYING, reason="DEST: no answer", attempts=1)
    store.queue.update(
        job_id, state=JobState.DONE, reason="", timings={"send_s": 0.2, "done_at": 110.0}
    )
    body = client.get(f"/api/v1/jobs/{job_id}", headers=AS_VIEWER).json()
    stages = {s["stage"]: s for s in body["stages"]}
    assert list(stages) == ["received", "decoded", "inferred", "built", "sent"]
    assert stages["received"]["seconds"] == pytest.approx(1.0)
    assert stages["inferred"]["seconds"] == pytest.approx(0.5)
    assert stages["inferred"]["ended_at"] == "1970-01-01T00:01:42Z"
    assert stages["sent"]["seconds"] == pytest.approx(0.2)
    assert body["total_s"] == pytest.approx(10.0)
    assert body["retries"] == 1 and body["attempts"] == 1
    assert body["result_uids"] == {"seg": "1.2.9", "sc": "1.2.10"}
    assert [e["state"] for e in body["events"]][-2:] == ["RETRYING", "DONE"]
    assert body["can_reprocess"] and not body["can_retry"]
    assert_problem(client.get("/api/v1/jobs/999", headers=AS_VIEWER), 404)


def test_a_commit_pending_job_shows_its_commitment_in_the_api_and_page(
    client: TestClient,
) -> None:
    store = store_of(client)
    job_id = add_job(store)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING)
    store.queue.update(job_id, state=JobState.SENDING, delivered=["PACS@h:104"])
    store.commitments.requested(
        job_id, generation=0, destination="PACS@h:104", transaction_uid="1.2.77", instances=3
    )
    store.commitments.settle(
        job_id, generation=0, destinations=["PACS@h:104"], due_at=time.time() + 3600
    )
    body = client.get(f"/api/v1/jobs/{job_id}", headers=AS_VIEWER).json()
    assert body["state"] == "COMMIT_PENDING"
    assert body["events"][-1]["detail"] == "waiting for storage commitment from PACS@h:104"
    (commitment,) = body["commitments"]
    assert commitment["outcome"] == "pending" and commitment["transaction_uid"] == "1.2.77"
    listing = client.get("/api/v1/jobs?state=COMMIT_PENDING", headers=AS_VIEWER).json()
    assert [j["id"] for j in listing["items"]] == [job_id]
    assert listing["counts"]["COMMIT_PENDING"] == 1
    page = client.get(f"/jobs/{job_id}", headers=AS_VIEWER)
    assert page.status_code == 200
    assert 'data-commitment="pending"' in page.text and "1.2.77" in page.text


def test_retry_and_reprocess_follow_the_state_rules(client: TestClient) -> None:
    store = store_of(client)
    settings = client.app.state.node.settings  # type: ignore[attr-defined]
    open_job = add_job(store, "1.1")
    assert_problem(client.post(f"/api/v1/jobs/{open_job}/retry", headers=AS_ADMIN), 409)
    assert_problem(client.post(f"/api/v1/jobs/{open_job}/reprocess", headers=AS_ADMIN), 409)
    assert_problem(client.post("/api/v1/jobs/999/retry", headers=AS_ADMIN), 404)

    bad_input = add_job(store, "1.2")
    store.queue.update(bad_input, state=JobState.FAILED, reason="cannot decode")
    body = assert_problem(client.post(f"/api/v1/jobs/{bad_input}/retry", headers=AS_ADMIN), 409)
    assert "reprocess" in body["detail"]
    # The spool file is gone: reprocessing cannot work.
    body = assert_problem(client.post(f"/api/v1/jobs/{bad_input}/reprocess", headers=AS_ADMIN), 409)
    assert "spool" in body["detail"]

    job_id, _ = job_with_file(client)
    folder = settings.outbox_dir / str(job_id)
    folder.mkdir(parents=True)
    store.queue.update(job_id, state=JobState.DONE, results={"files": [str(folder / "sc.dcm")]})
    reprocessed = client.post(f"/api/v1/jobs/{job_id}/reprocess", headers=AS_ADMIN)
    assert reprocessed.status_code == 200, reprocessed.text
    assert reprocessed.json()["state"] == "RECEIVED" and reprocessed.json()["result_uids"] == {}
    assert not (settings.outbox_dir / str(job_id)).exists()


def test_stats_give_rates_and_percentiles(client: TestClient) -> None:
    import time

    store = store_of(client)
    now = time.time()
    for i, decode in enumerate([0.1, 0.2, 0.3, 0.4, 1.0]):
        job_id = add_job(store, f"1.{i + 1}", now=now - 100)
        store.queue.update(
            job_id,
            state=JobState.DONE,
            timings={"decode_s": decode, "done_at": now - 50},
            now=now - 50,
        )
    failed = add_job(store, "1.9", now=now - 10)
    store.queue.update(failed, state=JobState.FAILED, reason="x", now=now - 5)
    body = client.get("/api/v1/stats", params={"window_s": 600}, headers=AS_VIEWER).json()
    assert body["done"] == 5 and body["failed"] == 1 and body["received"] == 6
    assert body["images_per_minute"] == pytest.approx(0.5)
    latency = {x["stage"]: x for x in body["latency"]}
    assert latency["decoded"]["p50_s"] == pytest.approx(0.3)
    assert latency["decoded"]["p95_s"] == pytest.approx(1.0)
    assert latency["total"]["p50_s"] == pytest.approx(50, abs=1)
    assert sum(body["throughput"]["done"]) == 5
    assert body["counts"]["DONE"] == 5
    assert_problem(client.get("/api/v1/stats", params={"window_s": 1}, headers=AS_VIEWER), 422)


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in metrics"
    return float(match.group(1))


def test_metrics_for_prometheus(client: TestClient) -> None:
    store = store_of(client)
    first = metric(
        client.get("/metrics", headers=AS_VIEWER).text,
        "mammoseg_stage_seconds_count",
        '{stage="decoded"}',
    )
    job_id = add_job(store)
    store.queue.update(job_id, state=JobState.RETRYING, reason="down", next_attempt_at=0.0)
    store.queue.update(job_id, state=JobState.DONE, timings={"decode_s": 0.2, "done_at": 5.0})
    add_job(store, "1.5")
    store.audit.opened("assoc-a", "PACS", "127.0.0.1")
    store.audit.closed("assoc-a", 2, "released")
    text = client.get("/metrics", headers=AS_VIEWER).text
    assert metric(text, "mammoseg_stage_seconds_count", '{stage="decoded"}') == first + 1
    assert metric(text, "mammoseg_jobs", '{state="DONE"}') == 1
    assert metric(text, "mammoseg_queue_depth") == 1
    assert metric(text, "mammoseg_associations_total", '{outcome="released"}') == 1
    assert metric(text, "mammoseg_retries_total") == 1
    assert metric(text, "mammoseg_free_disk_bytes") > 0
    assert 'mammoseg_model_info{name="TinyBlobModel"' in text
    # Read once: a second scrape does not count the same job again.
    again = client.get("/metrics", headers=AS_VIEWER).text
    assert metric(again, "mammoseg_stage_seconds_count", '{stage="decoded"}') == first + 1


def test_destinations_and_echo(tmp_path: Path) -> None:
    peer = Peer()
    try:
        from tests.conftest import free_port

        closed = f"GONE@127.0.0.1:{free_port()}"
        client = client_for(tmp_path, destinations=[peer.name, closed], send_timeout_s=2)
        listed = client.get("/api/v1/destinations", headers=AS_VIEWER).json()
        assert [d["name"] for d in listed] == [peer.name, closed]
        ok = client.post(f"/api/v1/destinations/{peer.name}/echo", headers=AS_ADMIN).json()
        assert ok["ok"] is True and ok["status"] == 0
        by_title = client.post("/api/v1/destinations/DEST/echo", headers=AS_ADMIN).json()
        assert by_title["destination"] == peer.name
        down = client.post("/api/v1/destinations/GONE/echo", headers=AS_ADMIN).json()
        assert down["ok"] is False and down["detail"]
        assert_problem(client.post("/api/v1/destinations/NOPE/echo", headers=AS_ADMIN), 404)
    finally:
        peer.close()


def test_model_info(client: TestClient) -> None:
    body = client.get("/api/v1/model", headers=AS_VIEWER).json()
    path = client.app.state.node.settings.model_path  # type: ignore[attr-defined]
    assert body["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert body["contract"]["input_height"] == 64 and body["name"] == "TinyBlobModel"
    assert body["threshold_in_use"] == 0.5


def test_associations_listed(client: TestClient) -> None:
    store = store_of(client)
    store.audit.opened("assoc-a", "PACS", "127.0.0.1", now=1_700_000_000)
    store.audit.closed("assoc-a", 3, "released")
    store.audit.rejected("assoc-b", "EVIL", "127.0.0.2", now=1_700_000_100)
    body = client.get("/api/v1/associations", headers=AS_VIEWER).json()
    assert [(a["calling_ae_title"], a["outcome"], a["instances"]) for a in body["items"]] == [
        ("EVIL", "rejected", 0),
        ("PACS", "released", 3),
    ]
    assert body["items"][1]["started_at"] == "2023-11-14T22:13:20Z"
    only_since = client.get(
        "/api/v1/associations",
        params={"since": body["items"][0]["started_at"]},
        headers=AS_VIEWER,
    ).json()
    assert [a["calling_ae_title"] for a in only_since["items"]] == ["EVIL"]
    only = client.get(
        "/api/v1/associations", params={"outcome": "rejected"}, headers=AS_VIEWER
    ).json()
    assert only["total"] == 1
    assert_problem(
        client.get("/api/v1/associations", params={"outcome": "x"}, headers=AS_VIEWER), 422
    )


# -- patient data and images ----------------------------------------------
def job_with_file(client: TestClient, **kw: Any) -> tuple[int, Any]:
    settings = client.app.state.node.settings  # type: ignore[attr-defined]
    ds = mammogram(**kw)
    settings.spool_dir.mkdir(parents=True, exist_ok=True)
    path = write(ds, settings.spool_dir / f"{ds.SOPInstanceUID}.dcm")
    job_id = add_job(store_of(client), str(ds.SOPInstanceUID), path=path)
    return job_id, ds


def test_no_patient_data_in_the_api_or_pages(client: TestClient) -> None:
    job_id, ds = job_with_file(client)
    client.post("/login", data={"token": VIEWER, "next": "/"})
    texts = [client.get(url, headers=AS_VIEWER).text for url in [*READS, *PAGES]]
    texts.append(client.get(f"/api/v1/jobs/{job_id}", headers=AS_VIEWER).text)
    texts.append(client.get(f"/jobs/{job_id}").text)
    for phi in (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, "Synthetic"):
        assert all(phi not in text for text in texts), phi


def test_patient_data_only_when_allowed(tmp_path: Path) -> None:
    client = client_for(tmp_path, show_patient_data=True)
    job_id, ds = job_with_file(client)
    body = client.get(f"/api/v1/jobs/{job_id}", headers=AS_VIEWER).json()
    assert body["patient"] == {
        "name": str(ds.PatientName),
        "id": ds.PatientID,
        "birth_date": ds.PatientBirthDate,
    }


def test_thumbnails(client: TestClient) -> None:
    job_id, ds = job_with_file(client)
    response = client.get(f"/api/v1/jobs/{job_id}/images/input.png", headers=AS_VIEWER)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert max(image.size) <= 512 and image.size[0] / image.size[1] == pytest.approx(
        ds.Columns / ds.Rows, abs=0.01
    )
    assert_problem(client.get(f"/api/v1/jobs/{job_id}/images/overlay.png", headers=AS_VIEWER), 404)
    assert_problem(client.get(f"/api/v1/jobs/{job_id}/images/x.png", headers=AS_VIEWER), 422)
    burned, _ = job_with_file(client, seed=2)
    path = store_of(client).reads.get(burned).path  # type: ignore[union-attr]
    from pydicom import dcmread

    marked = dcmread(path)
    marked.BurnedInAnnotation = "YES"
    marked.save_as(path)
    assert_problem(client.get(f"/api/v1/jobs/{burned}/images/input.png", headers=AS_VIEWER), 403)


def test_docs_and_assets_come_from_this_node(client: TestClient) -> None:
    docs = client.get("/docs").text
    assert "/static/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()
    assert client.get("/static/swagger-ui-bundle.js").status_code == 200
    client.post("/login", data={"token": VIEWER, "next": "/"})
    for url in [p for p in PAGES if p != "/jobs/1"]:
        page = client.get(url)
        assert "http://" not in page.text and "https://" not in page.text, url
        assert "default-src 'self'" in page.headers["content-security-policy"]
    spec = client.get("/openapi.json").json()
    for path in (
        "/api/v1/jobs/{job_id}/retry",
        "/api/v1/jobs/{job_id}/reprocess",
        "/api/v1/segment",
        "/api/v1/destinations/{name}/echo",
        "/metrics",
    ):
        assert path in spec["paths"], path


def test_model_page_headlines_the_held_out_test_figure(tmp_path: Path) -> None:
    """The shipped model's page gives its test Dice and interval, not only the validation one."""
    from service.inference import read_contract

    shipped = Path(__file__).resolve().parents[2] / "service/models/mammoseg-mnv2-resunet.onnx"
    extra = read_contract(shipped).validation_metrics.model_extra or {}
    assert {"test_dice", "test_dice_ci_low", "test_dice_ci_high"} <= set(extra)
    client = client_for(tmp_path, model_path=shipped)
    page = client.get("/model", headers=AS_VIEWER).text
    figure = f"Dice {extra['test_dice']:.3f} [95 % CI {extra['test_dice_ci_low']:.3f}, "
    assert "Held-out test" in page and figure in page
    assert "pad_to_square" in page
