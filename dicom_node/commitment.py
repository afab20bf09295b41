"""Storage Commitment Push Model, SCU side (PS3.4 Annex J, SOP Class 1.2.840.10008.1.20.1).

After the results are stored, the node asks the destination to commit them:
an N-ACTION (Action Type 1, "Request Storage Commitment") carrying a
Transaction UID and the Referenced SOP Sequence of the sent instances (PS3.4
J.3.2). The destination answers later with an N-EVENT-REPORT (Event Type 1:
all committed; 2: some failed, with a Failed SOP Sequence and a Failure Reason
per instance, PS3.4 J.3.3), either on the N-ACTION's association or on a new
association that it opens to the node's SCP (dicom_node/scp.py accepts the SOP
class for that). Both paths end in :func:`read_event_report`; what a report
means for a job is the service's business.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import evt
from pynetdicom.sop_class import StorageCommitmentPushModel

from dicom_node.errors import DicomNodeError
from dicom_node.scu import Destination, SendError, association
from dicom_node.status import Status, describe
from dicom_node.uids import is_valid_uid

log = logging.getLogger(__name__)

#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.5).
COMMITMENT_INSTANCE_UID = "1.2.840.10008.1.20.1.1"
#: N-ACTION Action Type ID "Request Storage Commitment" (PS3.4 J.3.2.1).
REQUEST_COMMITMENT = 1
#: N-EVENT-REPORT Event Type IDs (PS3.4 J.3.3.1).
ALL_COMMITTED = 1
SOME_FAILED = 2
#: More referenced instances than this in one report is not a report we sent for.
MAX_REPORTED_INSTANCES = 10_000
#: Bytes a destination may send on the N-ACTION's association (its answer and a report
#: of MAX_REPORTED_INSTANCES items fit); past it the association is aborted.
MAX_REPORT_BYTES = 4 << 20
COMMITMENT_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class CommitmentError(DicomNodeError):
    """An N-EVENT-REPORT that is not a Storage Commitment result we can read."""


@dataclass(frozen=True)
class Reference:
    """One instance to commit: its SOP Class and SOP Instance UIDs."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class CommitmentReport:
    """What a destination said about one transaction (UIDs and counts only).

    ``failed``: ``(SOP Instance UID, Failure Reason)`` of each instance it did
    not commit (PS3.4 J.3.3.1.1: e.g. 0x0110 processing failure, 0x0112 no
    such object instance).
    """

    transaction_uid: str
    event_type: int
    committed: tuple[str, ...]
    failed: tuple[tuple[str, int], ...]
    calling_ae_title: str = ""

    @property
    def all_committed(self) -> bool:
        return self.event_type == ALL_COMMITTED and not self.failed

    def failure_summary(self) -> str:
        """``2 of 3 instances not committed (0x0110 processing failure)``."""
        total = len(self.failed) + len(self.committed)
        reasons = sorted({describe(code) for _, code in self.failed})
        return (
            f"{len(self.failed)} of {total} instances not committed"
            f" ({', '.join(reasons) or 'no reason given'})"
        )


def new_transaction_uid() -> str:
    """A fresh Transaction UID (PS3.4 J.3.2.1.1: unique per request)."""
    return str(generate_uid())


