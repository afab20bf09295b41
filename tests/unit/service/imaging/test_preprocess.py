import numpy as np
import pytest

from service.contract import ModelContract
from service.imaging.lesions import threshold_mask
from service.imaging.preprocess import (
    Box,
    breast_box,
    output_to_probability,
    to_model_input,
    to_source_probability,
)

CONTRACT = ModelContract(
    model_name="m",
    model_version="1",
    input_name="image",
    input_height=32,
    input_width=32,
    output_name="mask",
)


def test_model_input_is_nhwc_unit_range_replicated() -> None:
    image = np.linspace(0, 1, 100 * 80, dtype=np.float32).reshape(100, 80)
    tensor, box = to_model_input(image, CONTRACT)
    assert tensor.shape == (1, 32, 32, 3) and tensor.dtype == np.float32
    assert box == Box(0, 0, 100, 80)
    assert np.array_equal(tensor[..., 0], tensor[..., 2])
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0
    assert tensor[0, 0, 0, 0] < tensor[0, -1, -1, 0]


def test_crop_to_breast_uses_the_bright_region() -> None:
    image = np.zeros((400, 300), dtype=np.float32)
    image[100:300, 0:150] = 0.6
    box = breast_box(image, margin=0)
    assert abs(box.top - 100) <= 2 and abs(box.bottom - 300) <= 2
    assert box.left == 0 and abs(box.right - 150) <= 2
    cropped = CONTRACT.model_copy(update={"crop_to_breast": True})
    _, model_box_ = to_model_input(image, cropped)
    assert model_box_.height < 400


def test_probability_goes_back_to_the_source_matrix() -> None:
    prob = np.zeros((32, 32), dtype=np.float32)
    prob[8:16, 8:16] = 1.0
    full = to_source_probability(prob, Box(0, 0, 128, 64), (128, 64))
    assert full.shape == (128, 64)
    assert full[48, 24] == pytest.approx(1.0) and full[100, 60] == 0.0


def test_output_shape_mismatch_is_refused() -> None:
    with pytest.raises(ValueError, match="contract"):
        output_to_probability(np.zeros((1, 16, 16, 1)), CONTRACT)


def test_threshold_drops_specks_below_min_area() -> None:
    prob = np.zeros((50, 50), dtype=np.float32)
    prob[5:15, 5:15] = 0.9  # 100 px
    prob[30:32, 30:32] = 0.9  # 4 px
    mask = threshold_mask(prob, 0.5, min_area_px=10)
    assert mask.sum() == 100 and not mask[31, 31]
    assert threshold_mask(prob, 0.5).sum() == 104


PADDED = CONTRACT.model_copy(update={"pad_to_square": True})


def test_pad_to_square_pads_a_centred_square_with_black() -> None:
    image = np.ones((100, 60), dtype=np.float32)
    tensor, box = to_model_input(image, PADDED)
    assert box == Box(0, -20, 100, 80)
    row = tensor[0, 16, :, 0]
    # 20 of 100 columns of black on each side: about 6 of 32 model columns.
    assert row[:5].max() == 0.0 and row[-5:].max() == 0.0
    assert row[8:24].min() == pytest.approx(1.0)


def test_pad_to_square_is_a_no_op_on_a_square_image() -> None:
    image = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    padded, box = to_model_input(image, PADDED)
    plain, _ = to_model_input(image, CONTRACT)
    assert box == Box(0, 0, 64, 64)
    np.testing.assert_array_equal(padded, plain)


def test_padded_probability_goes_back_inside_the_source_only() -> None:
    image = np.zeros((100, 60), dtype=np.float32)
    _, box = to_model_input(image, PADDED)
    prob = np.zeros((32, 32), dtype=np.float32)
    prob[:, 16:] = 1.0  # the right half of the square: the right 30 source columns + padding
    full = to_source_probability(prob, box, image.shape)
    assert full.shape == (100, 60)
    assert full[50, 40:].min() == pytest.approx(1.0) and full[50, :25].max() == 0.0
