"""Lesions from the model-resolution map against a straightforward full-resolution reference.

The node never makes the full-size probability map (``find_lesions_in_map``):
these tests make it (``ModelProbability.full``: Pillow's resize of the whole
map), threshold and label it whole (``find_lesions``), and require the same
mask and measurements from the box-wise path. The tolerance checks (Dice,
areas, diameters) are what the node must keep; the exact checks say that the
box-wise path is the full-resolution rule itself, not an approximation of it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from service.imaging import lesions as lesions_module
from service.imaging.lesions import (
    Lesion,
    LesionSearch,
    convex_hull,
    find_lesions,
    find_lesions_in_map,
    mask_dice,
    max_feret_diameter,
)
from service.imaging.preprocess import (
    Box,
    ModelProbability,
    crop_padded,
    resize,
    resize_box,
    upsample_window,
)

SPACING = (0.07, 0.07)


def smooth_map(rng: np.random.Generator, size: int = 64, sigma: float = 3.0) -> np.ndarray:
    """A model-like map: smooth blobs in [0, 1], most of it low."""
    field = ndimage.gaussian_filter(rng.random((size, size)), sigma)
    field = (field - field.min()) / (field.max() - field.min())
    return (field**3).astype(np.float32)


def padded_square(rows: int, columns: int) -> Box:
    """The centred square box the shipped contract (pad_to_square) uses."""
    side = max(rows, columns)
    top, left = -((side - rows) // 2), -((side - columns) // 2)
    return Box(top, left, top + side, left + side)


def reference(
    prob_map: ModelProbability,
    threshold: float,
    min_area_px: int,
    padding: np.ndarray | None = None,
) -> tuple[np.ndarray, tuple[Lesion, ...], float]:
    """The old way: the whole map upsampled, zeroed at padding, thresholded, labelled."""
    full = prob_map.full()
    if padding is not None:
        full[padding] = 0.0
    mask, found = find_lesions(full, threshold, min_area_px=min_area_px, spacing_mm=SPACING)
    return mask, found, float(full.max(initial=0.0))


def assert_agrees(got: LesionSearch, want: tuple[np.ndarray, tuple[Lesion, ...], float]) -> None:
    """Within the tolerance the node must keep: Dice >= 0.99, areas and diameters 2 %."""
    mask, found, peak = want
    assert got.mask.shape == mask.shape
    assert mask_dice(got.mask, mask) >= 0.99
    assert len(got.lesions) == len(found)
    for mine, theirs in zip(got.lesions, found, strict=True):
        assert mine.pixel_count == pytest.approx(theirs.pixel_count, rel=0.02)
        assert mine.diameter_mm == pytest.approx(theirs.diameter_mm, rel=0.02)
        assert mine.mean_probability == pytest.approx(theirs.mean_probability, abs=0.01)
    assert got.max_probability == pytest.approx(peak, abs=1e-6)


@pytest.mark.parametrize(
    ("rows", "columns", "size"),
    [(4096, 3328, 256), (3328, 4096, 256), (2294, 1914, 256), (700, 500, 64), (300, 300, 64)],
)
def test_a_window_is_the_whole_upsampling_bit_for_bit(rows: int, columns: int, size: int) -> None:
    rng = np.random.default_rng(rows)
    small = rng.random((size, size), dtype=np.float32)
    side = max(rows, columns)
    whole = resize(small, side, side)
    for _ in range(6):
        top, left = (int(v) for v in rng.integers(0, side - 64, 2))
        bottom, right = top + int(rng.integers(1, 600)), left + int(rng.integers(1, 600))
        bottom, right = min(bottom, side), min(right, side)
        window = upsample_window(small, side, side, (top, bottom), (left, right))
        np.testing.assert_array_equal(window, whole[top:bottom, left:right])


@pytest.mark.parametrize("seed", range(12))
def test_box_wise_lesions_are_the_full_resolution_ones(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, columns = (int(v) for v in rng.integers(80, 700, 2))
    kind = seed % 3
    box = (
        padded_square(rows, columns)
        if kind == 0
        else Box(0, 0, rows, columns)
        if kind == 1
        else Box(rows // 10, columns // 8, rows - rows // 10, columns)  # a breast crop
    )
    prob_map = ModelProbability(smooth_map(rng), box, (rows, columns))
    padding = None
    if seed % 4 == 0:
        padding = np.zeros((rows, columns), dtype=np.bool_)
        padding[:, : columns // 4] = True
    threshold = float(rng.uniform(0.15, 0.6))
    min_area = int(rng.integers(1, 60))
    got = find_lesions_in_map(
        prob_map, threshold, min_area_px=min_area, spacing_mm=SPACING, padding=padding
    )
    want = reference(prob_map, threshold, min_area, padding)
    assert_agrees(got, want)
    # Not an approximation: the same pixels, the same numbers, field for field.
    np.testing.assert_array_equal(got.mask, want[0])
    assert got.lesions == want[1]
    assert got.max_probability == want[2]
    for lesion in got.lesions:  # plain ints and floats, for JSON and the SR
        assert all(type(v) is int for v in (lesion.bbox.top, lesion.bbox.bottom))
        assert type(lesion.centroid_row) is float and type(lesion.area_mm2) is float


def test_a_full_size_mammogram_map_agrees() -> None:
    rng = np.random.default_rng(7)
    small = smooth_map(rng, size=256, sigma=10.0)
    rows, columns = 4096, 3328
    prob_map = ModelProbability(small, padded_square(rows, columns), (rows, columns))
    got = find_lesions_in_map(prob_map, 0.3, min_area_px=2041, spacing_mm=SPACING)
    want = reference(prob_map, 0.3, 2041)
    assert len(want[1]) >= 2  # something to compare
    assert_agrees(got, want)
    np.testing.assert_array_equal(got.mask, want[0])
    assert got.lesions == want[1]


def test_empty_and_flat_maps() -> None:
    shape = (300, 200)
    for small in (np.zeros((64, 64), np.float32), np.full((64, 64), 0.2, np.float32)):
        prob_map = ModelProbability(small, padded_square(*shape), shape)
        got = find_lesions_in_map(prob_map, 0.5, min_area_px=5, spacing_mm=None)
        assert not got.mask.any() and got.lesions == ()
        assert got.max_probability == float(prob_map.full().max())


def test_the_comparison_catches_a_window_that_is_too_small(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the one-cell growth the boxes cut lesions short: the checks above fail."""
    rng = np.random.default_rng(3)
    rows, columns = 600, 500
    prob_map = ModelProbability(smooth_map(rng), padded_square(rows, columns), (rows, columns))
    want = reference(prob_map, 0.3, 10)
    monkeypatch.setattr(
        lesions_module.ndimage, "binary_dilation", lambda seeds, structure: seeds.copy()
    )
    broken = find_lesions_in_map(prob_map, 0.3, min_area_px=10, spacing_mm=SPACING)
    with pytest.raises(AssertionError):
        np.testing.assert_array_equal(broken.mask, want[0])


