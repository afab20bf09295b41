"""Find and act (issue 15, item 5): search, several states, bulk retry, result files, reasons.

Over a real job store (TestClient on SQLite; one test on PostgreSQL), and one
delivery to an in-process peer that refuses with 0xA700.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from pydicom import Dataset
from pynetdicom import AE, evt

from dicom_node.scu import Destination, SendError, send_files
from dicom_node.status import describe
from service.api import jobs as jobs_api
from service.node import accession_number_of, job_sink
from service.store import JobFilter, JobState, JobStore, NewJob
from service.testkit.synthetic import synthetic_mammogram, write
from service.worker import RetryPolicy, WorkerContext, deliver
from tests.conftest import free_port
from tests.http_node import ADMIN, VIEWER, app_state, settings_for
from tests.integration.test_api import AS_ADMIN, AS_VIEWER, assert_problem

MG = "1.2.840.10008.5.1.4.1.1.1.2"


def client_for(tmp_path: Path, host: str = "testclient", **overrides: Any) -> TestClient:
    from service.app import create_app

    state = app_state(settings_for(tmp_path, **overrides))
    return TestClient(create_app(state), client=(host, 50000))


def store_of(client: TestClient) -> JobStore:
    return client.app.state.node.store  # type: ignore[attr-defined,no-any-return]


def outbox_of(client: TestClient) -> Path:
    return client.app.state.node.settings.outbox_dir  # type: ignore[attr-defined,no-any-return]


def new_job(uid: str, *, study: str = "1.2.3", accession: str = "") -> NewJob:
    return NewJob(
        sop_instance_uid=uid,
        sop_class_uid=MG,
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        association_id="assoc-1",
        path=f"/nonexistent/{uid}.dcm",
        accession_number=accession,
    )


def add(store: JobStore, uid: str, **kw: Any) -> int:
    job_id, created = store.queue.add(new_job(uid, **kw))
    assert created
    return job_id


def with_results(store: JobStore, outbox: Path, job_id: int, state: JobState) -> dict[str, Path]:
    """The job in ``state`` with a real SEG, SC and SR file each in outbox/<job>/."""
    folder = outbox / str(job_id)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i, kind in enumerate(("seg", "sr", "sc")):
        ds = synthetic_mammogram(rows=32, columns=24, seed=job_id * 10 + i)
        files[kind] = write(ds, folder / f"{kind}.dcm")
    store.queue.update(
        job_id,
        state=state,
        reason="gave up sending" if state is JobState.FAILED else "",
        results={
            "uids": {kind: f"1.2.9.{job_id}.{i}" for i, kind in enumerate(files)},
            "files": [str(p) for p in files.values()],
        },
    )
    return files


def ids(client: TestClient, params: Any, headers: dict[str, str] = AS_VIEWER) -> list[int]:
    response = client.get("/api/v1/jobs", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


# -- search ---------------------------------------------------------------
def test_accession_number_is_read_at_admission_and_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    ds = synthetic_mammogram(rows=32, columns=24, seed=3)
    ds.AccessionNumber = "ACC-77812"
    path = write(ds, tmp_path / "in.dcm")
    assert accession_number_of(path) == "ACC-77812"
    bare = synthetic_mammogram(rows=32, columns=24, seed=4)
    if "AccessionNumber" in bare:
        del bare.AccessionNumber
    assert accession_number_of(write(bare, tmp_path / "bare.dcm")) == ""
    assert accession_number_of(tmp_path / "missing.dcm") == ""

    instance = SimpleNamespace(
        path=path,
        sop_instance_uid=str(ds.SOPInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        study_instance_uid=str(ds.StudyInstanceUID),
        series_instance_uid=str(ds.SeriesInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        calling_ae_title="PACS",
        peer_address="127.0.0.1",
        association_id="assoc-1",
    )
    with caplog.at_level("DEBUG"):
        job_sink(store)(instance)
    (job,) = store.reads.list()
    assert job.accession_number == "ACC-77812"
    assert "ACC-77812" not in caplog.text
    assert [j.id for j in store.reads.find(JobFilter(query="ACC-77812"))[0]] == [job.id]


def test_search_by_accession_study_or_sop_uid_exact_match(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    store = store_of(client)
    a = add(store, "1.1", study="2.1", accession="A100")
    b = add(store, "1.2", study="2.1", accession="A200")
    c = add(store, "1.3", study="2.2", accession="1.1")  # an accession equal to a's SOP UID
    assert ids(client, {"q": "A100"}) == [a]
    assert ids(client, {"q": "2.1"}) == [b, a]  # the study
    assert ids(client, {"q": "1.2"}) == [b]  # the SOP instance
    assert ids(client, {"q": "1.1"}) == [c, a]  # any of the three
    assert ids(client, {"q": "A10"}) == []  # exact, no prefix
    assert ids(client, {"q": "A1%"}) == []  # no wildcards
    assert ids(client, {"q": "  A200 "}) == [b]  # spaces around are dropped
    store.queue.update(b, state=JobState.FAILED, reason="x")
    assert ids(client, {"q": "2.1", "state": "FAILED"}) == [b]
    assert_problem(client.get("/api/v1/jobs", params={"q": "9" * 65}, headers=AS_VIEWER), 422)


def test_accession_number_only_where_patient_data_may_be_shown(tmp_path: Path) -> None:
    hidden = client_for(tmp_path / "a")
    job = add(store_of(hidden), "1.1", accession="A100")
    item = hidden.get("/api/v1/jobs", headers=AS_VIEWER).json()["items"][0]
    assert item["accession_number"] is None
    assert hidden.get(f"/api/v1/jobs/{job}", headers=AS_VIEWER).json()["accession_number"] is None
    assert "A100" not in hidden.get("/api/v1/jobs", headers=AS_VIEWER).text
    # Searching by it still works with a token: the job, not the number, comes back.
    assert ids(hidden, {"q": "A100"}) == [job]

    shown = client_for(tmp_path / "b", show_patient_data=True)
    job = add(store_of(shown), "1.1", accession="A100")
    for headers in (AS_VIEWER, AS_ADMIN):
        item = shown.get("/api/v1/jobs", headers=headers).json()["items"][0]
        assert item["accession_number"] == "A100"
        detail = shown.get(f"/api/v1/jobs/{job}", headers=headers).json()
        assert detail["accession_number"] == "A100"


def test_a_tokenless_read_neither_sees_nor_searches_the_accession_number(tmp_path: Path) -> None:
    local = client_for(tmp_path, host="127.0.0.1", read_access="loopback", show_patient_data=True)
    job = add(store_of(local), "1.1", accession="A100")
    body = local.get("/api/v1/jobs").json()
    assert [i["id"] for i in body["items"]] == [job] and body["items"][0][
        "accession_number"
    ] is None
    assert local.get(f"/api/v1/jobs/{job}").json()["accession_number"] is None
    for q in ("A100", "1.1", "nothing"):  # the answer must not depend on a match
        refused = assert_problem(local.get("/api/v1/jobs", params={"q": q}), 401)
        assert "token" in refused["detail"]
    assert ids(local, {"q": "A100"}, headers=AS_VIEWER) == [job]
    page = local.get("/jobs", params={"q": "A100"})
    assert page.status_code == 200 and "data-search-refused" in page.text
    assert 'data-job="' not in page.text and 'data-total="0"' in page.text  # no listing


# -- several states -------------------------------------------------------
def test_several_states_repeated_or_comma_separated(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    store = store_of(client)
    done, failed, retrying, received = (add(store, f"1.{i}") for i in range(4))
    store.queue.update(done, state=JobState.DONE)
    store.queue.update(failed, state=JobState.FAILED, reason="x")
    store.queue.update(retrying, state=JobState.RETRYING, reason="y")
    both = [retrying, failed]
    assert ids(client, {"state": ["FAILED", "RETRYING"]}) == both
    assert ids(client, {"state": "FAILED,RETRYING"}) == both
    assert ids(client, {"state": "failed, retrying"}) == both
    assert ids(client, {"state": ["FAILED,RETRYING", "DONE"]}) == [retrying, failed, done]
    assert ids(client, {"state": "RECEIVED"}) == [received]  # the old single form
    assert ids(client, {}) == [received, retrying, failed, done]
    for bad in ("NOPE", "FAILED,NOPE", ["FAILED", "NOPE"]):
        body = assert_problem(
            client.get("/api/v1/jobs", params={"state": bad}, headers=AS_VIEWER), 422
        )
        assert "NOPE" in body["detail"]


# -- bulk retry -----------------------------------------------------------
class AuditRecorder:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def admin_action(self, **kw: Any) -> None:
        info = kw.get("action_info")
        self.messages.append({**kw, "study": getattr(info, "study_uid", None)})


def test_bulk_retry_of_a_filtered_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = client_for(tmp_path)
    store = store_of(client)
    audit = AuditRecorder()
    client.app.state.node.audit = audit  # type: ignore[attr-defined]
    outbox = outbox_of(client)
    failed = [add(store, f"1.{i}", study="2.1") for i in range(2)]
    for job_id in failed:
        with_results(store, outbox, job_id, JobState.FAILED)
    no_results = add(store, "1.5", study="2.1")
    store.queue.update(no_results, state=JobState.FAILED, reason="cannot decode")
    other_study = add(store, "1.6", study="2.9")
    with_results(store, outbox, other_study, JobState.FAILED)
    done = add(store, "1.7", study="2.1")
    store.queue.update(done, state=JobState.DONE)

    for headers in ({}, AS_VIEWER):
        assert_problem(client.post("/api/v1/jobs/retry", headers=headers), 401)
    assert {store.reads.get(j).state for j in failed} == {JobState.FAILED}  # type: ignore[union-attr]

    monkeypatch.setattr(jobs_api, "BULK_RETRY_MAX", 2)
    too_many = assert_problem(client.post("/api/v1/jobs/retry", headers=AS_ADMIN), 422)
    assert "4 jobs match" in too_many["detail"]
    assert store.reads.event_count(JobState.RETRYING) == 0
    assert audit.messages[-1]["ok"] is False
    monkeypatch.setattr(jobs_api, "BULK_RETRY_MAX", 200)

    audit.messages.clear()
    response = client.post("/api/v1/jobs/retry", params={"q": "2.1"}, headers=AS_ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["matched"] == 3 and body["retried"] == 2
    assert sorted(body["retried_ids"]) == failed
    ((skipped),) = body["skipped"]
    assert skipped["id"] == no_results and "reprocess" in skipped["reason"]
    for job_id in failed:
        job = store.reads.get(job_id)
        assert job is not None and job.state is JobState.RETRYING
        assert store.reads.events(job_id)[-1].detail == "retry requested by an admin (bulk)"
    assert store.reads.get(other_study).state is JobState.FAILED  # type: ignore[union-attr]
    assert store.reads.get(done).state is JobState.DONE  # type: ignore[union-attr]
    per_job = [m for m in audit.messages if "job " in m["detail"] or m["ok"] is False]
    assert sorted((m["ok"], m["study"]) for m in per_job) == [
        (False, "2.1"),
        (True, "2.1"),
        (True, "2.1"),
    ]
    assert {m["uri"] for m in audit.messages} == {"/api/v1/jobs/retry"}
    assert {m["role"] for m in audit.messages} == {"admin"}

    # A state outside FAILED/RETRYING asked for explicitly: matched, skipped with the reason.
    body = client.post("/api/v1/jobs/retry", params={"state": "DONE"}, headers=AS_ADMIN).json()
    assert body["retried"] == 0 and body["skipped"][0]["id"] == done
    assert "only FAILED or RETRYING" in body["skipped"][0]["reason"]


def test_bulk_retry_from_a_browser_session_needs_the_action_header(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    job = add(store_of(client), "1.1")
    with_results(store_of(client), outbox_of(client), job, JobState.FAILED)
    client.post("/login", data={"token": ADMIN, "next": "/"})
    assert_problem(client.post("/api/v1/jobs/retry"), 403)
    ok = client.post("/api/v1/jobs/retry", headers={"X-Requested-With": "mammoseg"})
    assert ok.status_code == 200 and ok.json()["retried_ids"] == [job], ok.text


# -- result files ---------------------------------------------------------
def test_download_of_the_seg_sc_and_sr(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    store = store_of(client)
    job = add(store, "1.1")
    files = with_results(store, outbox_of(client), job, JobState.DONE)
    for kind, path in files.items():
        response = client.get(f"/api/v1/jobs/{job}/results/{kind}", headers=AS_VIEWER)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/dicom"
        assert response.content == path.read_bytes()
        assert f"job-{job}-{kind}.dcm" in response.headers["content-disposition"]
    assert_problem(client.get(f"/api/v1/jobs/{job}/results/seg"), 401)
    assert_problem(client.get(f"/api/v1/jobs/{job}/results/png", headers=AS_VIEWER), 422)
    assert_problem(client.get("/api/v1/jobs/999/results/seg", headers=AS_VIEWER), 404)

    empty = add(store, "1.2")  # no SEG: the mask was empty, only SC and SR were built
    folder = outbox_of(client) / str(empty)
    folder.mkdir(parents=True)
    sr = write(synthetic_mammogram(rows=32, columns=24, seed=9), folder / "sr.dcm")
    store.queue.update(
        empty, state=JobState.DONE, results={"uids": {"sr": "1.2.9"}, "files": [str(sr)]}
    )
    body = assert_problem(client.get(f"/api/v1/jobs/{empty}/results/seg", headers=AS_VIEWER), 404)
    assert "no SEG" in body["detail"]
    assert client.get(f"/api/v1/jobs/{empty}/results/sr", headers=AS_VIEWER).status_code == 200
    sr.unlink()  # gone from the outbox although the job names it
    assert_problem(client.get(f"/api/v1/jobs/{empty}/results/sr", headers=AS_VIEWER), 404)

    assert store.housekeeping.mark_purged(job)
    body = assert_problem(client.get(f"/api/v1/jobs/{job}/results/sc", headers=AS_VIEWER), 404)
    assert "retention" in body["detail"]


def test_a_tokenless_read_gets_no_result_file(tmp_path: Path) -> None:
    local = client_for(tmp_path, host="127.0.0.1", read_access="loopback")
    job = add(store_of(local), "1.1")
    with_results(store_of(local), outbox_of(local), job, JobState.DONE)
    assert local.get(f"/api/v1/jobs/{job}").status_code == 200
    assert_problem(local.get(f"/api/v1/jobs/{job}/results/seg"), 401)
    assert local.get(f"/api/v1/jobs/{job}/results/seg", headers=AS_VIEWER).status_code == 200
    assert "data-download" not in local.get(f"/jobs/{job}").text


def test_the_openapi_document_declares_the_new_routes(tmp_path: Path) -> None:
    spec = client_for(tmp_path).get("/openapi.json").json()
    download = spec["paths"]["/api/v1/jobs/{job_id}/results/{kind}"]["get"]["responses"]
    assert "application/dicom" in download["200"]["content"]
    assert {"401", "404", "422"} <= set(download)
    bulk = spec["paths"]["/api/v1/jobs/retry"]["post"]["responses"]
    assert {"401", "403", "422"} <= set(bulk)
    assert bulk["200"]["content"]["application/json"]["schema"]["$ref"].endswith("BulkRetryOut")
    names = {p["name"] for p in spec["paths"]["/api/v1/jobs"]["get"]["parameters"]}
    assert {"q", "state"} <= names


# -- dashboard ------------------------------------------------------------
def test_jobs_page_searches_filters_several_states_and_offers_bulk_retry(tmp_path: Path) -> None:
    client = client_for(tmp_path, show_patient_data=True)
    store = store_of(client)
    a = add(store, "1.1", accession="A100")
    b = add(store, "1.2", accession="A200")
    c = add(store, "1.3")
    store.queue.update(a, state=JobState.FAILED, reason="x")
    store.queue.update(b, state=JobState.RETRYING, reason="y")
    client.post("/login", data={"token": VIEWER, "next": "/"})

    def rows(params: Any) -> list[int]:
        page = client.get("/jobs", params=params)
        assert page.status_code == 200, page.text
        return [int(x) for x in re.findall(r'data-job="(\d+)"', page.text)]

    page = client.get("/jobs", params={"q": "A100"}).text
    assert 'name="q" value="A100"' in page and 'type="search"' in page
    assert rows({"q": "A100"}) == [a]
    assert '<td class="wide" data-accession>A100</td>' in page
    assert rows({"state": ["FAILED", "RETRYING"]}) == [b, a]
    assert rows({"state": "FAILED,RETRYING"}) == [b, a]
    checked = client.get("/jobs", params={"state": ["FAILED", "RETRYING"]}).text
    assert 'value="FAILED" checked' in checked and 'value="RETRYING" checked' in checked
    assert 'value="DONE" checked' not in checked
    fragment = client.get("/fragments/jobs", params={"q": "A200"}).text
    assert re.findall(r'data-job="(\d+)"', fragment) == [str(b)]
    assert rows({}) == [c, b, a]
    assert "data-bulk-retry" not in page  # a viewer

    client.post("/login", data={"token": ADMIN, "next": "/"})
    admin = client.get("/jobs", params={"state": "FAILED", "q": "A100"}).text
    (action,) = re.findall(r'data-bulk-retry data-action="([^"]+)"', admin)
    assert action.startswith("/api/v1/jobs/retry?") and "q=A100" in action
    assert "state=FAILED" in action
    retried = client.post(action.replace("&amp;", "&"), headers={"X-Requested-With": "mammoseg"})
    assert retried.status_code == 200 and retried.json()["retried"] == 0  # no results to send
    assert retried.json()["skipped"][0]["id"] == a


def test_accession_column_only_where_patient_data_may_be_shown(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    add(store_of(client), "1.1", accession="A100")
    client.post("/login", data={"token": VIEWER, "next": "/"})
    assert "data-accession" not in client.get("/jobs").text
    assert "A100" not in client.get("/jobs").text


def test_job_page_links_the_result_files(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    store = store_of(client)
    job = add(store, "1.1")
    with_results(store, outbox_of(client), job, JobState.DONE)
    client.post("/login", data={"token": VIEWER, "next": "/"})
    page = client.get(f"/jobs/{job}").text
    links = dict(re.findall(r'href="([^"]+)" download="[^"]+" data-download="(\w+)"', page))
    assert sorted(links.values()) == ["sc", "seg", "sr"]
    for href, kind in links.items():
        assert href == f"/api/v1/jobs/{job}/results/{kind}"
        response = client.get(href)  # the session cookie is enough for a download
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/dicom"
    store.housekeeping.mark_purged(job)
    assert "data-download" not in client.get(f"/jobs/{job}").text


def test_job_page_opens_the_study_in_a_viewer(tmp_path: Path) -> None:
    """viewer_url_template: the default is OHIF's route with the study; empty: no link."""
    client = client_for(tmp_path / "default")
    job = add(store_of(client), "1.1", study="1.2.3.4")
    client.post("/login", data={"token": VIEWER, "next": "/"})
    links = re.findall(
        r'<a href="([^"]+)"[^>]*data-viewer-link>open in viewer</a>',
        client.get(f"/jobs/{job}").text,
    )
    assert links == ["http://127.0.0.1:3000/viewer?StudyInstanceUIDs=1.2.3.4"]

    template = "https://pacs.example.org/ohif/viewer?StudyInstanceUIDs={study_uid}&amp;x={sop_uid}"
    custom = client_for(tmp_path / "custom", viewer_url_template=template.replace("&amp;", "&"))
    job = add(store_of(custom), "9.8.7", study="1.2.3.4")
    custom.post("/login", data={"token": VIEWER, "next": "/"})
    page = custom.get(f"/jobs/{job}").text
    assert (
        'href="https://pacs.example.org/ohif/viewer?StudyInstanceUIDs=1.2.3.4&amp;x=9.8.7"' in page
    )

    off = client_for(tmp_path / "off", viewer_url_template="")
    job = add(store_of(off), "1.1", study="1.2.3.4")
    off.post("/login", data={"token": VIEWER, "next": "/"})
    page = off.get(f"/jobs/{job}").text
    assert "data-study-link" in page  # the page itself is there
    assert "data-viewer-link" not in page and "open in viewer" not in page


