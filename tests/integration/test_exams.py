"""Exams, not just images (issue 15 part 3): four views, three views, out of order, duplicates.

A real node in this process (tiny model, a peer as PACS, short stable times):
the exam SR is written once per study version, lists both breasts, says which
view is missing, passes dciodvfy, reaches the peer, and the hook is called once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

from dicom_node.exam_sr import LESION_COUNT, VIEW_MISSING
from service.app import create_app
from service.exams import EXAM_COMPLETE_HOOKS
from service.node import Node
from service.store import ExamState, JobState
from service.testkit.synthetic import Mass
from tests.dicom_validation import assert_valid_dicom
from tests.exam_reports import VIEWS, evaluations, groups_by_breast, numbers
from tests.http_node import VIEWER, Peer, mammogram, node_state, running_node, send, wait_for
from tests.webhook_receiver import SECRET, receiver, verified


@pytest.fixture
def peer() -> Iterator[Peer]:
    peer = Peer()
    yield peer
    peer.close()


@pytest.fixture
def hooks() -> Iterator[list[dict[str, Any]]]:
    calls: list[dict[str, Any]] = []
    EXAM_COMPLETE_HOOKS.append(calls.append)
    yield calls
    EXAM_COMPLETE_HOOKS.remove(calls.append)


def study(views: tuple[tuple[str, str], ...], *, study_uid: str) -> list[Dataset]:
    """One image per view; the left CC has a mass the tiny model finds, the others none."""
    images = []
    for seed, (laterality, view) in enumerate(views, start=11):
        masses = [Mass(row=256, col=150, radius=40)] if (laterality, view) == ("L", "CC") else []
        images.append(
            mammogram(seed, laterality=laterality, view=view, masses=masses, study_uid=study_uid)
        )
    return images


def exam_srs(peer: Peer) -> list[Dataset]:
    with peer.lock:
        return [
            ds
            for ds in peer.received
            if ds.SOPClassUID == Comprehensive3DSRStorage and ds.SeriesNumber == 9904
        ]


def written(node: Node, study_uid: str, version: int = 1) -> Any:
    def check() -> Any:
        exam = node.store.exams.get(study_uid)
        return (
            exam if exam and exam.state is ExamState.WRITTEN and exam.version == version else None
        )

    return wait_for(check, timeout_s=60)


@pytest.mark.slow
def test_four_views_one_exam_sr_both_breasts(
    tmp_path: Path, peer: Peer, hooks: list[dict[str, Any]]
) -> None:
    study_uid = generate_uid()
    with (
        receiver([200]) as told,
        running_node(
            tmp_path, peer, exam_stable_s=600, webhook_urls=[told.url], webhook_secret=SECRET
        ) as node,
    ):
        # Out of order: MLOs first, right before left.
        images = study(VIEWS, study_uid=study_uid)
        assert send(node, images[3], images[1]) == [0, 0]
        time.sleep(0.5)
        assert node.store.exams.get(study_uid).state is ExamState.OPEN
        assert send(node, images[2], images[0]) == [0, 0]
        exam = written(node, study_uid)
        assert exam.trigger == "complete"
        job = wait_for(
            lambda: (j := node.store.reads.get(exam.sr_job_id)) and j.state is JobState.DONE and j
        )
        assert job.kind == "exam"
        # A duplicate send of all four changes nothing: no second exam SR.
        assert send(node, *images) == [0, 0, 0, 0]
        time.sleep(1.0)
        again = node.store.exams.get(study_uid)
        assert (again.version, again.state, again.sr_uid) == (1, ExamState.WRITTEN, exam.sr_uid)
        srs = exam_srs(peer)
        assert [str(s.SOPInstanceUID) for s in srs] == [exam.sr_uid]
        assert len(hooks) == 1
        assert hooks[0]["event"] == "exam.complete"
        assert hooks[0]["missing_views"] == []
        assert hooks[0]["breasts"]["L"]["mass_found"] is True
        # Per breast, what the images' own jobs found (the tiny model may see tissue as a mass).
        jobs = node.store.exams.images(study_uid)
        found = {
            side: sum(len(j.results["lesions"]) for j in jobs if j.laterality == side)
            for side in "LR"
        }
        assert found["L"] >= 1
        for side in "LR":
            assert hooks[0]["breasts"][side]["lesion_count"] == found[side]
            assert hooks[0]["breasts"][side]["mass_found"] is (found[side] > 0)
        assert "PatientName" not in str(hooks[0]) and "Synthetic" not in str(hooks[0])
        # The webhook receivers are told too, signed, with the hook's payload.
        exam_notices = wait_for(
            lambda: [
                body
                for body in (verified(call) for call in told.calls)
                if body["event"] == "exam.complete"
            ]
        )
        assert len(exam_notices) == 1
        assert exam_notices[0]["exam_sr_uid"] == exam.sr_uid
        assert exam_notices[0]["breasts"] == hooks[0]["breasts"]
        assert images[0].PatientID not in json.dumps(exam_notices[0])
        sr = pydicom.dcmread(job.path)
        assert sr.StudyInstanceUID == study_uid
        assert sr.PatientID == images[0].PatientID
        groups = groups_by_breast(sr)
        assert set(groups) == {"Left breast", "Right breast"}
        assert ("4147007", "52101004") in evaluations(groups["Left breast"])  # mass present
        right_mass = "52101004" if found["R"] else "272519000"  # present or absent
        assert ("4147007", right_mass) in evaluations(groups["Right breast"])
        assert not [e for e in evaluations(groups["Left breast"]) if e[0] == VIEW_MISSING.value]
        left = numbers(groups["Left breast"])
        assert left[LESION_COUNT.value] >= 1 and left["103339001"] > 0  # long axis
        assert numbers(groups["Right breast"])[LESION_COUNT.value] == found["R"]
        largest = max(
            lesion["diameter_mm"]
            for j in jobs
            if j.laterality == "L"
            for lesion in j.results["lesions"]
        )
        assert left["103339001"] == pytest.approx(largest, abs=0.01)
        evidence = {
            str(s.ReferencedSOPInstanceUID)
            for study_item in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study_item.ReferencedSeriesSequence
            for s in series.ReferencedSOPSequence
        }
        assert {str(ds.SOPInstanceUID) for ds in images} <= evidence
        left_cc = node.store.exams.images(study_uid)
        per_image = {u for j in left_cc for u in j.results["uids"].values()}
        assert per_image <= evidence
        assert_valid_dicom(job.path)

        # The study view, REST.
        client = TestClient(create_app(node_state(node)))
        headers = {"Authorization": f"Bearer {VIEWER}"}
        body = client.get(f"/api/v1/studies/{study_uid}", headers=headers).json()
        assert body["state"] == "WRITTEN" and body["missing_views"] == []
        assert {v: len(j) for v, j in body["views"].items()} == {
            "L-CC": 1,
            "L-MLO": 1,
            "R-CC": 1,
            "R-MLO": 1,
        }
        assert body["breasts"]["L"]["lesion_count"] >= 1
        assert body["breasts"]["L"]["largest_diameter_mm"] > 0
        assert body["breasts"]["R"]["lesion_count"] == found["R"]
        assert body["breasts"]["L"]["largest_diameter_mm"] == pytest.approx(largest)
        listing = client.get("/api/v1/studies", headers=headers).json()
        assert listing["total"] == 1 and listing["items"][0]["study_instance_uid"] == study_uid
        assert client.get(f"/api/v1/studies/{generate_uid()}", headers=headers).status_code == 404
        assert client.get(f"/api/v1/studies/{study_uid}").status_code == 401

        # A late fifth image (an extra view) after WRITTEN: version 2, a new UID, the old named.
        fifth = mammogram(31, laterality="L", view="ML", masses=[], study_uid=study_uid)
        assert send(node, fifth) == [0]
        second = written(node, study_uid, version=2)
        assert second.sr_uid != exam.sr_uid
        sr2 = pydicom.dcmread(node.store.reads.get(second.sr_job_id).path)
        predecessors = [
            str(s.ReferencedSOPInstanceUID)
            for item in sr2.PredecessorDocumentsSequence
            for series in item.ReferencedSeriesSequence
            for s in series.ReferencedSOPSequence
        ]
        assert predecessors == [exam.sr_uid]
        assert len(hooks) == 2
        page = client.get(f"/studies/{study_uid}", headers=headers)
        assert page.status_code == 200 and "R-MLO" in page.text and "ML" in page.text


@pytest.mark.slow
def test_three_views_written_after_the_stable_time_says_which_is_missing(
    tmp_path: Path, peer: Peer, hooks: list[dict[str, Any]]
) -> None:
    study_uid = generate_uid()
    with running_node(tmp_path, peer, exam_stable_s=1.5) as node:
        images = study(VIEWS[:3], study_uid=study_uid)  # no R-MLO
        assert send(node, *images) == [0, 0, 0]
        exam = written(node, study_uid)
        assert exam.trigger == "stable"
        wait_for(lambda: hooks)  # the hook is called just after the exam is marked WRITTEN
        assert hooks[0]["missing_views"] == ["R-MLO"]
        sr = pydicom.dcmread(node.store.reads.get(exam.sr_job_id).path)
        groups = groups_by_breast(sr)
        missing = [e for e in evaluations(groups["Right breast"]) if e[0] == VIEW_MISSING.value]
        assert missing == [(VIEW_MISSING.value, "399368009")]  # MLO
        assert not [e for e in evaluations(groups["Left breast"]) if e[0] == VIEW_MISSING.value]
        assert_valid_dicom(node.store.reads.get(exam.sr_job_id).path)
        wait_for(lambda: exam_srs(peer))
        assert len(exam_srs(peer)) == 1
