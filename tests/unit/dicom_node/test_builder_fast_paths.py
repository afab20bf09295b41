"""The builders' fast paths give what the straightforward ways give.

SR without highdicom's deep copy, the SC's blend by table, its contour by
shifts, its gray picture reduced in strips (or made beforehand), and native
pixel data viewed rather than decoded: each against the plain way.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from scipy import ndimage

from dicom_node import capture, pixels
from dicom_node.capture import build_overlay_capture, overlay_gray
from dicom_node.pixels import display_image
from dicom_node.seg import build_segmentation
from dicom_node.spacing import pixel_spacing
from dicom_node.sr import build_measurement_report
from service.imaging.lesions import measure_lesions
from service.testkit.synthetic import Mass, example_provenance, mass_mask, synthetic_mammogram

MASSES = (Mass(row=50, col=50, radius=14), Mass(row=110, col=70, radius=8))
BUILD_TIMES = {"ContributionDateTime", "InstanceCreationTime", "ContentTime"}


def _same_dataset(a: Dataset, b: Dataset, path: str = "") -> list[str]:
    """Where two datasets differ, their times of building aside."""
    differences = []
    if set(a.keys()) != set(b.keys()):
        differences.append(f"{path}: {sorted(set(a.keys()) ^ set(b.keys()))}")
    for tag in set(a.keys()) & set(b.keys()):
        left, right = a[tag], b[tag]
        if left.keyword in BUILD_TIMES:
            continue
        if left.VR == "SQ":
            if len(left.value) != len(right.value):
                differences.append(f"{path}/{left.keyword}: {len(left.value)} items")
            for i, (x, y) in enumerate(zip(left.value, right.value, strict=False)):
                differences += _same_dataset(x, y, f"{path}/{left.keyword}[{i}]")
        elif left.value != right.value:
            differences.append(f"{path}/{left.keyword}")
    return differences


def test_the_sr_is_what_plain_highdicom_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    source = synthetic_mammogram(rows=160, columns=128, masses=MASSES, seed=2)
    mask = mass_mask(160, 128, MASSES)
    provenance = example_provenance()
    seg = build_segmentation(source=source, mask=mask, provenance=provenance, series_number=901)
    spacing = pixel_spacing(source)
    assert spacing is not None
    lesions = measure_lesions(
        mask,
        np.where(mask, np.float32(0.8), np.float32(0.1)),
        spacing_mm=(spacing.row_mm, spacing.column_mm),
    )

    def build() -> Dataset:
        return build_measurement_report(
            source=source,
            lesions=lesions,
            spacing=spacing,
            segmentation=seg,
            provenance=provenance,
            series_number=903,
        )

    fast = build()

    def plain(*, content: Dataset, **rest: object) -> hd.sr.Comprehensive3DSR:
        return hd.sr.Comprehensive3DSR(content=content, **rest)  # type: ignore[arg-type]

    monkeypatch.setattr("dicom_node.sr.report_document", plain)
    slow = build()
    assert len(lesions) == 2
    assert _same_dataset(fast, slow) == []
    assert len(fast.ContentSequence) == len(slow.ContentSequence) > 0
    # Its highdicom view holds the whole tree, as highdicom's own would.
    assert isinstance(fast, hd.sr.Comprehensive3DSR) and isinstance(slow, hd.sr.Comprehensive3DSR)
    assert len(fast.content[0].ContentSequence) == len(slow.content[0].ContentSequence)


def test_contour_by_shifts_is_the_binary_erosion() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        mask = ndimage.gaussian_filter(rng.random((90, 70)), 2) > 0.5
        mask[0, :] |= rng.random(70) > 0.5  # touching the border
        for iterations in (1, 2, 3):
            np.testing.assert_array_equal(
                capture._eroded(mask, iterations),
                ndimage.binary_erosion(mask, iterations=iterations, border_value=0),
            )


def test_blend_by_table_is_the_per_pixel_blend() -> None:
    rng = np.random.default_rng(6)
    gray = rng.integers(0, 256, (120, 100), dtype=np.uint8)
    mask = ndimage.gaussian_filter(rng.random((120, 100)), 3) > 0.5
    alpha = 0.4
    want = np.repeat(gray[:, :, None], 3, axis=2)
    kept = gray[mask].astype(np.float32) * np.float32(1.0 - alpha)
    for channel, red in enumerate(capture.OVERLAY_RED):
        want[mask, channel] = np.rint(kept + np.float32(alpha * red)).astype(np.uint8)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=0)
    want[edge] = capture.OVERLAY_RED
    np.testing.assert_array_equal(capture._blend(gray, mask, alpha), want)


def test_gray_reduced_in_strips_is_pillows_whole_reduce() -> None:
    rng = np.random.default_rng(7)
    image = rng.random((1300, 1030), dtype=np.float32)  # strips of 512 and a ragged end
    whole = np.asarray(Image.fromarray(image, mode="F").reduce((2, 3)), dtype=np.float32)
    np.testing.assert_array_equal(capture._reduced(image, 3, 2), whole)


def test_a_capture_from_its_gray_picture_is_the_same_capture() -> None:
    source = synthetic_mammogram(rows=1024, columns=832, masses=MASSES, seed=4)
    image = display_image(source).pixels
    mask = mass_mask(1024, 832, [Mass(row=600, col=400, radius=100)])
    provenance = example_provenance()

    def build(picture: np.ndarray | capture.OverlayGray, max_size: int = 256) -> Dataset:
        return build_overlay_capture(
            source=source,
            image=picture,
            mask=mask,
            provenance=provenance,
            series_number=902,
            max_size=max_size,
        )

    gray = overlay_gray(image, 256)
    np.testing.assert_array_equal(build(gray).pixel_array, build(image).pixel_array)
    with pytest.raises(ValueError, match="max_size"):
        build(gray, max_size=512)


@pytest.mark.parametrize("bits_stored", [12, 16])
def test_native_pixel_data_are_viewed_not_copied(
    monkeypatch: pytest.MonkeyPatch, bits_stored: int
) -> None:
    source = synthetic_mammogram(rows=96, columns=80, bits_stored=bits_stored, seed=3)
    viewed = display_image(source)
    geometry = pixels._check_geometry(source, pixels.MAX_PIXELS)
    stored = pixels._native_view(source, geometry)
    assert stored is not None and np.shares_memory(stored, np.frombuffer(source.PixelData, "u1"))
    monkeypatch.setattr(pixels, "_native_view", lambda ds, geometry: None)
    decoded = display_image(source)  # pydicom's decoder, as before
    np.testing.assert_array_equal(viewed.pixels, decoded.pixels)
