"""Lesion measurements from a binary mask and a probability map (array code only).

A lesion is a connected component of the mask (4-connected, the same rule the
pipeline uses to drop specks) of at least ``min_pixels`` pixels.  For each,
in pixels and, given the row and column spacing, in mm:

- area: the number of pixels times the area of one pixel;
- largest diameter: the maximum Feret diameter, the longest distance between
  two points of the lesion taken as the union of its pixel squares, found on
  the convex hull of the pixel corners of each row's outermost pixels (the
  hull of a union of squares is the hull of their corners);
- bounding box: the half-open pixel box [top, bottom) x [left, right) of the
  source matrix, and its height and width;
- mean probability: the mean of the model's probability over its pixels.

Lesions are numbered 1.. from the largest area down (ties: top-most, then
left-most), so that "Mass 1" is the largest.  Nothing here knows DICOM: the
SR builder turns these numbers into TID 1500 content (PS3.16 A.35.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class BoundingBox:
    """A half-open pixel box: rows [top, bottom), columns [left, right)."""

    top: int
    left: int
    bottom: int
    right: int

    def __post_init__(self) -> None:
        if not (0 <= self.top < self.bottom and 0 <= self.left < self.right):
            raise ValueError(f"bounding box {self} is empty or negative")

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left


@dataclass(frozen=True, kw_only=True)
class Lesion:
    """One connected component of the mask and its measurements.

    ``*_mm*`` fields are None when the image states no pixel spacing; the
    pixel-unit fields are always there.
    """

    number: int
    pixel_count: int
    area_mm2: float | None
    diameter_px: float
    diameter_mm: float | None
    bbox: BoundingBox
    height_mm: float | None
    width_mm: float | None
    mean_probability: float

    def __post_init__(self) -> None:
        if self.number < 1 or self.pixel_count < 1:
            raise ValueError("a lesion has a number >= 1 and at least one pixel")
        if not 0.0 <= self.mean_probability <= 1.0:
            raise ValueError(f"mean probability {self.mean_probability} is not in [0, 1]")


def measure_lesions(
    mask: np.ndarray,
    probability: np.ndarray,
    *,
    spacing_mm: tuple[float, float] | None,
    min_pixels: int = 1,
) -> tuple[Lesion, ...]:
    """The lesions of ``mask`` (bool) with ``probability`` (float, same shape).

    ``spacing_mm`` is (row spacing, column spacing) or None for pixel units
    only; components smaller than ``min_pixels`` are not lesions.
    """
    _check(mask, probability, spacing_mm, min_pixels)
    if not mask.any():
        return ()
    labels, count = ndimage.label(mask)
    # Per-component work stays inside each component's box: cheap on full-size images.
    kept = []
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        region = labels[box] == label
        size = int(np.count_nonzero(region))
        if size >= min_pixels:
            mean = float(np.mean(probability[box][region], dtype=np.float64))
            kept.append((size, box, region, mean))
    kept.sort(key=lambda item: (-item[0], item[1][0].start, item[1][1].start))
    row_mm, column_mm = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    lesions = []
    for number, (size, (rows, columns), region, mean) in enumerate(kept, start=1):
        bbox = BoundingBox(rows.start, columns.start, rows.stop, columns.stop)
        corners = _row_extreme_corners(region)
        diameter_px = max_feret_diameter(corners, 1.0, 1.0)
        lesions.append(
            Lesion(
                number=number,
                pixel_count=size,
                area_mm2=size * row_mm * column_mm if spacing_mm else None,
                diameter_px=diameter_px,
                diameter_mm=max_feret_diameter(corners, row_mm, column_mm) if spacing_mm else None,
                bbox=bbox,
                height_mm=bbox.height * row_mm if spacing_mm else None,
                width_mm=bbox.width * column_mm if spacing_mm else None,
                mean_probability=min(1.0, max(0.0, mean)),
            )
        )
    return tuple(lesions)


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
