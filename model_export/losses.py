"""Losses and metrics for binary segmentation (Keras, backend-agnostic ``keras.ops``).

All functions take ``y_true`` (0/1) and ``y_pred`` (sigmoid probabilities) of
the same shape and reduce over the whole batch (every pixel of every image
counts once), as the reference work's Keras code does.

Tversky (Salehi et al. 2017)::

    TI = (TP + s) / (TP + alpha * FP + beta * FN + s)      loss = 1 - TI

``alpha`` weighs false POSITIVES and ``beta`` weighs false NEGATIVES; the
default ``beta = 0.7 > alpha = 0.3`` makes a missed mass pixel cost more than
a false alarm, which favours recall on small lesions. ``alpha = beta = 0.5``
is the Dice loss.

The metrics ``dice`` and ``iou`` threshold the prediction at 0.5 first (what
the node does), so they measure the binary mask, not the soft map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SMOOTH = 1.0
THRESHOLD = 0.5


def _counts(y_true: Any, y_pred: Any) -> tuple[Any, Any, Any]:
    from keras import ops

    y_true = ops.cast(ops.reshape(y_true, (-1,)), "float32")
    y_pred = ops.cast(ops.reshape(y_pred, (-1,)), "float32")
    tp = ops.sum(y_true * y_pred)
    fp = ops.sum((1.0 - y_true) * y_pred)
    fn = ops.sum(y_true * (1.0 - y_pred))
    return tp, fp, fn


def tversky_index(
    y_true: Any,
    y_pred: Any,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = SMOOTH,
) -> Any:
    """Soft Tversky index; ``alpha`` weighs false positives, ``beta`` false negatives."""
    tp, fp, fn = _counts(y_true, y_pred)
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def make_tversky_loss(
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = SMOOTH,
) -> Callable[[Any, Any], Any]:
    """The training loss ``1 - TI`` with the given weights (see the module docstring)."""
    if alpha < 0 or beta < 0 or alpha + beta <= 0:
        raise ValueError(f"Tversky weights must be >= 0 and not both 0, got {alpha}, {beta}")

    def tversky_loss(y_true: Any, y_pred: Any) -> Any:
        return 1.0 - tversky_index(y_true, y_pred, alpha, beta, smooth)

    return tversky_loss


def soft_dice(y_true: Any, y_pred: Any, smooth: float = SMOOTH) -> Any:
    """Soft Dice 2TP / (2TP + FP + FN) on probabilities."""
    tp, fp, fn = _counts(y_true, y_pred)
    return (2.0 * tp + smooth) / (2.0 * tp + fp + fn + smooth)


def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - soft Dice``."""
    return 1.0 - soft_dice(y_true, y_pred)


def soft_iou(y_true: Any, y_pred: Any, smooth: float = SMOOTH) -> Any:
    """Soft Jaccard index TP / (TP + FP + FN) on probabilities."""
    tp, fp, fn = _counts(y_true, y_pred)
    return (tp + smooth) / (tp + fp + fn + smooth)


def iou_loss(y_true: Any, y_pred: Any) -> Any:
    """``1 - soft IoU``."""
    return 1.0 - soft_iou(y_true, y_pred)


def _binary(y_pred: Any) -> Any:
    from keras import ops

    return ops.cast(ops.greater_equal(y_pred, THRESHOLD), "float32")


def dice(y_true: Any, y_pred: Any) -> Any:
    """Metric: Dice of the mask thresholded at 0.5 (1.0 when both are empty)."""
    return soft_dice(y_true, _binary(y_pred))


def iou(y_true: Any, y_pred: Any) -> Any:
    """Metric: IoU of the mask thresholded at 0.5 (1.0 when both are empty)."""
    return soft_iou(y_true, _binary(y_pred))


def custom_objects(alpha: float = 0.3, beta: float = 0.7) -> dict[str, Any]:
    """What ``keras.models.load_model`` needs to load a compiled model saved here."""
    return {
        "tversky_loss": make_tversky_loss(alpha, beta),
        "dice_loss": dice_loss,
        "iou_loss": iou_loss,
        "dice": dice,
        "iou": iou,
    }
