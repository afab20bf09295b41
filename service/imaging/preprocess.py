"""Numpy-only pre- and post-processing shared by serving and training.

``model_export`` imports this module so that the model sees exactly the same
input at training time as in the node. Nothing here imports the app.
"""

from __future__ import annotations

import math
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


#: Source rows resized across at a time by :func:`resize_box`.
STRIP_ROWS = 256


def resize_box(image: np.ndarray, box: Box, height: int, width: int) -> np.ndarray:
    """``resize(crop_padded(image, box), height, width)`` without making the crop.

    Pillow resizes in two passes, across each row and then down each column,
    storing float32 in between. Here the pass across runs on strips of
    :data:`STRIP_ROWS` rows of the box (zero where it lies outside the image;
    rows wholly outside resize to zero), and Pillow's pass down runs on the
    result, which is ``width`` wide: the same coefficients and sums, with no
    full-size copy (a padded square of a 3328 x 4096 mammogram is 67 MB).
    Bit for bit whenever Pillow goes across first, as it does for the padded
    squares of mammograms (tested); for some shapes (narrow crops) Pillow 13
    goes down first, and the two then differ in the last bit (6e-8) only.
    """
    if (box.height, box.width) == (height, width):
        return crop_padded(image, box, dtype=np.float32).astype(np.float32)
    across = np.zeros((box.height, width), dtype=np.float32)
    top, bottom = max(box.top, 0), min(box.bottom, image.shape[0])
    for start in range(top, bottom, STRIP_ROWS):
        stop = min(start + STRIP_ROWS, bottom)
        strip = crop_padded(image, Box(start, box.left, stop, box.right), dtype=np.float32)
        across[start - box.top : stop - box.top] = resize(strip, stop - start, width)
    return resize(across, height, width)


def to_model_input(image: np.ndarray, contract: ModelContract) -> tuple[np.ndarray, Box]:
    """Turn a display-ready [0, 1] grayscale image into one model input tensor.

    Returns the tensor (batch of one, in the contract's layout) and the box of
    the source image it covers, which :func:`to_source_mask` needs.
    """
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {image.shape}")
    box = model_box(image, contract)
    small = np.clip(resize_box(image, box, contract.input_height, contract.input_width), 0.0, 1.0)
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


def bilinear_taps(
    in_size: int, out_size: int, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's BILINEAR taps for outputs ``start..stop`` of an ``in_size -> out_size`` resize.

    Returns the input index of each tap (outputs x taps, clamped into the input)
    and its weight (float64, 0 beyond the tap count), computed as Pillow's
    ``precompute_coeffs`` (libImaging/Resample.c) computes them for a whole-image
    resize, in the same order of operations, so that :func:`upsample_window` gives
    Pillow's values bit for bit.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the bilinear (triangle) filter has support 1
    ksize = math.ceil(support) * 2 + 1
    center = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.trunc(center - support + 0.5).astype(np.intp), 0)
    count = np.minimum(np.trunc(center + support + 0.5).astype(np.intp), in_size) - first
    index = first[:, None] + np.arange(ksize)[None, :]
    weights = np.abs(((index.astype(np.float64) - center[:, None]) + 0.5) * (1.0 / filterscale))
    weights = np.where(weights < 1.0, 1.0 - weights, 0.0)
    weights[np.arange(ksize)[None, :] >= count[:, None]] = 0.0
    total = weights[:, 0].copy()
    for tap in range(1, ksize):  # in tap order, as the C loop adds them
        total += weights[:, tap]
    np.divide(weights, total[:, None], out=weights, where=total[:, None] != 0.0)
    return np.minimum(index, in_size - 1), weights


#: Output rows :func:`upsample_window` computes at a time (bounds its float64 temporaries).
WINDOW_STRIP_ROWS = 256


