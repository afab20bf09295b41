"""The dashboard finds a job's overlay by its kind, not by a file name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.api.images import overlay_path
from service.store import Job, JobState


def job_with(results: dict[str, Any]) -> Job:
    return Job(
        id=1,
        sop_instance_uid="1.2.3",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.2",
        study_instance_uid="1.2",
        series_instance_uid="1.2.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        calling_ae_title="PACS",
        association_id="a",
        path="/spool/1.2.3.dcm",
        state=JobState.DONE,
        reason="",
        attempts=1,
        next_attempt_at=None,
        first_send_failure_at=None,
        created_at=0.0,
        updated_at=0.0,
        results=results,
    )


def test_the_overlay_recorded_by_kind_is_used_whatever_its_name() -> None:
    job = job_with({"files": ["/o/1/scan.dcm", "/o/1/x.dcm"], "overlay": "/o/1/x.dcm"})
    assert overlay_path(job) == Path("/o/1/x.dcm")
    assert overlay_path(job_with({"files": ["/o/1/sc.dcm"], "overlay": None})) is None


def test_a_job_from_an_earlier_version_pairs_uids_and_files() -> None:
    legacy = {
        "uids": {"seg": "1.1", "sr": "1.2", "sc": "1.3"},
        "files": ["/o/1/seg.dcm", "/o/1/sr.dcm", "/o/1/sc.dcm"],
    }
    assert overlay_path(job_with(legacy)) == Path("/o/1/sc.dcm")
    no_overlay = {"uids": {"seg": "1.1", "sr": "1.2"}, "files": ["/o/1/seg.dcm", "/o/1/scx.dcm"]}
    assert overlay_path(job_with(no_overlay)) is None
    assert overlay_path(job_with({})) is None