@pytest.mark.parametrize(
    ("rows", "columns", "exact"),
    [
        (4096, 3328, True),
        (3328, 4096, True),
        (2294, 1914, True),
        (512, 512, True),
        (333, 91, False),
    ],
)
def test_model_input_in_strips_is_the_whole_resize(rows: int, columns: int, exact: bool) -> None:
    """Bit for bit where Pillow resizes across first, as it does for mammograms' padded squares.

    Pillow 13 goes down first for some shapes (a narrow crop here); the strips
    then differ from it in the last bit only.
    """
    rng = np.random.default_rng(columns)
    image = rng.random((rows, columns), dtype=np.float32)
    got = resize_box(image, padded_square(rows, columns), 256, 256)
    want = resize(crop_padded(image, padded_square(rows, columns)), 256, 256)
    np.testing.assert_array_equal(got, want)
    crop = Box(rows // 7, columns // 5, rows, columns - 3)
    got = resize_box(image, crop, 256, 256)
    want = resize(crop_padded(image, crop), 256, 256)
    if exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-7)


def test_hull_diameter_is_the_largest_distance_between_any_two_points() -> None:
    rng = np.random.default_rng(11)
    for _ in range(200):
        points = rng.integers(0, int(rng.integers(2, 40)), size=(int(rng.integers(1, 80)), 2))
        points = points.astype(np.float64)
        scale = (float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.05, 1.0)))
        scaled = points * np.array(scale)
        brute = float(np.sqrt(((scaled[:, None] - scaled[None]) ** 2).sum(axis=2).max()))
        assert max_feret_diameter(points, *scale) == pytest.approx(brute, rel=1e-12)
        hull = convex_hull(points)
        assert len(hull) <= len(np.unique(points, axis=0))


def test_a_long_concave_outline_needs_no_python_hull() -> None:
    """A crescent: many pruning rounds' worth of inner points; the hull stays exact."""
    angle = np.linspace(0, math.pi, 4000)
    outer = np.stack([1000 * np.cos(angle), 1000 * np.sin(angle)], axis=1)
    inner = 0.5 * outer
    points = np.rint(np.concatenate([outer, inner])).astype(np.float64)
    far = max_feret_diameter(points, 1.0, 1.0)
    assert far == pytest.approx(2000.0, abs=1.0)