def action_information(transaction_uid: str, references: Sequence[Reference]) -> Dataset:
    """The N-ACTION's Action Information (PS3.4 Table J.3-1)."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    items = []
    for ref in references:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.sop_class_uid
        item.ReferencedSOPInstanceUID = ref.sop_instance_uid
        items.append(item)
    ds.ReferencedSOPSequence = DicomSequence(items)
    return ds


def _instances(ds: Dataset, keyword: str) -> list[Dataset]:
    items = ds.get(keyword) or []
    if len(items) > MAX_REPORTED_INSTANCES:
        raise CommitmentError(
            f"{keyword} has {len(items)} items (at most {MAX_REPORTED_INSTANCES})"
        )
    return list(items)


def read_event_report(
    event_type: int | None, info: Dataset | None, *, calling_ae_title: str = ""
) -> CommitmentReport:
    """The report in an N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2).

    Raises :class:`CommitmentError` when it is not one: an unknown event type,
    no valid Transaction UID, too many items, or elements that do not decode.
    """
    if event_type not in (ALL_COMMITTED, SOME_FAILED):
        raise CommitmentError(f"event type {event_type} is not a storage commitment result")
    if info is None:
        raise CommitmentError("the event report has no event information")
    try:
        transaction_uid = str(info.get("TransactionUID", ""))
        committed = [
            str(item.get("ReferencedSOPInstanceUID", ""))
            for item in _instances(info, "ReferencedSOPSequence")
        ]
        failed = [
            (str(item.get("ReferencedSOPInstanceUID", "")), int(item.get("FailureReason", 0)))
            for item in _instances(info, "FailedSOPSequence")
        ]
    except CommitmentError:
        raise
    except Exception as exc:  # pydicom decodes lazily: any bad element shows up here
        raise CommitmentError(f"event information does not decode: {type(exc).__name__}") from exc
    if not is_valid_uid(transaction_uid):
        raise CommitmentError("the event report has no valid Transaction UID")
    if event_type == SOME_FAILED and not failed:
        failed = [("", int(Status.PROCESSING_FAILURE))]
    return CommitmentReport(
        transaction_uid=transaction_uid,
        event_type=int(event_type),
        committed=tuple(committed),
        failed=tuple(failed),
        calling_ae_title=calling_ae_title,
    )


def request_commitment(
    destination: Destination,
    references: Sequence[Reference],
    transaction_uid: str,
    *,
    calling_ae: str,
    timeout_s: float = 30.0,
    wait_s: float = 0.0,
    answered: Callable[[], bool] | None = None,
) -> CommitmentReport | None:
    """Send the N-ACTION; return the report if it came on this association within ``wait_s``.

    None: the destination accepted the request and will report later, most
    likely on a new association to the node's SCP (Orthanc does). ``answered``,
    asked every 0.1 s while waiting, ends the wait early: the report came the
    other way. Raises :class:`~dicom_node.scu.SendError` when the request is
    not accepted.
    """
    if destination.web is not None:
        raise SendError(f"{destination} is a DICOMweb destination: storage commitment is DIMSE")
    arrived = threading.Event()
    reports: list[CommitmentReport] = []

    def on_report(event: evt.Event) -> tuple[int, None]:
        try:
            report = read_event_report(
                event.event_type, event.event_information, calling_ae_title=destination.ae_title
            )
        except (CommitmentError, AttributeError) as exc:
            log.warning("unreadable commitment report from %s: %s", destination, exc)
            return int(Status.PROCESSING_FAILURE), None
        if report.transaction_uid == transaction_uid:
            reports.append(report)
            arrived.set()
        return int(Status.SUCCESS), None

    received = [0]

    def count_bytes(event: evt.Event) -> None:
        received[0] += len(event.data)
        if received[0] > MAX_REPORT_BYTES:
            log.warning("%s sent more than %d bytes: aborted", destination, MAX_REPORT_BYTES)
            event.assoc.abort()

    assoc: Any = association(
        destination,
        calling_ae,
        {(StorageCommitmentPushModel, syntax) for syntax in COMMITMENT_SYNTAXES},
        timeout_s,
        handlers=[(evt.EVT_N_EVENT_REPORT, on_report), (evt.EVT_DATA_RECV, count_bytes)],
    )
    try:
        status, _ = assoc.send_n_action(
            action_information(transaction_uid, references),
            REQUEST_COMMITMENT,
            StorageCommitmentPushModel,
            COMMITMENT_INSTANCE_UID,
        )
        code = int(getattr(status, "Status", -1)) if status else -1
        if code != Status.SUCCESS:
            raise SendError(
                f"storage commitment request refused: {describe(code)}"
                if code >= 0
                else "no answer to the storage commitment request (N-ACTION)"
            )
        log.info(
            "storage commitment of %d instances requested from %s (transaction %s)",
            len(references),
            destination,
            transaction_uid,
            extra={"event": "commitment_requested", "transaction_uid": transaction_uid},
        )
        deadline = time.monotonic() + wait_s
        while not arrived.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline or not assoc.is_established:
                break
            if answered is not None and answered():
                break
    finally:
        if assoc.is_established:
            assoc.release()
    return reports[0] if reports else None