def upsample_window(
    prob: np.ndarray, height: int, width: int, rows: tuple[int, int], columns: tuple[int, int]
) -> np.ndarray:
    """``resize(prob, height, width)[rows[0]:rows[1], columns[0]:columns[1]]``, computing only that.

    Pillow's two passes (across, then down, each summed in float64 in tap order
    and stored as float32) in numpy, restricted to the window and done
    :data:`WINDOW_STRIP_ROWS` output rows at a time: for an upsampling the values
    are those of the whole resize, bit for bit (tested), at the cost of the
    window only.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.shape == (height, width):
        return prob[rows[0] : rows[1], columns[0] : columns[1]].copy()
    column_index, column_weights = bilinear_taps(prob.shape[1], width, *columns)
    out = np.empty((rows[1] - rows[0], columns[1] - columns[0]), dtype=np.float32)
    for start in range(rows[0], rows[1], WINDOW_STRIP_ROWS):
        stop = min(start + WINDOW_STRIP_ROWS, rows[1])
        row_index, row_weights = bilinear_taps(prob.shape[0], height, start, stop)
        low, high = int(row_index.min()), int(row_index.max()) + 1
        source = prob[low:high]
        across = np.zeros((high - low, column_index.shape[0]), dtype=np.float64)
        for tap in range(column_index.shape[1]):
            across += source[:, column_index[:, tap]] * column_weights[:, tap]
        horizontal = across.astype(np.float32)
        down = np.zeros((stop - start, column_index.shape[0]), dtype=np.float64)
        for tap in range(row_index.shape[1]):
            down += horizontal[row_index[:, tap] - low] * row_weights[:, tap, None]
        out[start - rows[0] : stop - rows[0]] = down
    return out


@dataclass(frozen=True)
class ModelProbability:
    """A model-resolution probability map and the source box it covers.

    The map on the source matrix is :func:`to_source_probability` of it;
    :meth:`window` gives any part of that without making the rest, and
    :meth:`cells` says which model pixel each source row and column falls in.
    """

    probability: np.ndarray  # float32, model rows x columns
    box: Box  # may reach outside the matrix (a padded square)
    shape: tuple[int, int]  # the source matrix (rows, columns)

    def __post_init__(self) -> None:
        # float32, as Pillow resizes it: the threshold must see the values the resize sees.
        object.__setattr__(self, "probability", np.asarray(self.probability, dtype=np.float32))
        if self.probability.ndim != 2:
            raise ValueError(f"the map must be 2-D, got shape {self.probability.shape}")

    @property
    def upsampled(self) -> bool:
        """Whether the box is at least the model's size on both axes (an upsampling)."""
        rows, columns = self.probability.shape
        return self.box.height >= rows and self.box.width >= columns

    def full(self) -> np.ndarray:
        """The probability on the whole source matrix (float32, 0 outside the box)."""
        return to_source_probability(self.probability, self.box, self.shape)

    def inside(self) -> Box:
        """The part of the source matrix the box covers (may be empty)."""
        rows, columns = self.shape
        return Box(
            max(self.box.top, 0),
            max(self.box.left, 0),
            min(self.box.bottom, rows),
            min(self.box.right, columns),
        )

    def window(self, region: Box) -> np.ndarray:
        """``self.full()[region]`` for a ``region`` inside :meth:`inside`, computed alone."""
        box = self.box
        return upsample_window(
            self.probability,
            box.height,
            box.width,
            (region.top - box.top, region.bottom - box.top),
            (region.left - box.left, region.right - box.left),
        )

    def cells(self) -> tuple[np.ndarray, np.ndarray]:
        """For each source row and column of :meth:`inside`: the model row/column of its cell.

        Source pixel (r, c) takes its value from model pixels at most one away from
        cell (rows[r - inside.top], columns[c - inside.left]) when :attr:`upsampled`
        (the centre of a source pixel maps into that cell; bilinear taps reach half
        a pixel either side of it). Both arrays are non-decreasing.
        """
        inside = self.inside()
        rows = _cell_of(
            np.arange(inside.top, inside.bottom) - self.box.top,
            self.box.height,
            self.probability.shape[0],
        )
        columns = _cell_of(
            np.arange(inside.left, inside.right) - self.box.left,
            self.box.width,
            self.probability.shape[1],
        )
        return rows, columns


def _cell_of(position: np.ndarray, out_size: int, in_size: int) -> np.ndarray:
    center = (position.astype(np.float64) + 0.5) * (in_size / out_size)
    return np.minimum(np.floor(center).astype(np.intp), in_size - 1)


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
