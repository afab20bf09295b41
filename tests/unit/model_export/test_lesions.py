"""Lesion insertion: exact masks, only inside tissue, sizes in millimetres."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from model_export import lesions
from tests.unit.model_export.trees import disc


def flat_background(mm_per_px: float = 0.25) -> lesions.Background:
    image = np.full((400, 300), 0.3, np.float32)
    tissue = disc(image.shape, (200, 0), 280)
    image[~tissue] = 0.02
    return lesions.Background("flat", image, tissue, mm_per_px)


def max_extent_px(mask: np.ndarray) -> float:
    points = np.argwhere(mask)
    if len(points) > 400:
        points = points[np.random.default_rng(0).choice(len(points), 400, replace=False)]
    diffs = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((diffs**2).sum(-1)).max()) + 1.0


@pytest.mark.parametrize("margin", lesions.MARGINS)
def test_mask_is_exactly_where_the_mass_is(margin: str) -> None:
    background = flat_background()
    config = lesions.InsertionConfig(margins=(margin,), min_diameter_mm=10, max_diameter_mm=20)
    image, mask, specs = lesions.insert_lesions(
        background, np.random.default_rng(1), config, count=1
    )
    assert len(specs) == 1 and specs[0].margin == margin
    added = image - background.image
    assert mask.any()
    assert (added[mask] > 0.02).all()  # every mask pixel is brightened
    # beyond the blurred margin (4 sigma) nothing visible changed
    blur_px = specs[0].blur_mm / background.mm_per_px
    near = ndimage.binary_dilation(mask, iterations=int(4 * blur_px) + 4)
    assert np.abs(added[~near]).max() < 1e-3
    # the mask holds the strong part: mean brightening inside beats the ring around it
    ring = ndimage.binary_dilation(mask, iterations=3) & ~mask
    assert added[mask].mean() > added[ring].mean()


def test_masses_never_leave_the_tissue(ddsm66_tree: Path) -> None:
    backgrounds = lesions.load_ddsm66_backgrounds(ddsm66_tree)
    rng = np.random.default_rng(2)
    drawn = 0
    for i in range(30):
        background = backgrounds[i % 2]
        _, mask, specs = lesions.insert_lesions(background, rng, count=3)
        drawn += len(specs)
        assert not (mask & ~background.tissue).any()
    assert drawn > 30


def test_tissue_map_excludes_pectoral_muscle_and_background(ddsm66_tree: Path) -> None:
    background = lesions.load_ddsm66_backgrounds(ddsm66_tree)[0]
    assert not background.tissue[:40, :30].any()  # pectoral (255)
    assert not background.tissue[0, -1]  # background (64)
    assert background.mm_per_px == lesions.DDSM66_MM_PER_PX


def test_sizes_stay_within_the_millimetre_range() -> None:
    background = flat_background(mm_per_px=0.2)
    rng = np.random.default_rng(3)
    config = lesions.InsertionConfig(min_diameter_mm=3, max_diameter_mm=40)
    for _ in range(25):
        _, mask, specs = lesions.insert_lesions(background, rng, config, count=1)
        for spec in specs:
            assert 3.0 <= spec.diameter_mm <= 40.0
        if specs:
            extent_mm = max_extent_px(mask) * background.mm_per_px
            assert extent_mm <= specs[0].diameter_mm + 2 * background.mm_per_px
            assert extent_mm >= 0.3 * specs[0].diameter_mm


def test_diameter_scales_with_pixel_spacing() -> None:
    rng = np.random.default_rng(4)
    fine = lesions.draw_mass("round", 20 / 0.1, 0.0, rng)[1].sum()
    coarse = lesions.draw_mass("round", 20 / 0.2, 0.0, rng)[1].sum()
    assert fine / coarse == pytest.approx(4.0, rel=0.05)


def test_zero_masses_leave_the_image_alone() -> None:
    background = flat_background()
    image, mask, specs = lesions.insert_lesions(background, np.random.default_rng(5), count=0)
    np.testing.assert_array_equal(image, background.image)
    assert not mask.any() and specs == []


def test_count_distribution_includes_none_and_several() -> None:
    background = flat_background()
    rng = np.random.default_rng(6)
    counts = [len(lesions.insert_lesions(background, rng)[2]) for _ in range(60)]
    assert 0 in counts and max(counts) >= 2


def test_breast_mask_by_threshold_finds_the_bright_region() -> None:
    image = np.zeros((200, 160), np.float32)
    breast = disc(image.shape, (100, 0), 90)
    image[breast] = 0.6
    image[5:15, 140:155] = 1.0  # a film label, small
    found = lesions.breast_mask_by_threshold(image, erode_px=2)
    assert found.sum() > 0.8 * breast.sum()
    assert not (found & ~breast).any()


def test_bad_config_is_refused() -> None:
    with pytest.raises(lesions.LesionError, match="margins"):
        lesions.InsertionConfig(margins=("square",))
