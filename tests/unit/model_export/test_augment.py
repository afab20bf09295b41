"""Augmentation moves image and mask together."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("albumentations")

from model_export import augment  # noqa: E402
from tests.unit.model_export.trees import disc  # noqa: E402


def test_pipeline_is_the_reference_recipe() -> None:
    pipeline = augment.build_pipeline(seed=0)
    names = [(type(t).__name__, t.p) for t in pipeline.transforms]
    assert names == [
        ("ShiftScaleRotate", 0.5),
        ("RandomBrightnessContrast", 0.3),
        ("GaussianBlur", 0.05),
        ("HorizontalFlip", 0.5),
        ("CLAHE", 0.2),
        ("RandomRotate90", 0.5),
    ]


def test_image_and_mask_stay_aligned() -> None:
    # An off-centre bright blob on a dark image: after any geometric change the mask
    # must still cover the bright pixels.
    mask = disc((64, 64), (18, 40), 9).astype(np.uint8)
    image = np.where(mask, 0.9, 0.1).astype(np.float32)
    pipeline = augment.build_pipeline(seed=123)
    moved = 0
    for _ in range(40):
        x, y = augment.augment_pair(pipeline, image, mask)
        assert x.shape == image.shape and y.shape == mask.shape
        assert set(np.unique(y)) <= {0, 1}
        if not y.any():
            continue
        moved += not np.array_equal(y, mask)
        inside, outside = x[y == 1].mean(), x[y == 0].mean()
        assert inside > outside + 0.3
        # the mask's centroid sits on the bright blob's centroid
        bright = x > (inside + outside) / 2
        cy, cx = np.argwhere(y).mean(0)
        by, bx = np.argwhere(bright).mean(0)
        assert abs(cy - by) < 2.5 and abs(cx - bx) < 2.5
    assert moved > 5


@pytest.mark.train
def test_sequence_shows_each_image_three_times() -> None:
    pytest.importorskip("tensorflow")
    images = np.random.default_rng(0).uniform(size=(5, 32, 32)).astype(np.float32)
    masks = (images > 0.5).astype(np.uint8)
    seq = augment.make_sequence(images, masks, batch_size=4, copies=3)
    assert len(seq) == 4  # ceil(15 / 4)
    x, y = seq[0]
    assert x.shape == (4, 32, 32, 3) and y.shape == (4, 32, 32, 1)
    np.testing.assert_array_equal(x[..., 0], x[..., 2])
    plain = augment.make_sequence(images, masks, batch_size=4, augment=False, shuffle=False)
    x, y = plain[0]
    np.testing.assert_array_equal(x[..., 0], images[:4])
