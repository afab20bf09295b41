"""The storage SCU: sends result files to a destination with C-STORE (PS3.4 B, PS3.7 9.1.1)."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_node.errors import DicomNodeError
from dicom_node.status import Status

log = logging.getLogger(__name__)

_DESTINATION = re.compile(r"^(?P<ae>[^@\\]{1,16})@(?P<host>[^:@]+):(?P<port>\d{1,5})$")


class SendError(DicomNodeError):
    """A destination could not be reached or refused an instance."""


@dataclass(frozen=True)
class Destination:
    """A peer that receives results: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        match = _DESTINATION.fullmatch(text.strip())
        if not match or not 0 < int(match["port"]) < 65536 or not match["ae"].strip():
            raise ValueError(f"destination {text!r} is not AET@HOST:PORT")
        return cls(ae_title=match["ae"].strip(), host=match["host"], port=int(match["port"]))

    @property
    def name(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.name


def _association(
    destination: Destination, calling_ae: str, contexts: set[tuple[str, str]], timeout_s: float
):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    uncompressed = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    # A compressed syntax gets a context of its own (an SCP picks one syntax per
    # context, and would pick the uncompressed one if offered together), plus one
    # uncompressed context per SOP class as the fallback (PS3.5 10.1).
    for sop_class, syntax in sorted(contexts):
        if syntax not in uncompressed:
            ae.add_requested_context(sop_class, [syntax])
    for sop_class in sorted({sop_class for sop_class, _ in contexts}):
        ae.add_requested_context(sop_class, uncompressed)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise SendError(
            f"association with {destination} was not established "
            f"({'rejected' if assoc.is_rejected else 'no answer'})"
        )
    return assoc


def _fit_to_context(assoc: Any, ds: Dataset) -> None:
    """Decompress ``ds`` when the peer accepted its SOP class only uncompressed."""
    syntax = ds.file_meta.TransferSyntaxUID
    accepted = {
        cx.transfer_syntax[0]
        for cx in assoc.accepted_contexts
        if cx.abstract_syntax == ds.SOPClassUID
    }
    if syntax in accepted or not syntax.is_compressed or not accepted:
        return
    try:
        # Same instance, other encoding: keep the SOP Instance UID (PS3.5 10.1).
        ds.decompress(generate_instance_uid=False)
    except Exception as exc:  # decoder errors of any kind: the send fails with the reason
        raise SendError(
            f"cannot decompress {ds.SOPInstanceUID} for a peer that accepts "
            f"only uncompressed data: {exc}"
        ) from exc


def send_files(
    destination: Destination, paths: Sequence[Path], *, calling_ae: str, timeout_s: float = 30.0
) -> None:
    """Send every file over one association; raise :class:`SendError` unless all are stored.

    A warning status counts as stored (PS3.7 C.1.2). The files are sent as
    they are when the peer accepts their transfer syntax, else decompressed
    (PS3.5 10: every SCP accepts a little endian syntax).
    """
    datasets = [dcmread(path) for path in paths]
    contexts = {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}
    assoc = _association(destination, calling_ae, contexts, timeout_s)
    try:
        for ds in datasets:
            _fit_to_context(assoc, ds)
            status = assoc.send_c_store(ds)
            code = int(getattr(status, "Status", -1)) if status else -1
            if not Status.is_acknowledged(code):
                raise SendError(
                    f"{destination} answered C-STORE of {ds.SOPInstanceUID} with "
                    f"status 0x{code:04X}"
                    if code >= 0
                    else f"{destination} gave no answer to C-STORE of {ds.SOPInstanceUID}"
                )
            log.info(
                "sent %s to %s",
                ds.SOPInstanceUID,
                destination,
                extra={"event": "result_sent", "sop_instance_uid": str(ds.SOPInstanceUID)},
            )
    finally:
        if assoc.is_established:
            assoc.release()


def echo(destination: Destination, *, calling_ae: str, timeout_s: float = 10.0) -> Status:
    """C-ECHO a destination (PS3.7 9.1.5); raises :class:`SendError` if unreachable."""
    assoc = _association(
        destination, calling_ae, {(Verification, ImplicitVRLittleEndian)}, timeout_s
    )
    try:
        status = assoc.send_c_echo()
        code = int(getattr(status, "Status", -1)) if status else -1
        if code < 0:
            raise SendError(f"{destination} gave no answer to C-ECHO")
        return Status(code) if code in Status._value2member_map_ else Status.PROCESSING_FAILURE
    finally:
        if assoc.is_established:
            assoc.release()
