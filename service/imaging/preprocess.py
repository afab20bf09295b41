"""Numpy-only pre- and post-processing shared by serving and training.

``model_export`` imports this module so that the model sees exactly the same
input at training time as in the node. Nothing here imports the app.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from service.contract import ModelContract

# Pixels below this fraction of the display range count as background (air).
BREAST_LEVEL = 0.05


@dataclass(frozen=True)
class Box:
    """A half-open pixel box: rows [top, bottom), columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a float image with Pillow's antialiased bilinear filter (float32 out)."""
    if image.shape == (height, width):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)


def breast_box(image: np.ndarray, *, level: float = BREAST_LEVEL, margin: int = 8) -> Box:
    """Bounding box of the largest bright region (the breast) of a [0, 1] image.

    Works on a downsampled copy so it costs a few milliseconds on a full-size
    mammogram; falls back to the whole image when nothing is found.
    """
    h, w = image.shape
    step = max(1, min(h, w) // 256)
    small = image[::step, ::step] > level
    labels, count = ndimage.label(small)
    if count == 0:
        return Box(0, 0, h, w)
    sizes = ndimage.sum_labels(small, labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    rows = np.flatnonzero(largest.any(axis=1))
    cols = np.flatnonzero(largest.any(axis=0))
    return Box(
        top=max(0, int(rows[0]) * step - margin),
        left=max(0, int(cols[0]) * step - margin),
        bottom=min(h, (int(rows[-1]) + 1) * step + margin),
        right=min(w, (int(cols[-1]) + 1) * step + margin),
    )


def square_box(box: Box) -> Box:
    """The centred square around ``box``; it reaches outside the image where the box is not square.

    This is how the real training data (CDD-CESM) was made: each mammogram
    zero-padded to a centred square, then resized.
    """
    side = max(box.height, box.width)
    top = box.top - (side - box.height) // 2
    left = box.left - (side - box.width) // 2
    return Box(top, left, top + side, left + side)


def model_box(image: np.ndarray, contract: ModelContract) -> Box:
    """The region of the image that is resized to the model input (it may reach outside it).

    Breast box first when the contract crops, then the centred square when it
    pads: the parts of the box outside the image are zero (black, like air).
    """
    box = breast_box(image) if contract.crop_to_breast else Box(0, 0, *image.shape[:2])
    return square_box(box) if contract.pad_to_square else box


def crop_padded(array: np.ndarray, box: Box, *, dtype: type | None = None) -> np.ndarray:
    """``array[box]``, with zeros where the box lies outside the array."""
    h, w = array.shape[:2]
    if box.top >= 0 and box.left >= 0 and box.bottom <= h and box.right <= w:
        region = array[box.top : box.bottom, box.left : box.right]
        return region if dtype is None else region.astype(dtype, copy=False)
    out = np.zeros((box.height, box.width), dtype=dtype or array.dtype)
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.bottom, h), min(box.right, w)
    if bottom > top and right > left:
        out[top - box.top : bottom - box.top, left - box.left : right - box.left] = array[
            top:bottom, left:right
        ]
    return out


def to_model_input(image: np.ndarray, contract: ModelContract) -> tuple[np.ndarray, Box]:
    """Turn a display-ready [0, 1] grayscale image into one model input tensor.

    Returns the tensor (batch of one, in the contract's layout) and the box of
    the source image it covers, which :func:`to_source_mask` needs.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    box = model_box(image, contract)
    region = crop_padded(image, box)
    small = np.clip(resize(region, contract.input_height, contract.input_width), 0.0, 1.0)
    channels = np.repeat(small[:, :, None], contract.input_channels, axis=2)
    tensor = channels[None]
    if contract.input_layout == "NCHW":
        tensor = tensor.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(tensor, dtype=np.float32), box


def output_to_probability(output: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Squeeze one model output to an HxW probability map at model resolution."""
    prob = np.asarray(output, dtype=np.float32)
    while prob.ndim > 2:
        if contract.input_layout == "NCHW" or prob.shape[-1] != 1:
            prob = prob[0]
        else:
            prob = prob[..., 0]
    if prob.shape != (contract.input_height, contract.input_width):
        raise ValueError(
            f"model output has shape {output.shape}, contract says "
            f"{contract.input_height}x{contract.input_width}"
        )
    return prob


def to_source_probability(prob: np.ndarray, box: Box, shape: tuple[int, int]) -> np.ndarray:
    """Place a model-resolution probability map back on the source matrix.

    Only the part of ``box`` inside the matrix is kept (a padded square box
    reaches outside it).
    """
    full = np.zeros(shape, dtype=np.float32)
    h, w = shape
    top, left = max(box.top, 0), max(box.left, 0)
    bottom, right = min(box.bottom, h), min(box.right, w)
    if bottom <= top or right <= left:
        return full
    scaled = resize(prob, box.height, box.width)
    full[top:bottom, left:right] = scaled[
        top - box.top : bottom - box.top, left - box.left : right - box.left
    ]
    return full


def threshold_mask(prob: np.ndarray, threshold: float, *, min_area_px: int = 0) -> np.ndarray:
    """Binary mask from a probability map, dropping connected specks below min_area_px."""
    mask = prob >= threshold
    if min_area_px > 0 and mask.any():
        labels, count = ndimage.label(mask)
        # bincount is ~15x faster than ndimage.sum_labels on a full-size matrix.
        sizes = np.bincount(labels.ravel(), minlength=count + 1)
        keep = sizes >= min_area_px
        keep[0] = False
        mask = keep[labels]
    return mask
