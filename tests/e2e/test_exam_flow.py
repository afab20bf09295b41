"""Issue 15 done-when: one four-view exam through the whole clinical path, in one test.

Real processes throughout: DCMTK ``storescu`` sends the four views (L-CC, L-MLO,
R-CC, R-MLO of one study) into Orthanc (DICOMweb plugin on); Orthanc's
``OnStoredInstance`` Lua rule routes each to ``mammoseg serve`` (1); the node sends
SEG, SC and SR per image back with ``?commit=1`` and each job is DONE only once
Orthanc committed them (Storage Commitment, 2); the exam SR (series 9904) follows
into the same study, lists both breasts and passes dciodvfy (5); the webhook
receiver got a signed ``job.done`` per image and one ``exam.complete``, none with
patient data (6). OHIF 3.13 opens the study on Orthanc's DICOMweb root and shows the
L-CC view's SEG and its SR's measurements (3, :mod:`tests.e2e.ohif_check`; screenshots in
``test-artifacts/ohif/exam-flow/``). The same four files sent by
STOW-RS to a second, fresh node (own data folder, same model) give the same results
(4): the same result SOP Instance UIDs (derived, dicom_node/provenance.py), the same
SEG pixels and the same SR measurements, the exam SR included.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.stow import multipart_body
from service.testkit.launch import NodeProcess, running_node
from service.testkit.synthetic import Mass, synthetic_mammogram, write
from tests.conftest import free_port
from tests.dicom_validation import assert_valid_dicom, dciodvfy_available
from tests.e2e.ohif import ROOT
from tests.e2e.ohif_check import check_in_ohif, need_browser
from tests.e2e.peers import (
    Orthanc,
    need,
    need_dicomweb_plugin,
    orthanc,
    storescp,
    storescu,
    wait_until,
)
from tests.e2e.test_dicomweb_orthanc import stow
from tests.e2e.test_orthanc_roundtrip import (
    SC_CLASS,
    SEG_CLASS,
    assert_no_patient_data,
    model_args,
)
from tests.exam_reports import VIEWS, evaluations, groups_by_breast, measurements, numbers
from tests.webhook_receiver import SECRET, receiver, verified

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STOW = "stow-token-exam-flow-0123456789"
EXAM_SR_SERIES = 9904
OHIF_ARTIFACTS = ROOT / "test-artifacts" / "ohif" / "exam-flow"
#: A mass in every view (so each image has a SEG); the left ones larger.
MASSES = {
    ("L", "CC"): Mass(row=256, col=150, radius=40),
    ("L", "MLO"): Mass(row=220, col=170, radius=45),
    ("R", "CC"): Mass(row=300, col=260, radius=35),
    ("R", "MLO"): Mass(row=260, col=250, radius=40),
}
PATIENT = {
    "patient_name": "Flowtest^Ingrid",
    "patient_id": "FLOW-PID-4711",
    "birth_date": "19571203",
}
#: Short enough for the writer to look every 2 s; all four views arrive well inside it.
EXAM_STABLE_S = "20"


def need_tools() -> None:
    """Skip before anything starts when a peer of the path is not installed."""
    need("Orthanc", "orthanc")
    need_dicomweb_plugin()
    need("storescu", "dcmtk")
    need("storescp", "dcmtk")
    if not dciodvfy_available():
        pytest.skip("dciodvfy is not installed (Debian package dicom3tools)")
    need_browser()  # Chromium and playwright, for the OHIF check (3)


def four_views(study_uid: str) -> list[Dataset]:
    return [
        synthetic_mammogram(
            seed=41 + i,
            laterality=laterality,
            view=view,
            masses=[MASSES[(laterality, view)]],
            study_uid=study_uid,
            **PATIENT,
        )
        for i, (laterality, view) in enumerate(VIEWS)
    ]


def finished_jobs(node: NodeProcess, count: int) -> list[dict[str, Any]]:
    """All jobs once there are ``count`` and none is open; else [] (keep waiting)."""
    jobs = node.jobs()
    done = [j for j in jobs if j["state"] in ("DONE", "FAILED", "SKIPPED")]
    return jobs if len(jobs) >= count and len(done) == len(jobs) else []


def by_uid(datasets: list[Dataset]) -> dict[str, Dataset]:
    return {str(ds.SOPInstanceUID): ds for ds in datasets}


def orthanc_study(pacs: Orthanc, study_uid: str, tmp: Path) -> dict[str, Dataset]:
    """Every instance of the study in Orthanc, downloaded, by SOP Instance UID."""
    tmp.mkdir(parents=True, exist_ok=True)
    found = []
    for item in pacs.study_instances(study_uid):
        found.append(pydicom.dcmread(pacs.download(item["ID"], tmp / f"{item['ID']}.dcm")))
    return by_uid(found)


def assert_same_results(first: Dataset, second: Dataset) -> None:
    """Two nodes' copies of one result object: same class, pixels or measurements."""
    uid = first.SOPInstanceUID
    assert second.SOPClassUID == first.SOPClassUID, uid
    if first.Modality == "SEG":
        assert np.array_equal(first.pixel_array, second.pixel_array), f"SEG pixels of {uid}"
    elif first.Modality == "SR":
        assert measurements(second) == measurements(first), f"SR measurements of {uid}"
    else:
        assert np.array_equal(first.pixel_array, second.pixel_array), f"SC pixels of {uid}"