# -- failure reasons ------------------------------------------------------
def test_status_meanings() -> None:
    assert describe(0xA700) == "0xA700 out of resources"
    assert describe(0xA7FE) == "0xA7FE out of resources"
    assert describe(0xA900) == "0xA900 data set does not match SOP class"
    assert describe(0xC123) == "0xC123 cannot understand"
    assert describe(0x0122) == "0x0122 SOP class not supported"
    assert describe(0x0124) == "0x0124 not authorized"
    assert describe(0x1234) == "0x1234"


def refusing_peer() -> tuple[Any, Destination]:
    port = free_port()
    ae = AE(ae_title="FULL")
    ae.add_supported_context(MG)

    def on_store(event: evt.Event) -> int:
        return 0xA700

    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    return server, Destination("FULL", "127.0.0.1", port)


def test_a_refused_store_names_the_status_meaning_and_the_destination_once(
    tmp_path: Path,
) -> None:
    ds: Dataset = synthetic_mammogram(rows=32, columns=24, seed=5)
    path = write(ds, tmp_path / "outbox" / "1" / "sc.dcm")
    store = JobStore(tmp_path / "jobs.sqlite3")
    server, destination = refusing_peer()
    try:
        with pytest.raises(SendError) as refused:
            send_files(destination, [path], calling_ae="MAMMOSEG", timeout_s=5)
        assert "0xA700 out of resources" in str(refused.value)
        assert destination.name not in str(refused.value)

        job_id = add(store, "1.1")
        store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w1")
        store.queue.update(job_id, state=JobState.SENDING, results={"files": [str(path)]})
        ctx = WorkerContext(
            store=store,
            segmenter=cast(Any, None),
            options=cast(Any, None),
            destinations=[destination],
            calling_ae="MAMMOSEG",
            send_timeout_s=5.0,
            retry=RetryPolicy(initial_s=1.0, max_s=1.0, give_up_s=600.0),
            poll_interval_s=0.05,
            worker_id="w1",
        )
        deliver(ctx, store.reads.get(job_id))  # type: ignore[arg-type]
    finally:
        server.shutdown()
    job = store.reads.get(job_id)
    assert job is not None and job.state is JobState.RETRYING
    assert job.reason == (
        f"FULL@127.0.0.1:{destination.port}: C-STORE of {ds.SOPInstanceUID} refused: "
        "0xA700 out of resources"
    )
    assert job.reason.count(destination.name) == 1


