"""Losses and metrics against hand-computed cases (numpy arrays through the Keras functions)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("tensorflow")

from model_export import losses  # noqa: E402

# 8 pixels: TP = 0.9 + 0.6 = 1.5, FP = 0.2 + 0.4 = 0.6, FN = 0.1 + 0.4 + 1.0 + 1.0 = 2.5
Y_TRUE = np.array([1, 1, 1, 0, 0, 0, 0, 1], np.float32).reshape(1, 2, 4, 1)
Y_PRED = np.array([0.9, 0.6, 0.0, 0.2, 0.4, 0.0, 0.0, 0.0], np.float32).reshape(1, 2, 4, 1)


def value(x: object) -> float:
    return float(np.asarray(x))


def test_tversky_index_weighs_fp_with_alpha_and_fn_with_beta() -> None:
    got = value(losses.tversky_index(Y_TRUE, Y_PRED, alpha=0.3, beta=0.7, smooth=0.0))
    assert got == pytest.approx(1.5 / (1.5 + 0.3 * 0.6 + 0.7 * 2.5), rel=1e-6)


def test_tversky_loss_penalises_false_negatives_more_with_beta_above_alpha() -> None:
    loss = losses.make_tversky_loss(alpha=0.3, beta=0.7, smooth=0.0)
    truth = np.array([1, 1, 0, 0], np.float32)
    missed = np.array([1, 0, 0, 0], np.float32)  # one FN
    extra = np.array([1, 1, 1, 0], np.float32)  # one FP
    assert value(loss(truth, missed)) == pytest.approx(1 - 1 / (1 + 0.7))
    assert value(loss(truth, extra)) == pytest.approx(1 - 2 / (2 + 0.3))
    assert value(loss(truth, missed)) > value(loss(truth, extra))


def test_tversky_with_half_weights_is_dice() -> None:
    tversky = value(losses.tversky_index(Y_TRUE, Y_PRED, alpha=0.5, beta=0.5, smooth=0.0))
    assert tversky == pytest.approx(value(losses.soft_dice(Y_TRUE, Y_PRED, smooth=0.0)))


def test_soft_dice_and_iou_hand_computed() -> None:
    assert value(losses.soft_dice(Y_TRUE, Y_PRED, smooth=0.0)) == pytest.approx(3.0 / 6.1)
    assert value(losses.soft_iou(Y_TRUE, Y_PRED, smooth=0.0)) == pytest.approx(1.5 / 4.6)
    assert value(losses.dice_loss(Y_TRUE, Y_TRUE)) == pytest.approx(0.0)
    assert value(losses.iou_loss(Y_TRUE, Y_TRUE)) == pytest.approx(0.0)


def test_metrics_threshold_at_half() -> None:
    # thresholded prediction: pixels 0 and 1 -> TP 2, FP 0, FN 2 (smooth 1 in the metric)
    assert value(losses.dice(Y_TRUE, Y_PRED)) == pytest.approx((4 + 1) / (4 + 0 + 2 + 1))
    assert value(losses.iou(Y_TRUE, Y_PRED)) == pytest.approx((2 + 1) / (2 + 0 + 2 + 1))


def test_empty_truth_and_empty_prediction_score_one() -> None:
    empty = np.zeros((1, 4, 4, 1), np.float32)
    assert value(losses.dice(empty, empty)) == pytest.approx(1.0)
    assert value(losses.iou(empty, empty)) == pytest.approx(1.0)


def test_tversky_refuses_zero_weights() -> None:
    with pytest.raises(ValueError, match="Tversky"):
        losses.make_tversky_loss(alpha=0.0, beta=0.0)
