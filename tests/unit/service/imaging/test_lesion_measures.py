"""The lesion rule and measurements: components, area, diameter, box, centroid, probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.imaging.lesions import (
    ASSUMED_FIELD_MM,
    Lesion,
    convex_hull,
    find_lesions,
    mask_dice,
    max_feret_diameter,
    measure_lesions,
    minimum_area_px,
    threshold_mask,
)
from service.imaging.preprocess import Box
from service.testkit.synthetic import Mass, mass_mask


def probability_of(mask: np.ndarray, inside: float = 0.9, outside: float = 0.1) -> np.ndarray:
    return np.where(mask, np.float32(inside), np.float32(outside))


def test_rectangle_is_measured_exactly_with_row_and_column_spacing() -> None:
    mask = np.zeros((20, 30), bool)
    mask[4:10, 5:21] = True  # 6 rows x 16 columns
    (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=(0.5, 0.25))
    assert lesion.number == 1 and lesion.pixel_count == 96
    assert lesion.area_mm2 == pytest.approx(96 * 0.5 * 0.25)
    assert lesion.bbox == Box(top=4, left=5, bottom=10, right=21)
    assert (lesion.height_mm, lesion.width_mm) == (pytest.approx(3.0), pytest.approx(4.0))
    # The diagonal of the union of pixel squares: 6 x 0.5 mm by 16 x 0.25 mm.
    assert lesion.diameter_mm == pytest.approx(math.hypot(3.0, 4.0))
    assert lesion.diameter_px == pytest.approx(math.hypot(6, 16))
    assert lesion.mean_probability == pytest.approx(0.9)


@pytest.mark.parametrize("radius", [20, 60, 150])
def test_disc_area_and_diameter_are_within_two_percent(radius: int) -> None:
    size = 2 * radius + 20
    mask = mass_mask(size, size, [Mass(row=size // 2, col=size // 2, radius=radius)])
    (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=(0.07, 0.07))
    true_area = math.pi * (radius * 0.07) ** 2
    assert lesion.area_mm2 == pytest.approx(true_area, rel=0.02)
    # Pixel squares reach half a pixel beyond the extreme centres.
    assert lesion.diameter_mm == pytest.approx((2 * radius + 1) * 0.07, rel=0.02)


def test_lesions_are_numbered_largest_first_and_specks_dropped() -> None:
    masses = [Mass(row=20, col=20, radius=5), Mass(row=60, col=60, radius=12)]
    mask = mass_mask(100, 100, masses)
    mask[90, 5] = True  # a one-pixel speck
    lesions = measure_lesions(mask, probability_of(mask), spacing_mm=(0.1, 0.1), min_pixels=10)
    assert [lesion.number for lesion in lesions] == [1, 2]
    assert lesions[0].bbox.top == 60 - 12 and lesions[1].bbox.top == 20 - 5
    assert lesions[0].pixel_count > lesions[1].pixel_count


def test_components_are_four_connected_like_the_speck_filter() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2, 2] = mask[3, 3] = True  # touching corners only
    assert len(measure_lesions(mask, probability_of(mask), spacing_mm=None)) == 2


def test_mean_probability_is_over_the_lesion_only() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True
    probability = np.zeros((10, 10), np.float32)
    probability[2:4, 2:4] = [[0.6, 0.8], [1.0, 0.6]]
    (lesion,) = measure_lesions(mask, probability, spacing_mm=None)
    assert lesion.mean_probability == pytest.approx(0.75)


def test_without_spacing_only_pixel_values() -> None:
    mask = mass_mask(50, 50, [Mass(row=25, col=25, radius=10)])
    (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=None)
    assert (lesion.area_mm2, lesion.diameter_mm, lesion.height_mm, lesion.width_mm) == (
        None,
        None,
        None,
        None,
    )
    assert lesion.pixel_count == int(mask.sum()) and lesion.diameter_px > 20


def test_empty_mask_has_no_lesions() -> None:
    mask = np.zeros((8, 8), bool)
    assert measure_lesions(mask, probability_of(mask), spacing_mm=(0.1, 0.1)) == ()


def test_single_pixel_has_the_diagonal_as_diameter() -> None:
    mask = np.zeros((5, 5), bool)
    mask[2, 2] = True
    (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=(1.0, 1.0))
    assert lesion.diameter_mm == pytest.approx(math.sqrt(2))


def test_convex_hull_drops_inner_and_collinear_points() -> None:
    points = np.array([[0, 0], [0, 2], [2, 2], [2, 0], [1, 1], [0, 1]], dtype=float)
    hull = convex_hull(points)
    assert sorted(map(tuple, hull.tolist())) == [(0, 0), (0, 2), (2, 0), (2, 2)]
    assert max_feret_diameter(points, 1.0, 3.0) == pytest.approx(math.hypot(2, 6))


def test_l_shape_diameter_spans_its_far_corners() -> None:
    mask = np.zeros((12, 12), bool)
    mask[1:11, 1:3] = True
    mask[9:11, 1:11] = True
    (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=(1.0, 1.0))
    # Top-left corner of the bar (row 1, col 1) to the foot's far corner (row 11, col 11).
    assert lesion.diameter_mm == pytest.approx(math.hypot(10, 10))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"mask": np.zeros((4, 4))}, "bool"),
        ({"probability": np.zeros((4, 5), np.float32)}, "shaped like"),
        ({"probability": np.zeros((4, 4), np.uint8)}, "float"),
        ({"spacing_mm": (0.1, 0.0)}, "spacing_mm"),
        ({"min_pixels": 0}, "min_pixels"),
    ],
)
def test_bad_arguments_are_refused(kw: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {
        "mask": np.zeros((4, 4), bool),
        "probability": np.zeros((4, 4), np.float32),
        "spacing_mm": (0.1, 0.1),
        "min_pixels": 1,
    }
    arguments.update(kw)
    mask, probability = arguments.pop("mask"), arguments.pop("probability")
    with pytest.raises(ValueError, match=message):
        measure_lesions(mask, probability, **arguments)  # type: ignore[arg-type]


def _lesion(**overrides: object) -> Lesion:
    fields: dict[str, object] = {
        "number": 1,
        "pixel_count": 1,
        "area_mm2": None,
        "diameter_px": 1.0,
        "diameter_mm": None,
        "bbox": Box(0, 0, 1, 1),
        "height_mm": None,
        "width_mm": None,
        "centroid_row": 0.0,
        "centroid_col": 0.0,
        "mean_probability": 0.5,
        "max_probability": 0.5,
    }
    fields.update(overrides)
    return Lesion(**fields)  # type: ignore[arg-type]


def test_lesion_validates() -> None:
    assert _lesion().number == 1
    with pytest.raises(ValueError, match="empty"):
        _lesion(bbox=Box(top=3, left=0, bottom=3, right=1))
    with pytest.raises(ValueError, match="negative"):
        _lesion(bbox=Box(top=-1, left=0, bottom=3, right=1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _lesion(mean_probability=1.5)
    with pytest.raises(ValueError, match=r"max_probability .* \[0, 1\]"):
        _lesion(max_probability=-0.1)


@pytest.mark.slow
def test_full_size_mask_is_measured() -> None:
    # How long it takes is the benchmark's business (no test asserts a time).
    mask = mass_mask(4096, 3328, [Mass(row=2048, col=1300, radius=400)])
    (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=(0.07, 0.07))
    assert lesion.area_mm2 == pytest.approx(math.pi * 28.0**2, rel=0.01)


def test_find_lesions_labels_once_and_agrees_with_the_mask_rule() -> None:
    masses = [Mass(row=20, col=20, radius=5), Mass(row=60, col=60, radius=12)]
    probability = probability_of(mass_mask(100, 100, masses), inside=0.8, outside=0.2)
    probability[90, 5] = 0.95  # a one-pixel speck above the threshold
    mask, lesions = find_lesions(probability, 0.5, min_area_px=10, spacing_mm=(0.1, 0.1))
    assert not mask[90, 5]
    np.testing.assert_array_equal(mask, threshold_mask(probability, 0.5, min_area_px=10))
    assert lesions == measure_lesions(mask, probability, spacing_mm=(0.1, 0.1), min_pixels=10)
    assert sum(lesion.pixel_count for lesion in lesions) == int(mask.sum())
    assert [lesion.number for lesion in lesions] == [1, 2]


def test_centroid_and_maximum_probability() -> None:
    probability = np.zeros((10, 12), np.float32)
    probability[2:4, 3:9] = 0.6  # rows 2-3, columns 3-8
    probability[3, 8] = 0.9
    _, (lesion,) = find_lesions(probability, 0.5, min_area_px=1, spacing_mm=None)
    assert (lesion.centroid_row, lesion.centroid_col) == (pytest.approx(2.5), pytest.approx(5.5))
    assert lesion.max_probability == pytest.approx(0.9)
    assert lesion.mean_probability == pytest.approx((11 * 0.6 + 0.9) / 12)


def test_minimum_area_is_one_rule_with_or_without_spacing() -> None:
    assert minimum_area_px(10.0, (0.1, 0.1), (4096, 3328)) == 1000
    assert minimum_area_px(10.0, (0.07, 0.05), (10, 10)) == math.ceil(10 / 0.0035)
    # Without a spacing the longer side spans ASSUMED_FIELD_MM: a 512-px picture of a
    # whole breast drops the same share of it as a full-size mammogram would.
    side = ASSUMED_FIELD_MM / 512
    assert minimum_area_px(10.0, None, (512, 300)) == math.ceil(10 / side**2)
    assert minimum_area_px(10.0, None, (300, 512)) == minimum_area_px(10.0, None, (512, 300))
    assert minimum_area_px(0.0, None, (8, 8)) == 1


def test_mask_dice() -> None:
    a = np.zeros((4, 4), dtype=bool)
    assert mask_dice(a, a) == 1.0
    b = a.copy()
    a[0, :2] = True
    b[0, 1:3] = True
    assert mask_dice(a, b) == pytest.approx(0.5)


def test_long_axis_ends_are_the_diameter_on_pixel_edges() -> None:
    mask = np.zeros((12, 12), bool)
    mask[3:5, 2:9] = True  # rows 3-4, columns 2-8: corners (3, 2) and (5, 9)
    for spacing in ((1.0, 1.0), (0.5, 2.0), None):
        (lesion,) = measure_lesions(mask, probability_of(mask), spacing_mm=spacing)
        assert lesion.long_axis is not None
        (row_a, col_a), (row_b, col_b) = lesion.long_axis
        row_mm, col_mm = spacing or (1.0, 1.0)
        length = math.hypot((row_a - row_b) * row_mm, (col_a - col_b) * col_mm)
        assert length == pytest.approx(lesion.diameter_mm or lesion.diameter_px)
        assert {(row_a, col_a), (row_b, col_b)} in (
            {(3.0, 2.0), (5.0, 9.0)},
            {(5.0, 2.0), (3.0, 9.0)},
        )