# -- PostgreSQL -----------------------------------------------------------
@pytest.mark.slow
def test_the_migration_and_the_search_on_postgres(tmp_path: Path) -> None:
    from service.db import Database, Pool
    from tests.pg import postgres

    with postgres() as url:
        schema = f"t_{uuid.uuid4().hex[:8]}"
        pool = Pool(Database(url), size=1, overflow=0)
        with pool.write() as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        pool.dispose()
        store = JobStore(Database(f"{url}?options=-csearch_path%3D{schema}"))
        assert store.backend.dialect == "postgresql"
        a = add(store, "1.1", study="2.1", accession="A100")
        b = add(store, "1.2", study="2.1", accession="")
        store.queue.update(b, state=JobState.FAILED, reason="x")

        def found(**kw: Any) -> list[int]:
            return [j.id for j in store.reads.find(JobFilter(**kw))[0]]

        assert found(query="A100") == [a]
        assert found(query="2.1") == [b, a]
        assert found(query="1.2") == [b]
        assert found(query="A10") == []
        assert found(query="2.1", states=(JobState.FAILED, JobState.RETRYING)) == [b]
        pool = Pool(Database(url), size=1, overflow=0)
        with pool.read() as conn:
            indexes = {
                r["indexname"]
                for r in conn.execute(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = :s", {"s": schema}
                ).fetchall()
            }
            version = conn.execute(f"SELECT version_num FROM {schema}.alembic_version").fetchone()
        pool.dispose()
        assert {"jobs_accession", "jobs_study", "jobs_sop"} <= indexes
        assert version is not None and version[0] == "0008"
        assert store.reads.get(a).accession_number == "A100"  # type: ignore[union-attr]
