"""Lesions from a probability map: the one rule for masks, components and measurements.

A lesion is a 4-connected component of ``probability >= threshold`` with at
least ``min_area_px`` pixels (smaller components are specks and leave the
mask too). The probability map is labelled once; for each component, in
pixels and, given the row and column spacing, in mm:

- area: the number of pixels times the area of one pixel;
- largest diameter: the maximum Feret diameter, the longest distance between
  two points of the lesion taken as the union of its pixel squares, found on
  the convex hull of the pixel corners of each row's outermost pixels (the
  hull of a union of squares is the hull of their corners);
- bounding box: the half-open pixel box [top, bottom) x [left, right) of the
  matrix, and its height and width;
- centroid (row, column, pixel centres) and the mean and maximum probability.

Lesions are numbered 1.. from the largest area down (ties: top-most, then
left-most), so that "Mass 1" is the largest. :func:`minimum_area_px` is the one
rule that turns ``min_lesion_area_mm2`` into pixels, with or without a spacing.
Nothing here knows DICOM or the app: the SR builder, the upload JSON and the
CLI JSON are views of these numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

import numpy as np
from scipy import ndimage

from service.imaging.preprocess import Box

#: Without a pixel spacing the image is taken to span this many mm on its longer side
#: (a 24 x 30 cm mammography detector), so that ``min_lesion_area_mm2`` still means
#: about the same share of a breast in a picture of any size.
ASSUMED_FIELD_MM: Final = 300.0


@dataclass(frozen=True, kw_only=True)
class Lesion:
    """One connected component of the mask and its measurements.

    ``*_mm*`` fields are None when the image states no pixel spacing; the
    pixel-unit fields are always there. ``bbox`` lies inside the matrix.
    """

    number: int
    pixel_count: int
    area_mm2: float | None
    diameter_px: float
    diameter_mm: float | None
    bbox: Box
    height_mm: float | None
    width_mm: float | None
    centroid_row: float
    centroid_col: float
    mean_probability: float
    max_probability: float

    def __post_init__(self) -> None:
        if self.number < 1 or self.pixel_count < 1:
            raise ValueError("a lesion has a number >= 1 and at least one pixel")
        box = self.bbox
        if not (0 <= box.top < box.bottom and 0 <= box.left < box.right):
            raise ValueError(f"bounding box {box} is empty or negative")
        for name in ("mean_probability", "max_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} is not in [0, 1]")


def minimum_area_px(
    min_area_mm2: float, spacing_mm: tuple[float, float] | None, shape: tuple[int, int]
) -> int:
    """``min_area_mm2`` in pixels of this image (at least one pixel).

    Without a spacing, the longer side is taken to be :data:`ASSUMED_FIELD_MM`.
    """
    if spacing_mm is None:
        side_mm = ASSUMED_FIELD_MM / max(1, *shape)
        spacing_mm = (side_mm, side_mm)
    return max(1, math.ceil(min_area_mm2 / (spacing_mm[0] * spacing_mm[1])))


def find_lesions(
    probability: np.ndarray,
    threshold: float,
    *,
    min_area_px: int,
    spacing_mm: tuple[float, float] | None,
) -> tuple[np.ndarray, tuple[Lesion, ...]]:
    """The mask (bool, specks dropped) and its lesions, from one labelling of the map."""
    if not isinstance(probability, np.ndarray) or probability.ndim != 2:
        raise ValueError("probability must be a 2-D numpy array")
    mask = probability >= threshold
    _check(mask, probability, spacing_mm, min_area_px)
    if not mask.any():
        return mask, ()
    labels, count = ndimage.label(mask)
    lesions, keep = _measure(labels, count, probability, spacing_mm, min_area_px)
    return keep[labels], lesions


def measure_lesions(
    mask: np.ndarray,
    probability: np.ndarray,
    *,
    spacing_mm: tuple[float, float] | None,
    min_pixels: int = 1,
) -> tuple[Lesion, ...]:
    """The lesions of a given ``mask`` (bool) with ``probability`` (float, same shape).

    For a mask made elsewhere (tests, a reference outline); the node uses
    :func:`find_lesions`. ``spacing_mm`` is (row spacing, column spacing) or None
    for pixel units only; components smaller than ``min_pixels`` are not lesions.
    """
    _check(mask, probability, spacing_mm, min_pixels)
    if not mask.any():
        return ()
    labels, count = ndimage.label(mask)
    return _measure(labels, count, probability, spacing_mm, min_pixels)[0]


def threshold_mask(prob: np.ndarray, threshold: float, *, min_area_px: int = 0) -> np.ndarray:
    """The mask of :func:`find_lesions` without the measurements (training and evaluation)."""
    mask = prob >= threshold
    if min_area_px > 0 and mask.any():
        labels, count = ndimage.label(mask)
        mask = _kept(labels, count, min_area_px)[labels]
    return mask


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks pooled over all pixels (1.0 when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def _kept(labels: np.ndarray, count: int, min_pixels: int) -> np.ndarray:
    """Per label (0 = background): whether its component has at least ``min_pixels``."""
    # bincount is ~15x faster than ndimage.sum_labels on a full-size matrix.
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_pixels
    keep[0] = False
    return keep


def _measure(
    labels: np.ndarray,
    count: int,
    probability: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    min_pixels: int,
) -> tuple[tuple[Lesion, ...], np.ndarray]:
    keep = _kept(labels, count, min_pixels)
    # Per-component work stays inside each component's box: cheap on full-size images.
    kept = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None or not keep[label]:
            continue
        region = labels[box] == label
        values = probability[box][region]
        rows, cols = np.nonzero(region)
        kept.append(
            (
                int(values.size),
                box,
                region,
                float(np.mean(values, dtype=np.float64)),
                float(values.max()),
                (box[0].start + float(rows.mean()), box[1].start + float(cols.mean())),
            )
        )
    kept.sort(key=lambda item: (-item[0], item[1][0].start, item[1][1].start))
    row_mm, column_mm = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    lesions = []
    for number, (size, (rows, columns), region, mean, peak, centroid) in enumerate(kept, start=1):
        bbox = Box(rows.start, columns.start, rows.stop, columns.stop)
        corners = _row_extreme_corners(region)
        lesions.append(
            Lesion(
                number=number,
                pixel_count=size,
                area_mm2=size * row_mm * column_mm if spacing_mm else None,
                diameter_px=max_feret_diameter(corners, 1.0, 1.0),
                diameter_mm=max_feret_diameter(corners, row_mm, column_mm) if spacing_mm else None,
                bbox=bbox,
                height_mm=bbox.height * row_mm if spacing_mm else None,
                width_mm=bbox.width * column_mm if spacing_mm else None,
                centroid_row=centroid[0],
                centroid_col=centroid[1],
                mean_probability=min(1.0, max(0.0, mean)),
                max_probability=min(1.0, max(0.0, peak)),
            )
        )
    return tuple(lesions), keep


def _check(
    mask: np.ndarray,
    probability: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    min_pixels: int,
) -> None:
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_ or mask.ndim != 2:
        raise ValueError("mask must be a 2-D bool numpy array")
    if not isinstance(probability, np.ndarray) or probability.shape != mask.shape:
        raise ValueError("probability must be a numpy array shaped like the mask")
    if not np.issubdtype(probability.dtype, np.floating):
        raise ValueError("probability must be a float array")
    if spacing_mm is not None:
        if len(spacing_mm) != 2 or not all(0 < s < math.inf for s in spacing_mm):
            raise ValueError(f"spacing_mm must be two positive numbers, got {spacing_mm}")
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, int) or min_pixels < 1:
        raise ValueError(f"min_pixels must be an int >= 1, got {min_pixels!r}")


def _row_extreme_corners(region: np.ndarray) -> np.ndarray:
    """Corners (row, column) of the outermost pixel of each row of ``region``.

    Coordinates are pixel edges relative to the region's box: pixel (r, c)
    covers [r, r+1) x [c, c+1).  Inner pixels cannot lie on the convex hull.
    """
    occupied = region.any(axis=1)
    rows = np.flatnonzero(occupied)
    first = np.argmax(region[rows], axis=1)
    last = region.shape[1] - np.argmax(region[rows, ::-1], axis=1)
    points = np.concatenate(
        [
            np.stack([rows, first], axis=1),
            np.stack([rows + 1, first], axis=1),
            np.stack([rows, last], axis=1),
            np.stack([rows + 1, last], axis=1),
        ]
    )
    return np.unique(points, axis=0).astype(np.float64)


def convex_hull(points: np.ndarray) -> np.ndarray:
    """Vertices of the convex hull of 2-D ``points`` (Andrew's monotone chain)."""
    ordered = np.unique(np.asarray(points, dtype=np.float64), axis=0)
    if len(ordered) <= 2:
        return ordered

    def half(sequence: np.ndarray) -> list[np.ndarray]:
        chain: list[np.ndarray] = []
        for point in sequence:
            while len(chain) >= 2:
                (ax, ay), (bx, by) = chain[-2], chain[-1]
                if (bx - ax) * (point[1] - ay) - (by - ay) * (point[0] - ax) > 0:
                    break
                chain.pop()
            chain.append(point)
        return chain

    lower = half(ordered)
    upper = half(ordered[::-1])
    return np.array(lower[:-1] + upper[:-1])


def max_feret_diameter(points: np.ndarray, row_mm: float, column_mm: float) -> float:
    """Longest distance between two of ``points`` (row, column), scaled to mm.

    Scaling the axes maps the convex hull onto the hull of the scaled points,
    so the hull is found once in pixel units and measured in mm.
    """
    hull = convex_hull(points)
    if len(hull) < 2:
        return 0.0
    scaled = hull * np.array([row_mm, column_mm])
    longest = 0.0
    # Chunks keep memory flat for the (rare) hull with thousands of vertices.
    for start in range(0, len(scaled), 512):
        block = scaled[start : start + 512]
        deltas = block[:, None, :] - scaled[None, :, :]
        longest = max(longest, float(np.sqrt((deltas**2).sum(axis=2).max())))
    return longest
