"""Helpers for the reliability tests: sending with outcomes, node memory, job listing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from dicom_node.scp import STORAGE_SOP_CLASSES, TRANSFER_SYNTAXES
from service.testkit.processes import process_tree
from tests.e2e.peers import NodeProcess


def rss_mb(pid: int, *, children: bool = True) -> float:
    """VmRSS of ``pid`` and (``children``) its descendants: serve and its worker processes."""
    total = None
    for each in process_tree(pid) if children else [pid]:
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            if each == pid:
                raise
            continue  # a child that exited meanwhile
        for line in lines:
            if line.startswith("VmRSS:"):
                total = (total or 0) + int(line.split()[1])
    if total is None:
        raise AssertionError(f"no VmRSS for pid {pid}")
    return total / 1024


def all_jobs(node: NodeProcess) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = node.get(f"/api/v1/jobs?limit=500&offset={offset}")["items"]
        jobs += page
        if len(page) < 500:
            return jobs
        offset += 500


def send_raw(
    port: int, paths: Iterable[Path], *, calling: str = "FUZZER", extra_syntaxes: Sequence[str] = ()
) -> list[tuple[Path, str]]:
    """Send each file's dataset bytes as they are; outcome per file.

    Outcomes: "0xNNNN" (the status), "no-context" (the node offered no
    presentation context for it), "aborted" (no answer; we re-associate).
    """
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for sop_class in STORAGE_SOP_CLASSES[:1]:
        ae.add_requested_context(sop_class, [*TRANSFER_SYNTAXES[:8], *extra_syntaxes])
    ae.add_requested_context(STORAGE_SOP_CLASSES[0], list(TRANSFER_SYNTAXES[8:]))
    outcomes: list[tuple[Path, str]] = []
    assoc = None
    try:
        for path in paths:
            if assoc is None or not assoc.is_established:
                assoc = ae.associate("127.0.0.1", port, ae_title="MAMMOSEG")
                if not assoc.is_established:
                    raise AssertionError("the node refused a fresh association")
            try:
                status = assoc.send_c_store(path)
            except ValueError as exc:
                # no presentation context, or pynetdicom refuses the request itself
                outcomes.append((path, "no-context" if "context" in str(exc) else "unsendable"))
                continue
            except TypeError:
                outcomes.append((path, "unsendable"))  # e.g. a multi-valued SOP Instance UID
                continue
            except (AttributeError, RuntimeError):
                outcomes.append((path, "aborted"))
                assoc = None
                continue
            if status and "Status" in status:
                outcomes.append((path, f"0x{int(status.Status):04X}"))
            else:
                outcomes.append((path, "aborted"))
                assoc = None
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = False
        if assoc is not None and assoc.is_established:
            assoc.release()
    return outcomes


def summary(outcomes: Iterable[tuple[Any, str]]) -> dict[str, int]:
    return dict(Counter(outcome for _, outcome in outcomes))


def received_by_source(folder: Path) -> dict[str, list[tuple[str, str]]]:
    """For every file a destination holds: source SOP UID -> [(modality, SOP UID)]."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        refs = [i.ReferencedSOPInstanceUID for i in ds.get("SourceImageSequence", [])]
        for series in ds.get("ReferencedSeriesSequence", []):
            refs += [
                i.ReferencedSOPInstanceUID for i in series.get("ReferencedInstanceSequence", [])
            ]
        for evidence in ds.get("CurrentRequestedProcedureEvidenceSequence", []):
            for series in evidence.get("ReferencedSeriesSequence", []):
                refs += [
                    i.ReferencedSOPInstanceUID for i in series.get("ReferencedSOPSequence", [])
                ]
        for ref in set(refs):
            found.setdefault(ref, []).append((str(ds.Modality), str(ds.SOPInstanceUID)))
    return found