def test_four_view_exam_through_orthanc_commitment_webhooks_and_stow(tmp_path: Path) -> None:
    need_tools()
    study_uid = generate_uid()
    images = four_views(study_uid)
    files = [write(ds, tmp_path / f"mg{i}.dcm") for i, ds in enumerate(images)]
    sources = {str(ds.SOPInstanceUID) for ds in images}
    node_port = free_port()
    with (
        receiver([200]) as told,
        orthanc(
            tmp_path / "orthanc", node_aet="MAMMOSEG", node_port=node_port, dicomweb_servers={}
        ) as pacs,
        storescp(tmp_path / "pacs2") as (pacs2_port, pacs2_dir),
        running_node(
            tmp_path / "node",
            dicom_port=node_port,
            env={
                "MAMMOSEG_COMMIT_WAIT_S": "0",  # the report comes on a new association
                "MAMMOSEG_EXAM_STABLE_S": EXAM_STABLE_S,
                "MAMMOSEG_WEBHOOK_URLS": told.url,
                "MAMMOSEG_WEBHOOK_SECRET": SECRET,
            },
            args=[
                "--destination",
                f"ORTHANC@127.0.0.1:{pacs.dicom_port}?commit=1",
                "--allowed-caller",
                "ORTHANC",
                *model_args(tmp_path),
            ],
        ) as node,
        running_node(
            tmp_path / "node2",
            env={"MAMMOSEG_STOW_TOKEN": STOW, "MAMMOSEG_EXAM_STABLE_S": EXAM_STABLE_S},
            args=["--destination", f"STORESCP@127.0.0.1:{pacs2_port}", *model_args(tmp_path)],
        ) as node2,
    ):
        # (1) Into Orthanc; its Lua rule routes each MG instance to the node.
        started = time.monotonic()
        sent = storescu(pacs.dicom_port, files, called="ORTHANC")
        assert sent.returncode == 0, sent.stderr
        # (4), sent now so that the two nodes work at once: the same files by STOW-RS.
        body, content_type = multipart_body([path.read_bytes() for path in files])
        status, (media, answer) = stow(node2.url, body, content_type, STOW)
        assert (status, media) == (200, "application/dicom+json"), answer
        assert {i["00081155"]["Value"][0] for i in answer["00081199"]["Value"]} == sources

        # (2) Four image jobs and the exam job, each DONE only after Orthanc committed.
        jobs = wait_until(lambda: finished_jobs(node, 5), 300, "the node's five jobs", 0.5)
        flow_s = time.monotonic() - started
        image_jobs = [j for j in jobs if j["kind"] == "image"]
        (exam_job,) = [j for j in jobs if j["kind"] == "exam"]
        assert {j["sop_instance_uid"] for j in image_jobs} == sources
        assert {(j["laterality"], j["view"]) for j in image_jobs} == set(VIEWS)
        assert all(j["calling_ae_title"] == "ORTHANC" for j in image_jobs)  # routed, not sent
        committed = f"storage commitment confirmed by ORTHANC@127.0.0.1:{pacs.dicom_port}"
        pending = 0
        for job in [*image_jobs, exam_job]:
            detail = node.get(f"/api/v1/jobs/{job['id']}")
            assert detail["state"] == "DONE", detail["reason"]
            trail = [(e["state"], e["detail"]) for e in detail["events"]]
            states = [state for state, _ in trail]
            # DONE comes from the commitment: COMMIT_PENDING in between, or (Orthanc's
            # report arrived before the send was settled) DONE at once, saying so.
            assert states[-1] == "DONE" and committed in trail[-1][1], (job["kind"], trail)
            assert [s for s in states if s in ("SENDING", "COMMIT_PENDING", "DONE")][0] == "SENDING"
            pending += "COMMIT_PENDING" in states
            assert [c["outcome"] for c in detail["commitments"]] == ["committed"], trail
            assert detail["commitments"][0]["answered_at"] is not None
        for job in image_jobs:
            assert set(job["result_uids"]) == {"seg", "sc", "sr"}, job["result_uids"]

        # Orthanc's study: the four sources, 4 x (SEG, SC, SR) and the exam SR.
        results = {uid for j in image_jobs for uid in j["result_uids"].values()}
        exam_sr_uid = exam_job["sop_instance_uid"]
        expected = sources | results | {exam_sr_uid}
        study = orthanc_study(pacs, study_uid, tmp_path / "from-orthanc")
        assert set(study) == expected and len(study) == 4 + 4 * 3 + 1
        for job in image_jobs:
            kinds = {kind: study[uid] for kind, uid in job["result_uids"].items()}
            assert (kinds["seg"].SOPClassUID, kinds["sc"].SOPClassUID) == (SEG_CLASS, SC_CLASS)
            assert kinds["sr"].Modality == "SR"
            for ds in kinds.values():
                assert ds.SeriesInstanceUID != study[job["sop_instance_uid"]].SeriesInstanceUID

        # (5) The exam SR, read back from Orthanc: both breasts, a mass in each, valid.
        exam_sr = study[exam_sr_uid]
        assert int(exam_sr.SeriesNumber) == EXAM_SR_SERIES
        assert exam_sr.PatientID == PATIENT["patient_id"]
        groups = groups_by_breast(exam_sr)
        assert set(groups) == {"Left breast", "Right breast"}
        for name in groups:
            assert ("4147007", "52101004") in evaluations(groups[name])  # mass present
            assert numbers(groups[name])["103339001"] > 0  # the largest lesion's long axis
        exam_path = tmp_path / "exam-sr.dcm"
        exam_sr.save_as(exam_path, enforce_file_format=True)
        assert_valid_dicom(exam_path)

        # (6) Signed notices: job.done per image (and the exam job), one exam.complete.
        def notices() -> list[dict[str, Any]]:
            bodies = [verified(call) for call in told.calls]
            done = [b for b in bodies if b["event"] == "job.done"]
            exams = [b for b in bodies if b["event"] == "exam.complete"]
            return bodies if len(done) >= 5 and exams else []

        bodies = wait_until(notices, 60, "the webhook notices")
        done_for = [b["sop_instance_uid"] for b in bodies if b["event"] == "job.done"]
        assert sorted(done_for) == sorted([*sources, exam_sr_uid])
        (exam_notice,) = [b for b in bodies if b["event"] == "exam.complete"]
        assert exam_notice["study_instance_uid"] == study_uid
        assert exam_notice["exam_sr_uid"] == exam_sr_uid
        assert exam_notice["trigger"] == "complete" and exam_notice["missing_views"] == []
        assert {side: b["mass_found"] for side, b in exam_notice["breasts"].items()} == {
            "L": True,
            "R": True,
        }
        for b in bodies:
            if b["event"] == "job.done" and b["sop_instance_uid"] in sources:
                job = next(j for j in image_jobs if j["sop_instance_uid"] == b["sop_instance_uid"])
                assert {r["sop_instance_uid"] for r in b["results"]} == set(
                    job["result_uids"].values()
                )
        raw = b"".join(call.body for call in told.calls).decode()
        for value in (*PATIENT.values(), "Flowtest", "Ingrid"):
            assert value not in raw, "patient data in a webhook body"
        assert_no_patient_data(node.log_text(), images[0])

        # (3) OHIF on Orthanc's DICOMweb root: the L-CC view's SEG drawn, its SR's lengths
        # listed, display sets picked by SOP Instance UID among all views' (exam SR too).
        qido = pacs.get(f"/dicom-web/studies?StudyInstanceUID={study_uid}")
        assert [s["00201208"]["Value"][0] for s in qido] == [len(expected)]
        (lcc,) = [j for j in image_jobs if (j["laterality"], j["view"]) == ("L", "CC")]
        viewer = check_in_ohif(
            f"{pacs.url}/dicom-web",
            study_uid,
            lcc["sop_instance_uid"],
            study[lcc["result_uids"]["seg"]],
            study[lcc["result_uids"]["sr"]],
            OHIF_ARTIFACTS,
        )
        assert {m: viewer.display_sets.get(m) for m in ("MG", "SEG", "SR")} == {
            "MG": 4,
            "SEG": 4,
            "SR": 5,
        }

        # (4) The second node's results (STOW-RS in, C-STORE out): the same objects.
        jobs2 = wait_until(lambda: finished_jobs(node2, 5), 300, "node 2's five jobs", 0.5)
        stow_s = time.monotonic() - started
        assert {j["state"] for j in jobs2} == {"DONE"}, [j["reason"] for j in jobs2]
        image_jobs2 = [j for j in jobs2 if j["kind"] == "image"]
        (exam_job2,) = [j for j in jobs2 if j["kind"] == "exam"]
        assert {j["sop_instance_uid"]: j["result_uids"] for j in image_jobs2} == {
            j["sop_instance_uid"]: j["result_uids"] for j in image_jobs
        }
        assert exam_job2["sop_instance_uid"] == exam_sr_uid
        received = by_uid([pydicom.dcmread(p) for p in sorted(pacs2_dir.iterdir())])
        assert set(received) == results | {exam_sr_uid}
        for uid in sorted(results | {exam_sr_uid}):
            assert_same_results(study[uid], received[uid])
        second_exam = groups_by_breast(received[exam_sr_uid])
        assert {name: numbers(g) for name, g in second_exam.items()} == {
            name: numbers(g) for name, g in groups.items()
        }
        assert_no_patient_data(node2.log_text(), images[0])
    lesions = {side: b["lesion_count"] for side, b in exam_notice["breasts"].items()}
    print(
        f"\nexam flow: 4 views Orthanc -> node -> Orthanc (commit=1): {len(jobs)} jobs DONE "
        f"after commitment ({pending} via COMMIT_PENDING) in {flow_s:.1f} s; "
        f"study holds {len(study)} instances; "
        f"lesions L {lesions['L']} R {lesions['R']}; {len(bodies)} signed notices; "
        f"STOW-RS node 2: {len(jobs2)} jobs DONE, {len(received)} identical objects "
        f"({stow_s:.1f} s from the start)"
    )
