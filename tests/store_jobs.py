"""Jobs put straight into a store, for the store, sender and commitment tests.

Placeholder UIDs and paths (no file or DICOM behind them) unless a test names its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.store import JobState, JobStore, NewJob


def stored_job(store: JobStore, uid: str = "1.2.3", **fields: Any) -> int:
    """A RECEIVED job for ``uid``; ``fields`` override the NewJob's placeholders."""
    values: dict[str, Any] = {
        "sop_instance_uid": uid,
        "sop_class_uid": "1",
        "study_instance_uid": "1",
        "series_instance_uid": "1",
        "transfer_syntax_uid": "1",
        "calling_ae_title": "PACS",
        "association_id": "a",
        "path": f"/spool/{uid}.dcm",
        **fields,
    }
    job_id, _ = store.queue.add(NewJob(**values))
    return job_id


def sending_job(store: JobStore, files: list[Path], uid: str = "1.2.3", **fields: Any) -> int:
    """A job claimed by worker ``w1`` and moved to SENDING with ``files`` as its results."""
    job_id = stored_job(store, uid, **fields)
    store.queue.claim([JobState.RECEIVED], JobState.PROCESSING, owner="w1")
    store.queue.update(job_id, state=JobState.SENDING, results={"files": [str(p) for p in files]})
    return job_id
