"""A real viewer shows the node's results: OHIF 3.13 draws our SEG and lists our SR's lengths.

Orthanc (DICOMweb plugin) receives a synthetic mammogram with a bright mass by C-STORE
and routes it to ``mammoseg serve``, which sends SEG, SC and SR back into the same study.
:func:`tests.e2e.ohif_check.check_in_ohif` then opens OHIF's viewer on that study in
headless Chromium and reads the viewer's own state: the SEG drawn as segment "Mass" in red
over the lesion, the SR hydrated into one Length per lesion of the SR's long axis, listed
in the measurement panel. The four-view exam flow (``test_exam_flow.py``) runs the same
check on one of its images.

Screenshots go to ``test-artifacts/ohif/`` (git-ignored); their path is printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest

from service.testkit.launch import start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import Mass, synthetic_mammogram, write
from tests.conftest import free_port
from tests.e2e.ohif import ROOT
from tests.e2e.ohif_check import check_in_ohif, long_axes, need_browser
from tests.e2e.peers import need_dicomweb_plugin, orthanc, storescu, wait_until
from tests.tiny_model import write_tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = ROOT / "test-artifacts" / "ohif"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"


def study_results(pacs: Any, study_uid: str, tmp: Path) -> dict[str, pydicom.Dataset]:
    """The study's SEG and SR, downloaded from Orthanc, by kind."""
    found = {}
    for item in pacs.study_instances(study_uid):
        ds = pydicom.dcmread(pacs.download(item["ID"], tmp / f"{item['ID']}.dcm"))
        kind = {SEG_CLASS: "seg", SR_CLASS: "sr"}.get(ds.SOPClassUID)
        if kind:
            found[kind] = ds
    return found


@pytest.fixture
def study_with_results(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Orthanc holding an MG and the node's SEG, SC and SR for it, in one study."""
    need_dicomweb_plugin()
    node_port = free_port()
    model = write_tiny_model(tmp_path / "tiny.onnx", level=0.6)
    source = synthetic_mammogram(
        rows=1024, columns=832, masses=[Mass(row=520, col=330, radius=90)], seed=5
    )
    path = write(source, tmp_path / "mg.dcm")
    with orthanc(
        tmp_path / "orthanc", node_aet="MAMMOSEG", node_port=node_port, dicomweb_servers={}
    ) as pacs:
        node = start_node(
            tmp_path / "node",
            dicom_port=node_port,
            args=[
                "--destination",
                f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
                "--allowed-caller",
                "ORTHANC",
                "--model-path",
                str(model),
            ],
        )
        try:
            sent = storescu(pacs.dicom_port, [path], called="ORTHANC")
            assert sent.returncode == 0, sent.stderr
            results = wait_until(
                lambda: (lambda r: r if {"seg", "sr"} <= set(r) else None)(
                    study_results(pacs, source.StudyInstanceUID, tmp_path)
                ),
                timeout_s=240,
                what="the node's SEG and SR in Orthanc's study",
                interval_s=1.0,
            )
            yield pacs, source, results
        finally:
            code = stop_process(node.proc)
            assert code == 0, node.log_text()[-3000:]


def test_ohif_draws_the_seg_and_lists_the_sr_lengths(study_with_results) -> None:  # type: ignore[no-untyped-def]
    need_browser()
    pacs, source, results = study_with_results
    assert len(long_axes(results["sr"])) == 1, "the tiny model finds the one bright mass"
    summary = check_in_ohif(
        pacs.url + "/dicom-web",
        source.StudyInstanceUID,
        source.SOPInstanceUID,
        results["seg"],
        results["sr"],
        ARTIFACTS,
    )
    # One image, its SEG and SR (and the SC): one segmentation, one Length, one panel row
    assert summary.segments == [["Mass"]]
    assert len(summary.lengths) == len(summary.panel_rows) == 1
    assert summary.display_sets["MG"] == summary.display_sets["SEG"] == 1
    assert summary.display_sets["SR"] == 1
